"""`lakehouse run bronze`: every Kafka record into bronze.events, exactly once."""

from __future__ import annotations

from pyspark.sql import SparkSession
from rich.console import Console

from pipelines.config import KafkaSourceKind, Settings
from pipelines.io.delta import start_delta_stream
from pipelines.io.kafka import kafka_end_offsets, read_kafka_stream
from pipelines.jobs.runner import JobResult, RunningJob, run_streaming_job
from pipelines.transforms.bronze import BRONZE_PARTITION_COLUMNS, kafka_to_bronze

BRONZE_TABLE = "bronze.events"


def start_bronze(spark: SparkSession, settings: Settings, *, once: bool) -> RunningJob:
    """Start the bronze query on an existing session (used by the CLI, demo and tests)."""
    checkpoint = settings.checkpoint_path("bronze")
    topics = [settings.kafka_topic(t) for t in settings.streaming.bronze_topics]
    source = read_kafka_stream(spark, settings, topics, checkpoint=checkpoint)
    # The Python source has no admission control in Spark 4.1, so availableNow would read the
    # whole backlog in one batch; instead run capped batches until the start's end offsets.
    python_once = once and settings.kafka.source is KafkaSourceKind.PYTHON
    target = kafka_end_offsets(settings, topics) if python_once else None
    query = start_delta_stream(source.transform(kafka_to_bronze), settings, BRONZE_TABLE,
                               checkpoint=checkpoint, partition_by=BRONZE_PARTITION_COLUMNS,
                               once=once and not python_once, query_name="bronze",
                               stamp_column="ingested_at")
    return RunningJob(query, target)


def run_bronze_job(settings: Settings, *, once: bool, console: Console | None = None) -> JobResult:
    return run_streaming_job(settings, "bronze",
                             lambda spark, cfg: start_bronze(spark, cfg, once=once),
                             console=console)
