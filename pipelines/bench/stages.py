"""The non-Spark stages of `lakehouse bench bronze`: produce, raw consumers, a plain ingest loop.

Each stage can run in a fresh process (`run_isolated`), so its peak RSS is its own and not the
high-water mark of everything the bench did before it, and no JVM or earlier stage competes for
the interpreter. Stages take plain client options, never `Settings`, to stay cheap to ship.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipelines.bench.events import av_events

_RESULT_MARK = "BENCH-RESULT "
# Large batches: tansu answers one record batch per partition per fetch, so the producer's batch
# size bounds how much a consumer gets per round trip.
PRODUCER_OPTIONS = {"linger.ms": 50, "batch.size": 1_000_000, "batch.num.messages": 100_000,
                    "queue.buffering.max.messages": 1_000_000,
                    "queue.buffering.max.kbytes": 1_048_576, "compression.type": "none",
                    "acks": "all", "enable.idempotence": False}
# The same fetch sizes the project's Kafka source reader uses (pipelines/io/kafka_source.py).
CONSUMER_OPTIONS = {"enable.auto.commit": False, "enable.partition.eof": False,
                    "fetch.max.bytes": 104_857_600, "max.partition.fetch.bytes": 52_428_800,
                    "fetch.wait.max.ms": 50, "queued.max.messages.kbytes": 262_144}


class BenchError(RuntimeError):
    """A bench stage lost records, or saw fewer than it was told to expect."""


@dataclass
class StageResult:
    """What one stage did: records in how many seconds, the CPU seconds it burnt doing so (all
    threads; steadier than wall time on a shared machine), and its process's peak RSS."""

    name: str
    records: int
    seconds: float
    peak_rss_bytes: int | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    cpu_seconds: float | None = None

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


def peak_rss_self() -> int:
    """This process's peak resident set size in bytes (ru_maxrss is KiB on Linux, B on macOS)."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)


def cpu_self() -> float:
    """CPU seconds (user + system, every thread) this process has used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_isolated(stage: str, timeout_s: float = 900, **kwargs: Any) -> StageResult:
    """Run stage `stage` (a name in STAGES) with JSON-able `kwargs` in a fresh interpreter.

    A subprocess rather than multiprocessing: spawn would re-import the caller's `__main__`
    (a console script, pytest, anything), and fork beside a running JVM is unsafe.
    """
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-m", "pipelines.bench.stages", stage],
                          input=json.dumps(kwargs), capture_output=True, text=True, env=env,
                          timeout=timeout_s, check=False)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT_MARK):
            return StageResult(**json.loads(line[len(_RESULT_MARK):]))
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
    raise BenchError(f"bench stage {stage} failed (exit {proc.returncode}):\n{tail}")


# ------------------------------------------------------------------------------ produce
def produce_av(client_options: dict[str, str], topic: str, n: int, *, seed: int = 7
               ) -> StageResult:
    """Produce `n` synthetic AV events; raise unless every delivery report says delivered.

    Delivery reports are checked because an unchecked producer once lost 1.5% of the records
    silently, which made every rate after it wrong.
    """
    from confluent_kafka import KafkaException, Producer

    producer = Producer({**client_options, **PRODUCER_OPTIONS})
    delivered = 0
    errors: list[str] = []

    def report(err: Any, _msg: Any) -> None:
        nonlocal delivered
        if err is None:
            delivered += 1
        elif len(errors) < 5:
            errors.append(str(err))
        else:
            errors.append("")  # counted, not kept

    cpu0, started = cpu_self(), time.perf_counter()
    for key, value in av_events(n, seed=seed):
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=report)
                break
            except BufferError:  # local queue full: let deliveries drain
                producer.poll(0.05)
            except KafkaException as exc:
                raise BenchError(f"produce to {topic} failed: {exc}") from exc
        producer.poll(0)
    left = producer.flush(120)
    seconds = time.perf_counter() - started
    if left or errors or delivered != n:
        shown = "; ".join(e for e in errors if e)
        raise BenchError(f"produced {n} records but only {delivered} were delivered "
                         f"({len(errors)} delivery errors, {left} never reported): {shown}")
    return StageResult("produce (confluent-kafka)", delivered, seconds, peak_rss_self(),
                       cpu_seconds=cpu_self() - cpu0)


