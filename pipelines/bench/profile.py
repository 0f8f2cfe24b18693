"""Where a bronze micro-batch spends its time: read, collect to the driver, Delta write.

The bronze job's `addBatch` is one opaque number: `DeltaRsWriter.append` runs `toArrow()` (read
on the executors, transform, collect) and then `write_deltalake`. This runs the same source and
transform with a foreachBatch that splits the work into three steps, each timed on its own:

- `read`: `localCheckpoint(eager=True)`: the Python source's `read()` on the executors
  (librdkafka -> Arrow), the Arrow batches' trip into the JVM, the bronze transform, and the rows
  kept in executor memory;
- `collect`: `toArrow()` of those kept rows: rows back to Arrow, collected in the Python driver;
- `write`: delta-rs `write_deltalake` of that table on the driver (Parquet + commit).

Every record is read once, as in the job; keeping the rows costs a little extra in `read`. Each
piece records wall seconds, CPU seconds by process (driver, JVM, Python workers, other Python,
broker) and the JVM's CPU by thread group; CPU is what to compare on a busy machine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pyspark.sql import DataFrame, SparkSession

from pipelines.bench.memory import (
    CPU_KINDS,
    JVM_THREAD_GROUPS,
    cpu_by_process,
    cpu_delta,
    jvm_thread_cpu,
)
from pipelines.config import Settings
from pipelines.io.kafka import kafka_end_offsets, read_kafka_stream
from pipelines.jobs.runner import await_query
from pipelines.transforms.bronze import BRONZE_PARTITION_COLUMNS, kafka_to_bronze

PROGRESS_PHASES = ("latestOffset", "getBatch", "queryPlanning", "addBatch", "walCommit",
                   "commitOffsets", "triggerExecution")
PIECES = ("read", "collect", "write")


@dataclass
class Piece:
    """One piece summed over the profiled batches: wall seconds and CPU seconds by process."""

    seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CPU_KINDS, 0.0))
    jvm_threads: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(JVM_THREAD_GROUPS, 0.0))

    def add(self, seconds: float, cpu: dict[str, float], jvm_threads: dict[str, float]) -> None:
        self.seconds += seconds
        for kind, value in cpu.items():
            self.cpu[kind] += value
        for group, value in jvm_threads.items():
            self.jvm_threads[group] += value

    @property
    def spark_cpu(self) -> float:
        return sum(v for k, v in self.cpu.items() if k != "broker")


@dataclass
class ProfileResult:
    """The profiled pieces and the summed progress phases (ms) of the batches with data."""

    max_records_per_trigger: int
    rows: int = 0
    batches: int = 0
    pieces: dict[str, Piece] = field(default_factory=lambda: {p: Piece() for p in PIECES})
    phases_ms: dict[str, int] = field(default_factory=dict)


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


def profile_bronze_batches(spark: SparkSession, settings: Settings, *,
                           broker_pid: int | None = None) -> ProfileResult:
    """Run the bronze source + transform once over the backlog with a timing foreachBatch."""
    from deltalake import write_deltalake

    topics = [settings.kafka_topic(t) for t in settings.streaming.bronze_topics]
    checkpoint = settings.checkpoint_path("bronze-profile")
    path = settings.table_path("bronze.events")
    result = ProfileResult(settings.kafka.max_records_per_trigger)

    def mark() -> tuple[float, dict[str, float], dict[str, float]]:
        return time.perf_counter(), cpu_by_process(broker_pid), jvm_thread_cpu()

    def timed(batch: DataFrame, _batch_id: int) -> None:
        marks = [mark()]
        kept = batch.localCheckpoint(eager=True)
        marks.append(mark())
        table = kept.toArrow()
        marks.append(mark())
        if table.num_rows:
            write_deltalake(path, table, mode="append",
                            partition_by=list(BRONZE_PARTITION_COLUMNS))
        marks.append(mark())
        kept.unpersist()
        if table.num_rows:
            result.rows += table.num_rows
            result.batches += 1
            for piece, (t0, c0, j0), (t1, c1, j1) in zip(PIECES, marks[:-1], marks[1:],
                                                         strict=True):
                threads = {g: max(v - j0.get(g, 0.0), 0.0) for g, v in j1.items()}
                result.pieces[piece].add(t1 - t0, cpu_delta(c0, c1), threads)

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
