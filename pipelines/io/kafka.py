"""Kafka streaming reads: the one switch between the Python source and Spark's JVM source.

Both give Spark's Kafka schema, so nothing downstream knows which one ran.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from pipelines.config import KafkaSourceKind, Settings
from pipelines.io.kafka_source import FORMAT_NAME


def read_kafka_stream(spark: SparkSession, settings: Settings, topics: list[str], *,
                      checkpoint: str) -> DataFrame:
    """A streaming DataFrame over `topics` with Spark's Kafka source schema."""
    kafka = settings.kafka
    options = {f"kafka.{k}": v for k, v in kafka.client_options().items()}
    options.update({
        "subscribe": ",".join(topics),
        "startingOffsets": kafka.starting_offsets,
        "maxOffsetsPerTrigger": str(kafka.max_records_per_trigger),
        "failOnDataLoss": "true",
    })
    if kafka.source is KafkaSourceKind.PYTHON:
        fmt = FORMAT_NAME
        options["readTimeoutSeconds"] = str(kafka.read_timeout_seconds)
        # Lets the reader recover its rate-limit position after a restart (see kafka_source).
        options["checkpointLocation"] = checkpoint
        options["readerTasks"] = str(spark.sparkContext.defaultParallelism)
    else:
        fmt = "kafka"
    return spark.readStream.format(fmt).options(**options).load()


def kafka_end_offsets(settings: Settings, topics: list[str]) -> dict[str, dict[str, int]]:
    """Each partition's high watermark now, in the source's offset format."""
    from pipelines.io.kafka_source import KafkaStreamReader

    options = {f"kafka.{k}": v for k, v in settings.kafka.client_options().items()}
    options.update(subscribe=",".join(topics),
                   readTimeoutSeconds=str(settings.kafka.read_timeout_seconds))
    return KafkaStreamReader(options).high_watermarks()


def caught_up(progress_end: object, target: Mapping[str, object]) -> bool:
    """Whether a query progress's source endOffset has reached `target` at every leaf.

    Offsets are nested maps of numbers: {topic: {partition: offset}} for Kafka, {"version": v}
    for a Delta table.
    """
    import ast

    # Python sources report offsets as the repr of their dict, the JVM source as JSON.
    end = ast.literal_eval(progress_end) if isinstance(progress_end, str) else progress_end
    if not isinstance(end, Mapping):
        return False
    for key, want in target.items():
        have = end.get(key, end.get(str(key)))
        if isinstance(want, Mapping):
            if not caught_up(have, want):
                return False
        elif isinstance(want, int):
            if have is None or int(have) < want:
                return False
        elif have != want:
            return False
    return True


def produce_and_flush(producer: Any, messages: Iterable[tuple[str, bytes | None, bytes]], *,
                      timeout_s: float, what: str) -> None:
    """Produce every (topic, key, value) with a confluent-kafka producer and wait until all are
    delivered; raise naming `what` when any is unsent or failed (sinks publish before their
    Delta commit, so a failure must stop the batch, not pass silently)."""
    failures: list[str] = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            failures.append(str(err))

    for topic, key, value in messages:
        producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
    remaining = producer.flush(timeout_s)
    if remaining or failures:
        raise RuntimeError(f"{what}: {remaining} messages unsent, {len(failures)} failed "
                           f"({failures[:1]})")