# ------------------------------------------------------------------------------ raw consumers
def consume_librdkafka(client_options: dict[str, str], starts: dict[str, dict[str, int]],
                       n: int, *, timeout_s: float = 120) -> StageResult:
    """librdkafka (confluent-kafka): assign every partition at its start, count `n` records."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    consumer = Consumer({**client_options, **CONSUMER_OPTIONS,
                         "group.id": "lakehouse-bench-librdkafka"})
    seen = payload = 0
    cpu0, started = cpu_self(), time.perf_counter()
    consumer.assign([TopicPartition(t, int(p), o) for t, parts in starts.items()
                     for p, o in parts.items()])
    deadline = started + timeout_s
    try:
        while seen < n:
            if time.perf_counter() > deadline:
                raise BenchError(f"librdkafka saw {seen} of {n} records in {timeout_s:.0f}s")
            for msg in consumer.consume(num_messages=min(10_000, n - seen), timeout=0.1):
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF and not err.retriable():
                        raise BenchError(f"librdkafka: {err}")
                    continue
                seen += 1
                payload += len(msg.value() or b"")
        seconds, cpu = time.perf_counter() - started, cpu_self() - cpu0
    finally:
        consumer.close()
    return StageResult("librdkafka (confluent-kafka)", seen, seconds, peak_rss_self(),
                       {"payload_bytes": payload}, cpu)


def kafka_python_crc32c_native() -> bool:
    """Whether kafka-python verifies CRC32C with the `crc32c` C extension (else pure Python)."""
    from kafka.record import util

    return getattr(util, "crc32c_c", None) is not None


def consume_kafka_python(client_options: dict[str, str], starts: dict[str, dict[str, int]],
                         n: int, *, timeout_s: float = 300) -> StageResult:
    """kafka-python: assign + seek_to_beginning (or the given start offsets), count `n` records."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=client_options["bootstrap.servers"].split(","), group_id=None,
        enable_auto_commit=False, fetch_max_bytes=104_857_600,
        max_partition_fetch_bytes=52_428_800, fetch_max_wait_ms=50,
        receive_buffer_bytes=4 * 1024 * 1024)
    seen = payload = 0
    cpu0, started = cpu_self(), time.perf_counter()
    try:
        parts = [TopicPartition(t, int(p)) for t, ps in starts.items() for p in ps]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        for tp in parts:  # a broker with older records: start where this bench's begin
            if starts[tp.topic][str(tp.partition)] > 0:
                consumer.seek(tp, starts[tp.topic][str(tp.partition)])
        deadline = started + timeout_s
        while seen < n:
            if time.perf_counter() > deadline:
                raise BenchError(f"kafka-python saw {seen} of {n} records in {timeout_s:.0f}s")
            for records in consumer.poll(timeout_ms=100, max_records=10_000).values():
                seen += len(records)
                payload += sum(len(r.value or b"") for r in records)
        seconds, cpu = time.perf_counter() - started, cpu_self() - cpu0
    finally:
        consumer.close()
    return StageResult("kafka-python", seen, seconds, peak_rss_self(),
                       {"payload_bytes": payload, "crc32c_native": kafka_python_crc32c_native()},
                       cpu)


# ------------------------------------------------------------------------------ plain loop
BRONZE_ARROW_SCHEMA = pa.schema([
    ("topic", pa.string()),
    ("partition", pa.int32()),
    ("offset", pa.int64()),
    ("kafka_timestamp", pa.timestamp("us", tz="UTC")),
    ("timestamp_type", pa.int32()),
    ("key", pa.string()),
    ("value", pa.string()),
    ("value_raw", pa.binary()),
    ("ingest_date", pa.date32()),
    ("ingested_at", pa.timestamp("us", tz="UTC")),
])


