"""Waiting on streaming queries with progress, and stopping them cleanly."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pyspark.sql import SparkSession
from pyspark.sql.streaming import StreamingQuery
from rich.console import Console

from pipelines.config import Settings
from pipelines.io.kafka import caught_up


@dataclass
class RunningJob:
    query: StreamingQuery
    # Stop once the sources reach these offsets (`--once`); None: run until stopped.
    until_offsets: Mapping[str, object] | list[Mapping[str, object]] | None


@dataclass
class JobResult:
    job: str
    batches: int
    rows: int

    def __str__(self) -> str:
        return f"{self.job}: {self.batches} micro-batches, {self.rows} input rows"


StartJob = Callable[[SparkSession, Settings], RunningJob]


def run_streaming_job(settings: Settings, name: str, start: StartJob, *,
                      console: Console | None = None, record_progress: bool = False
                      ) -> JobResult:
    """Own a Spark session for one job: start it, wait (see `await_query`), stop the session."""
    from pipelines.spark import build_spark

    spark = build_spark(settings, app_name=f"lakehouse-{name}")
    try:
        if record_progress:
            from pipelines.jobs.progress import ProgressRecorder

            spark.streams.addListener(ProgressRecorder(spark, settings))
        job = start(spark, settings)
        batches, rows = await_query(job.query, console=console, until_offsets=job.until_offsets)
        return JobResult(name, batches, rows)
    finally:
        spark.stop()


def await_query(query: StreamingQuery, *, console: Console | None = None,
                until_offsets: Mapping[str, object] | list[Mapping[str, object]] | None = None,
                poll_s: float = 1.0, settle_s: float = 15.0) -> tuple[int, int]:
    """Block until the query ends, or has consumed `until_offsets`, or Ctrl-C.

    `until_offsets` gives `--once` its meaning for a rate-limited source: process what was
    available at the start, in as many capped micro-batches as it takes, then stop between
    batches. Several targets (one per source of a union) must all be reached. Prints one line
    per batch. Returns (micro-batches, input rows); a failed query
    raises its exception.
    """
    targets = [until_offsets] if isinstance(until_offsets, Mapping) else until_offsets
    seen_batch = -1
    batches = rows = 0
    caught_up_at: tuple[int, float] | None = None  # (batch id, when) once targets are reached
    try:
        while query.isActive:
            query.awaitTermination(poll_s)
            for progress in query.recentProgress:
                batch_id = progress["batchId"]
                if batch_id <= seen_batch:
                    continue
                seen_batch = batch_id
                n = int(progress.get("numInputRows", 0))
                if n:
                    batches += 1
                    rows += n
                    if console is not None:
                        rate = progress.get("processedRowsPerSecond") or 0
                        console.print(f"[dim]{query.name} batch {batch_id}: {n:,} rows, "
                                      f"{rate:,.0f} rows/s[/dim]")
                ends = [source.get("endOffset") for source in progress["sources"]]
                if caught_up_at is None and targets is not None and all(
                        any(caught_up(end, target) for end in ends) for target in targets):
                    caught_up_at = (batch_id, time.monotonic())
                    stateless = not progress.get("stateOperators")
                    if stateless:
                        query.stop()
                        break
            if caught_up_at is not None and query.isActive and (
                    seen_batch > caught_up_at[0] or time.monotonic() - caught_up_at[1] > settle_s):
                # A stateful query emits what the last watermark finalised in the no-data
                # batch that follows the last data batch: stop after it.
                query.stop()
    except KeyboardInterrupt:
        query.stop()
    exc = query.exception()
    if exc is not None:
        raise exc
    return batches, rows
