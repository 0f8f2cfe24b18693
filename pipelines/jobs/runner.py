"""Starting stateful queries, waiting on streaming queries with progress, stopping them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.streaming import StreamingQuery
from rich.console import Console

from pipelines.config import Settings
from pipelines.io.kafka import caught_up
from pipelines.spark import scheduler_pool


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


def new_progress(query: StreamingQuery, poll_s: float, *,
                 stop_when: Callable[[], bool] | None = None) -> Iterator[Any]:
    """Each progress entry of `query` once, oldest first, while it is active.

    Polls with `awaitTermination(poll_s)` and skips batch ids already yielded. After every poll
    (new entries or not), `stop_when()` being true stops the query, which ends the iteration.
    A KeyboardInterrupt while polling reaches the caller (see `stop_on_interrupt`).
    """
    seen = -1
    while query.isActive:
        query.awaitTermination(poll_s)
        for progress in query.recentProgress:
            if progress["batchId"] <= seen:
                continue
            seen = progress["batchId"]
            yield progress
        if stop_when is not None and stop_when() and query.isActive:
            query.stop()


@dataclass
class InputCount:
    """Micro-batches that read input, and the input rows they read."""

    batches: int = 0
    rows: int = 0

    def add(self, progress: Any) -> int:
        """Count one progress entry; returns its input rows."""
        n = int(progress.get("numInputRows") or 0)
        if n:
            self.batches += 1
            self.rows += n
        return n


@contextmanager
def stop_on_interrupt(query: StreamingQuery) -> Iterator[None]:
    """Ctrl-C inside the block stops the query instead of propagating."""
    try:
        yield
    except KeyboardInterrupt:
        query.stop()


def raise_if_failed(query: StreamingQuery) -> None:
    """Raise the exception the query failed with, if any."""
    exc = query.exception()
    if exc is not None:
        raise exc


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
    count = InputCount()
    last_batch = -1
    caught_up_at: tuple[int, float] | None = None  # (batch id, when) once targets are reached

    def settled() -> bool:
        # A stateful query emits what the last watermark finalised in the no-data batch that
        # follows the last data batch: stop after it.
        return caught_up_at is not None and (
            last_batch > caught_up_at[0] or time.monotonic() - caught_up_at[1] > settle_s)

    with stop_on_interrupt(query):
        for progress in new_progress(query, poll_s, stop_when=settled):
            batch_id = last_batch = progress["batchId"]
            n = count.add(progress)
            if n and console is not None:
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
    raise_if_failed(query)
    return count.batches, count.rows


@contextmanager
def query_conf(spark: SparkSession, conf: dict[str, str]) -> Iterator[None]:
    """Set session conf while a query starts (it clones the session), then restore it."""
    old = {key: spark.conf.get(key, None) for key in conf}
    for key, value in conf.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


# RocksDB changelog checkpointing: a commit appends the batch's changes instead of uploading a
# snapshot of the whole store every micro-batch.
CHANGELOG_CHECKPOINTING = {
    "spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled": "true"}


def start_stateful_query(stream: DataFrame, settings: Settings, *, name: str, checkpoint: str,
                         sink: Callable[[DataFrame, int], None], trigger_s: float,
                         state_partitions: int) -> StreamingQuery:
    """Start a stateful foreachBatch query (help, resolver) in its FAIR pool.

    Few state partitions: each costs a Python worker per micro-batch and the state is small.
    RocksDB changelog checkpointing: a commit appends a changelog instead of snapshotting the
    store. Both are fixed by the checkpoint once the query ran.
    """
    spark = stream.sparkSession
    conf = {"spark.sql.shuffle.partitions": str(state_partitions), **CHANGELOG_CHECKPOINTING}
    writer = (stream.writeStream.queryName(name)
              .option("checkpointLocation", checkpoint)
              .foreachBatch(sink)
              .trigger(processingTime=f"{int(trigger_s * 1000)} milliseconds"))
    with query_conf(spark, conf), scheduler_pool(spark, settings, name):
        return writer.start()

