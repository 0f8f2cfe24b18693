"""`lakehouse run gold`: silver streams -> gold.classroom_health_1m (windowed, watermarked)."""

from __future__ import annotations

from functools import reduce

from pyspark.sql import DataFrame, SparkSession
from rich.console import Console

from pipelines.config import Settings
from pipelines.io.delta import delta_writer, read_delta_stream, start_delta_stream
from pipelines.jobs.runner import JobResult, RunningJob, run_streaming_job
from pipelines.transforms.gold import (
    av_health,
    classroom_health_1m,
    enter_health,
    signal_health,
    whiteboard_health,
)

HEALTH_TABLE = "gold.classroom_health_1m"
HEALTH_SOURCES = {
    "silver.av_quality": av_health,
    "silver.signal": signal_health,
    "silver.whiteboard": whiteboard_health,
    "silver.enter_flow": enter_health,
}


def start_gold(spark: SparkSession, settings: Settings, *, once: bool,
               console: Console | None = None) -> RunningJob:
    """Union the silver streams that exist, aggregate per minute, append finished windows."""
    checkpoint = settings.checkpoint_path("gold_health")
    writer = delta_writer(settings)
    streams: list[DataFrame] = []
    targets = []
    for table, shape in HEALTH_SOURCES.items():
        path = settings.table_path(table)
        if not writer.exists(path):
            if console is not None:
                console.print(f"[yellow]{table} does not exist yet; gold starts without it[/]")
            continue
        schema = writer.read(spark, path).schema
        stream = read_delta_stream(spark, settings, table, schema, checkpoint=checkpoint,
                                   max_versions_per_trigger=settings.silver.max_versions_per_trigger)
        streams.append(stream.transform(shape))
        if once:
            from deltalake import DeltaTable

            targets.append({"table": path, "version": DeltaTable(path).version()})
    if not streams:
        raise FileNotFoundError("no silver tables yet: run `lakehouse run silver` first")
    events = reduce(DataFrame.unionByName, streams)
    health = events.transform(classroom_health_1m(f"{int(settings.gold.watermark_s)} seconds"))
    query = start_delta_stream(health, settings, HEALTH_TABLE, checkpoint=checkpoint,
                               partition_by=["minute_date"], once=False, query_name="gold_health")
    return RunningJob(query, targets or None)


def run_gold_job(settings: Settings, *, once: bool, console: Console | None = None) -> JobResult:
    return run_streaming_job(settings, "gold",
                             lambda spark, cfg: start_gold(spark, cfg, once=once,
                                                           console=console),
                             console=console)