def _utf8_or_null(raw: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(text where the bytes are valid UTF-8 else null, bytes where they are not else null)."""
    try:
        return raw.cast(pa.string()), pa.nulls(len(raw), pa.binary())
    except pa.ArrowInvalid:  # some record is not UTF-8: sort them out one by one
        texts: list[str | None] = []
        raws: list[bytes | None] = []
        for item in raw.to_pylist():
            try:
                texts.append(None if item is None else item.decode("utf-8"))
                raws.append(None)
            except UnicodeDecodeError:
                texts.append(None)
                raws.append(item)
        return pa.array(texts, pa.string()), pa.array(raws, pa.binary())


def bronze_batch(topics: list[str], partitions: list[int], offsets: list[int],
                 stamps_ms: list[int], stamp_types: list[int], keys: list[bytes | None],
                 values: list[bytes | None]) -> pa.Table:
    """Consumed records as a table with bronze.events' columns (see transforms/bronze.py)."""
    stamps = pa.array(stamps_ms, pa.int64()).cast(pa.timestamp("ms", tz="UTC")).cast(
        pa.timestamp("us", tz="UTC"))
    key_text, _ = _utf8_or_null(pa.array(keys, pa.binary()))
    value_text, value_raw = _utf8_or_null(pa.array(values, pa.binary()))
    now = dt.datetime.now(dt.UTC)
    return pa.Table.from_arrays([
        pa.array(topics, pa.string()),
        pa.array(partitions, pa.int32()),
        pa.array(offsets, pa.int64()),
        stamps,
        pa.array(stamp_types, pa.int32()),
        key_text,
        value_text,
        value_raw,
        stamps.cast(pa.date32()),
        pa.repeat(pa.scalar(now, pa.timestamp("us", tz="UTC")), len(offsets)),
    ], schema=BRONZE_ARROW_SCHEMA)


def plain_ingest_loop(client_options: dict[str, str], starts: dict[str, dict[str, int]], n: int,
                      table_path: str, *, flush_rows: int = 100_000,
                      partition_by: Iterable[str] = ("ingest_date", "topic"),
                      timeout_s: float = 120) -> StageResult:
    """What a user might write instead of Spark: consume -> Arrow -> delta-rs append per ~100k.

    One process, no framework: the reference the bronze job is measured against.
    """
    from confluent_kafka import Consumer, KafkaError, TopicPartition
    from deltalake import write_deltalake

    consumer = Consumer({**client_options, **CONSUMER_OPTIONS,
                         "group.id": "lakehouse-bench-plain"})
    columns: tuple[list[Any], ...] = ([], [], [], [], [], [], [])
    topics, partitions, offsets, stamps, stamp_types, keys, values = columns
    seen = commits = 0
    write_s = 0.0

    def flush() -> None:
        nonlocal commits, write_s
        t0 = time.perf_counter()
        table = bronze_batch(*columns)
        write_deltalake(table_path, table, mode="append", partition_by=list(partition_by))
        write_s += time.perf_counter() - t0
        commits += 1
        for column in columns:
            column.clear()

    cpu0, started = cpu_self(), time.perf_counter()
    consumer.assign([TopicPartition(t, int(p), o) for t, parts in starts.items()
                     for p, o in parts.items()])
    deadline = started + timeout_s
    try:
        while seen < n:
            if time.perf_counter() > deadline:
                raise BenchError(f"plain loop saw {seen} of {n} records in {timeout_s:.0f}s")
            for msg in consumer.consume(num_messages=min(10_000, n - seen), timeout=0.1):
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF and not err.retriable():
                        raise BenchError(f"plain loop: {err}")
                    continue
                ts_type, ts_ms = msg.timestamp()
                topics.append(msg.topic())
                partitions.append(msg.partition())
                offsets.append(msg.offset())
                stamps.append(ts_ms)
                stamp_types.append(max(ts_type - 1, 0))  # librdkafka: 1=create, 2=append
                keys.append(msg.key())
                values.append(msg.value())
                seen += 1
            if len(offsets) >= flush_rows:
                flush()
        if offsets:
            flush()
        seconds, cpu = time.perf_counter() - started, cpu_self() - cpu0
    finally:
        consumer.close()
    return StageResult("plain loop (confluent-kafka -> Arrow -> delta-rs)", seen, seconds,
                       peak_rss_self(), {"commits": commits, "write_seconds": write_s,
                                         "flush_rows": flush_rows}, cpu)


# ------------------------------------------------------------------------------ source reader
def source_read(client_options: dict[str, str], starts: dict[str, dict[str, int]],
                ends: dict[str, dict[str, int]], tasks: int = 2) -> StageResult:
    """The project's Kafka source reader (`read_ranges`) without Spark, split into `tasks` as the
    source's `partitions()` would, tasks run one after the other.

    Tells how much of a micro-batch is the executor-side read itself (librdkafka -> Python lists
    -> Arrow), before Spark ships the Arrow batches to the JVM.
    """
    import confluent_kafka  # noqa: F401 - imported here so the first task's clock leaves it out

    from pipelines.io.kafka_source import TopicPartitionRange, read_ranges

    ranges = sorted((TopicPartitionRange(t, int(p), starts.get(t, {}).get(p, 0), end)
                     for t, parts in ends.items() for p, end in parts.items()
                     if end > starts.get(t, {}).get(p, 0)),
                    key=lambda r: r.end - r.start, reverse=True)
    groups = [tuple(ranges[i::tasks]) for i in range(tasks)]
    rows = 0
    per_task: list[float] = []
    cpu0 = cpu_self()
    for group in groups:
        t0 = time.perf_counter()
        for batch in read_ranges(client_options, group, timeout_s=120):
            rows += batch.num_rows
        per_task.append(time.perf_counter() - t0)
    return StageResult("Kafka source read_ranges, no Spark", rows, sum(per_task),
                       peak_rss_self(), {"per_task_seconds": per_task, "tasks": tasks},
                       cpu_self() - cpu0)


STAGES: dict[str, Callable[..., StageResult]] = {
    "produce_av": produce_av,
    "consume_librdkafka": consume_librdkafka,
    "consume_kafka_python": consume_kafka_python,
    "plain_ingest_loop": plain_ingest_loop,
    "source_read": source_read,
}


def _main(argv: list[str]) -> int:
    """`python -m pipelines.bench.stages <stage>` with JSON kwargs on stdin (see run_isolated)."""
    stage = STAGES[argv[1]]
    result = stage(**json.loads(sys.stdin.read()))
    print(_RESULT_MARK + json.dumps(dataclasses.asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
