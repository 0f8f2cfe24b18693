"""Where a bronze micro-batch spends its time: read, transfer to the driver, Delta write.

The bronze job's `addBatch` is one opaque number. This runs the same source and transform with a
foreachBatch that times the pieces separately:

- `count`: `batch.count()`, i.e. the Python source's `read()` on the executors (librdkafka ->
  Arrow) and the Arrow batches' trip from the Python workers into the JVM;
- `to_arrow`: `batch.toArrow()`, the same read again plus the bronze transform and the collect of
  the result as Arrow to the Python driver; `to_arrow - count` is roughly transform + collect;
- `write`: delta-rs `write_deltalake` of that table (Parquet encoding + commit).

The read happens twice, so the profiled run is slower than the bronze job; compare the pieces,
not its total.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pyspark.sql import DataFrame, SparkSession

from pipelines.bench.memory import tree_cpu_seconds
from pipelines.config import Settings
from pipelines.io.kafka import kafka_end_offsets, read_kafka_stream
from pipelines.jobs.runner import await_query
from pipelines.transforms.bronze import BRONZE_PARTITION_COLUMNS, kafka_to_bronze

PROGRESS_PHASES = ("latestOffset", "getBatch", "queryPlanning", "addBatch", "walCommit",
                   "commitOffsets", "triggerExecution")


@dataclass
class BatchTiming:
    """One profiled micro-batch, in seconds."""

    batch_id: int
    rows: int
    count_s: float
    to_arrow_s: float
    write_s: float
    count_cpu_s: float = 0.0  # CPU seconds of the whole process tree (driver, JVM, workers)
    to_arrow_cpu_s: float = 0.0
    write_cpu_s: float = 0.0


@dataclass
class ProfileResult:
    """The profiled micro-batches and the summed progress phases (ms) of the batches with data."""

    max_records_per_trigger: int
    batches: list[BatchTiming] = field(default_factory=list)
    phases_ms: dict[str, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(b.rows for b in self.batches)

    def total(self, attr: str) -> float:
        return sum(getattr(b, attr) for b in self.batches)


def sum_phases(progress: list) -> dict[str, int]:
    """Sum each `durationMs` phase over the progress entries that carried rows."""
    sums = dict.fromkeys(PROGRESS_PHASES, 0)
    for entry in progress:
        if int(entry["numInputRows"]) <= 0:
            continue
        for phase, ms in (entry["durationMs"] or {}).items():
            if phase in sums:
                sums[phase] += int(ms)
    return sums


def profile_bronze_batches(spark: SparkSession, settings: Settings) -> ProfileResult:
    """Run the bronze source + transform once over the backlog with a timing foreachBatch."""
    from deltalake import write_deltalake

    topics = settings.streaming.bronze_topics
    checkpoint = settings.checkpoint_path("bronze-profile")
    path = settings.table_path("bronze.events")
    result = ProfileResult(settings.kafka.max_records_per_trigger)

    def timed(batch: DataFrame, batch_id: int) -> None:
        c0, t0 = tree_cpu_seconds(), time.perf_counter()
        rows = batch.count()
        c1, t1 = tree_cpu_seconds(), time.perf_counter()
        table = batch.toArrow()
        c2, t2 = tree_cpu_seconds(), time.perf_counter()
        if table.num_rows:
            write_deltalake(path, table, mode="append",
                            partition_by=list(BRONZE_PARTITION_COLUMNS))
        c3, t3 = tree_cpu_seconds(), time.perf_counter()
        if rows:
            result.batches.append(BatchTiming(batch_id, rows, t1 - t0, t2 - t1, t3 - t2,
                                              c1 - c0, c2 - c1, c3 - c2))

    until = kafka_end_offsets(settings, topics)
    source = read_kafka_stream(spark, settings, topics, checkpoint=checkpoint)
    query = (source.transform(kafka_to_bronze).writeStream
             .queryName("bronze_profile")
             .option("checkpointLocation", checkpoint)
             .foreachBatch(timed)
             .trigger(processingTime=f"{settings.streaming.trigger_seconds} seconds")
             .start())
    try:
        await_query(query, until_offsets=until, poll_s=0.2)
    finally:
        if query.isActive:
            query.stop()
    result.phases_ms = sum_phases(query.recentProgress)
    return result
