"""Where a bronze micro-batch spends its time: read, collect to the driver, Delta write.

The bronze job's `addBatch` is one opaque number. This runs the same source and transform with a
foreachBatch that times the pieces one after another, each as its own Spark action:

- `noop`: the batch written to Spark's `noop` sink: the Python source's `read()` on the executors
  (librdkafka -> Arrow), the Arrow batches' trip into the JVM and the bronze transform; nothing
  leaves the JVM;
- `toArrow`: the same again plus converting the rows back to Arrow and collecting them in the
  Python driver, as `DeltaRsWriter.append` does; `toArrow - noop` is the collect;
- `write`: delta-rs `write_deltalake` of that table on the driver (Parquet + commit).

Each piece records wall seconds and CPU seconds by process (driver, JVM, Python workers, other
Python, broker); CPU is what to compare on a busy machine. The read runs twice, so the profiled
run is slower than the bronze job: compare its pieces, not its total.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pyspark.sql import DataFrame, SparkSession

from pipelines.bench.memory import CPU_KINDS, cpu_by_process, cpu_delta
from pipelines.config import Settings
from pipelines.io.kafka import kafka_end_offsets, read_kafka_stream
from pipelines.jobs.runner import await_query
from pipelines.transforms.bronze import BRONZE_PARTITION_COLUMNS, kafka_to_bronze

PROGRESS_PHASES = ("latestOffset", "getBatch", "queryPlanning", "addBatch", "walCommit",
                   "commitOffsets", "triggerExecution")
PIECES = ("noop", "toArrow", "write")


@dataclass
class Piece:
    """One piece summed over the profiled batches: wall seconds and CPU seconds by process."""

    seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CPU_KINDS, 0.0))

    def add(self, seconds: float, cpu: dict[str, float]) -> None:
        self.seconds += seconds
        for kind, value in cpu.items():
            self.cpu[kind] += value

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

    def timed(batch: DataFrame, _batch_id: int) -> None:
        marks = [(time.perf_counter(), cpu_by_process(broker_pid))]
        batch.write.format("noop").mode("overwrite").save()
        marks.append((time.perf_counter(), cpu_by_process(broker_pid)))
        table = batch.toArrow()
        marks.append((time.perf_counter(), cpu_by_process(broker_pid)))
        if table.num_rows:
            write_deltalake(path, table, mode="append",
                            partition_by=list(BRONZE_PARTITION_COLUMNS))
        marks.append((time.perf_counter(), cpu_by_process(broker_pid)))
        if table.num_rows:
            result.rows += table.num_rows
            result.batches += 1
            for piece, (t0, c0), (t1, c1) in zip(PIECES, marks[:-1], marks[1:], strict=True):
                result.pieces[piece].add(t1 - t0, cpu_delta(c0, c1))

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
