"""Spark Python streaming data source for Kafka (the `local` profile's Kafka connector).

It gives exactly Spark's Kafka source schema (key, value, topic, partition, offset, timestamp,
timestampType) so transforms cannot tell it from `format("kafka")`. Offsets are a JSON map
{topic: {partition: next_offset}} kept in Spark's checkpoint (offset log), like the JVM source.
Each micro-batch becomes one Spark partition per topic-partition with data; the executors read
their range with librdkafka (confluent-kafka) and yield Arrow record batches, so no per-row
Python objects cross into the JVM.

Why confluent-kafka: `lakehouse bench bronze` measured librdkafka's consumer several times
faster than kafka-python on this machine (docs/BENCHMARKS.md).

Rate limit: Spark 4.1 gives Python sources no admission control (latestOffset() has no start),
so the reader remembers the end offset it last handed out and, after a restart, recovers it from
the newest entry of the query's offset log (the `checkpointLocation` option). A capped batch
reads every partition to about the same broker time (`_plan_limit`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition
from pyspark.sql.types import (
    BinaryType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

FORMAT_NAME = "lakehouse_kafka"

KAFKA_SCHEMA = StructType([
    StructField("key", BinaryType()),
    StructField("value", BinaryType()),
    StructField("topic", StringType()),
    StructField("partition", IntegerType()),
    StructField("offset", LongType()),
    StructField("timestamp", TimestampType()),
    StructField("timestampType", IntegerType()),
])

_ARROW_SCHEMA = pa.schema([
    ("key", pa.binary()),
    ("value", pa.binary()),
    ("topic", pa.string()),
    ("partition", pa.int32()),
    ("offset", pa.int64()),
    ("timestamp", pa.timestamp("us", tz="UTC")),
    ("timestampType", pa.int32()),
])

Offsets = dict[str, dict[str, int]]  # {topic: {partition(str): next offset}}


class KafkaSourceError(RuntimeError):
    """The broker could not be reached in time, or records that should exist are gone."""


@dataclass(frozen=True)
class TopicPartitionRange:
    """One topic-partition's records in [start, end)."""

    topic: str
    partition: int
    start: int
    end: int


@dataclass(frozen=True)
class ReadTask(InputPartition):
    """The ranges one Spark task reads with one consumer.

    Several topic-partitions share a consumer because a broker answers one fetch for many
    partitions at once: tansu returns one record batch per partition per fetch, so a lone
    partition reads several times slower than a group (docs/BENCHMARKS.md).
    """

    ranges: tuple[TopicPartitionRange, ...]


def _client_options(options: Mapping[str, str]) -> dict[str, str]:
    """Options prefixed `kafka.` are client properties (as in Spark's Kafka source)."""
    return {k[len("kafka."):]: v for k, v in options.items() if k.startswith("kafka.")}


def _plan_limit(start: Offsets, latest: Offsets, limit: int,
                marks: Sequence[Offsets] = ()) -> Offsets:
    """Cap the records between start and latest at exactly `limit`, aligned in broker time.

    `marks`: every partition's end offset at earlier plannings, oldest first. The broker
    appends records as they arrive, so the offsets seen at one moment are one point in time
    across partitions: a coarse offset -> time index (the reader's own: tansu answers
    ListOffsets by timestamp with offset 0). The cap cuts inside the first interval
    between consecutive points (start, the marks, latest) that holds more than the limit,
    splitting that interval's records in proportion to each partition's share of it. So
    every partition is read to about the same broker time.

    Why: split in proportion to the whole backlog instead (no marks: after a restart), a
    partition whose backlog is bunched at its start (every lesson's enter events at the
    lesson's start) is read to an earlier time than the others, and a watermark on broker
    time then passes records not yet read. `bench resolve` at 10,000 lessons tagged most
    NOT_ENTERED requests NO_ISSUE_DETECTED that way (docs/BENCHMARKS.md, 2026-11-27).
    """
    tps = [(t, p) for t in latest for p in latest[t]]
    begin = {(t, p): start.get(t, {}).get(p, 0) for t, p in tps}
    final = {(t, p): max(latest[t][p], begin[(t, p)]) for t, p in tps}

    def count(point: dict[tuple[str, str], int]) -> int:
        return sum(point[tp] - begin[tp] for tp in tps)

    if count(final) <= limit:
        return latest
    lower, upper = begin, final
    for mark in marks:
        point = {(t, p): min(max(mark.get(t, {}).get(p, 0), lower[(t, p)]), final[(t, p)])
                 for t, p in tps}
        if count(point) > limit:
            upper = point
            break
        lower = point
    need = limit - count(lower)
    step = {tp: upper[tp] - lower[tp] for tp in tps}
    total = sum(step.values())
    take = {tp: step[tp] * need // total for tp in tps}
    # Hand the rounding remainder out one record at a time, largest share first.
    short = need - sum(take.values())
    for tp in sorted(tps, key=lambda tp: step[tp] - take[tp], reverse=True):
        if short == 0:
            break
        if take[tp] < step[tp]:
            take[tp] += 1
            short -= 1
    end: Offsets = {t: dict(parts) for t, parts in latest.items()}
    for t, p in tps:
        end[t][p] = lower[(t, p)] + take[(t, p)]
    return end


def last_logged_offset(checkpoint: str, belongs: Callable[[dict], bool]) -> dict | None:
    """The newest offset a source wrote to the query's offset log, if any.

    `belongs` picks this source's entry among the query's sources.
    """
    log_dir = Path(checkpoint) / "offsets"
    if "://" in checkpoint or not log_dir.is_dir():
        return None
    batches = sorted((int(f.name) for f in log_dir.iterdir() if f.name.isdigit()), reverse=True)
    for batch in batches:
        for line in (log_dir / str(batch)).read_text().splitlines()[2:]:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry and belongs(entry):
                return entry
    return None


def _last_logged_end(checkpoint: str, topics: set[str]) -> Offsets | None:
    entry = last_logged_offset(checkpoint, lambda e: set(e) <= topics)
    if entry is None:
        return None
    return {t: {p: int(o) for p, o in parts.items()} for t, parts in entry.items()}


class KafkaStreamReader(DataSourceStreamReader):
    """Plans offset ranges on the driver; reads them on the executors."""

    def __init__(self, options: Mapping[str, str]) -> None:
        # Spark hands options over case-insensitively (lower-cased keys); normalise to that.
        self.options = {k.lower(): v for k, v in options.items()}
        if not self.options.get("subscribe"):
            raise KafkaSourceError("option 'subscribe' (comma-separated topics) is required")
        if not self.options.get("kafka.bootstrap.servers"):
            raise KafkaSourceError("option 'kafka.bootstrap.servers' is required")
        self.topics = [t.strip() for t in self.options["subscribe"].split(",") if t.strip()]
        self.max_per_trigger = int(self.options.get("maxoffsetspertrigger", "0")) or None
        self.timeout_s = float(self.options.get("readtimeoutseconds", "300"))
        self.fail_on_data_loss = self.options.get("failondataloss", "true").lower() == "true"
        self.num_tasks = max(int(self.options.get("readertasks", "2")), 1)
        self._last_end: Offsets | None = None
        self._marks: list[Offsets] = []  # high watermarks at earlier plannings (_plan_limit)
        self._planner = None  # driver-side consumer, created on first use
        checkpoint = self.options.get("checkpointlocation")
        if checkpoint:
            self._last_end = _last_logged_end(checkpoint, set(self.topics))

    # -- driver side -------------------------------------------------------------------------
    def _consumer(self):
        from confluent_kafka import Consumer

        if self._planner is None:
            self._planner = Consumer({**_client_options(self.options),
                                      "group.id": "lakehouse-planner",
                                      "enable.auto.commit": False,
                                      "enable.partition.eof": True,
                                      "fetch.wait.max.ms": 10})
        return self._planner

    def __getstate__(self) -> dict:
        """The reader is shipped to executors; its driver-side consumer stays behind."""
        state = dict(self.__dict__)
        state["_planner"] = None
        return state

    def _watermarks(self, earliest: bool) -> Offsets:
        """Low (earliest) or high watermark per partition; retries while the broker is away."""
        from confluent_kafka import KafkaException

        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                return self._query_watermarks(earliest)
            except KafkaException as exc:
                if time.monotonic() > deadline:
                    raise KafkaSourceError(f"broker unreachable: {exc}") from exc
                if self._planner is not None:
                    self._planner.close()
                    self._planner = None
                time.sleep(1)

    def _query_watermarks(self, earliest: bool) -> Offsets:
        from confluent_kafka import TopicPartition

        consumer = self._consumer()
        meta = consumer.list_topics(timeout=10)
        low: dict[tuple[str, int], int] = {}
        high: dict[tuple[str, int], int] = {}
        for topic in self.topics:
            tmeta = meta.topics.get(topic)
            if tmeta is None or tmeta.error is not None:
                raise KafkaSourceError(f"topic {topic!r} does not exist")
            for pid in sorted(tmeta.partitions):
                lo, hi = consumer.get_watermark_offsets(
                    TopicPartition(topic, pid), timeout=10, cached=False)
                low[(topic, pid)], high[(topic, pid)] = lo, hi
        chosen = low if earliest else self._fetched_high_watermarks(consumer, low, high)
        result: Offsets = {}
        for (topic, pid), offset in chosen.items():
            result.setdefault(topic, {})[str(pid)] = offset
        return result

    @staticmethod
    def _fetched_high_watermarks(consumer, low: dict, high: dict) -> dict:
        """True end offsets, read by fetching the newest record batch of each partition.

        tansu 0.6 answers ListOffsets(latest) with the newest batch's *first* offset + 1, so
        planning from it would leave the tail of the newest batch unread until more data came.
        A fetch from that offset returns the whole batch and the right high watermark.
        """
        from confluent_kafka import KafkaError, TopicPartition

        ends = dict(high)
        probe = {tp: hi - 1 for tp, hi in high.items() if hi > low[tp]}
        if not probe:
            return ends
        consumer.assign([TopicPartition(t, p, o) for (t, p), o in probe.items()])
        waiting = set(probe)
        deadline = time.monotonic() + 10
        try:
            while waiting and time.monotonic() < deadline:
                for msg in consumer.consume(num_messages=10_000, timeout=0.02):
                    tp = (msg.topic(), msg.partition())
                    err = msg.error()
                    if err is None:
                        # The fetch response that carried this record also carried the
                        # partition's true high watermark.
                        _, fetched_high = consumer.get_watermark_offsets(
                            TopicPartition(*tp), cached=True)
                        ends[tp] = max(ends[tp], msg.offset() + 1, fetched_high)
                        waiting.discard(tp)
                    elif err.code() == KafkaError._PARTITION_EOF:
                        waiting.discard(tp)
                        ends[tp] = max(ends[tp], msg.offset())
        finally:
            consumer.unassign()
        return ends

    def initialOffset(self) -> Offsets:
        initial = self._watermarks(earliest=self.options.get("startingoffsets") != "latest")
        self._last_end = initial  # the first batch starts here, so the rate limit applies
        return initial

    def high_watermarks(self) -> Offsets:
        """Where each partition ends now (the target of a run that stops when caught up)."""
        return self._watermarks(earliest=False)

    def latestOffset(self) -> Offsets:
        latest = self._watermarks(earliest=False)
        # Spark asks for the latest offset before the initial one on a fresh query.
        start = self._last_end if self._last_end is not None else self.initialOffset()
        behind = [f"{t}[{p}] {o} < {start[t][p]}" for t, parts in latest.items()
                  for p, o in parts.items() if o < start.get(t, {}).get(p, 0)]
        if behind and self.fail_on_data_loss:
            raise KafkaSourceError(
                "the broker's offsets went backwards (" + ", ".join(behind) + "): it lost its "
                "data (a restarted memory-storage broker?). Use durable broker storage, or "
                "delete this query's checkpoint to start over.")
        # New partitions start at 0; never plan behind what was already handed out.
        latest = {t: {p: max(o, start.get(t, {}).get(p, 0)) for p, o in parts.items()}
                  for t, parts in latest.items()}
        if self.max_per_trigger:
            self._marks.append(latest)
            planned = _plan_limit(start, latest, self.max_per_trigger, self._marks)
            # Marks every partition has passed can no longer bound a cut.
            self._marks = [m for m in self._marks if any(
                o > planned.get(t, {}).get(p, 0) for t, parts in m.items()
                for p, o in parts.items())]
            latest = planned
        self._last_end = latest
        return latest

    def partitions(self, start: Offsets, end: Offsets) -> list[ReadTask]:
        ranges = []
        for topic, parts in end.items():
            for pid, stop in parts.items():
                begin = start.get(topic, {}).get(pid, 0)
                if stop > begin:
                    ranges.append(TopicPartitionRange(topic, int(pid), begin, stop))
        # Largest first, dealt round-robin: tasks get similar record counts.
        ranges.sort(key=lambda r: r.end - r.start, reverse=True)
        groups = [tuple(ranges[i::self.num_tasks]) for i in range(self.num_tasks)]
        return [ReadTask(g) for g in groups if g] or [ReadTask(())]

    def commit(self, end: Offsets) -> None:
        """Offsets live in Spark's checkpoint; nothing to commit to Kafka."""

    def stop(self) -> None:
        if self._planner is not None:
            self._planner.close()
            self._planner = None

    # -- executor side -----------------------------------------------------------------------
    def read(self, partition: ReadTask) -> Iterator[pa.RecordBatch]:
        if partition.ranges:
            yield from read_ranges(_client_options(self.options), partition.ranges,
                                   timeout_s=self.timeout_s,
                                   fail_on_data_loss=self.fail_on_data_loss)


class _RangeBuffer:
    """Column buffers for one topic-partition while it is being read."""

    def __init__(self, part: TopicPartitionRange) -> None:
        self.part = part
        self.next_offset = part.start
        self.clear()

    def clear(self) -> None:
        self.keys: list[bytes | None] = []
        self.values: list[bytes | None] = []
        self.offsets: list[int] = []
        self.stamps: list[int] = []
        self.stamp_types: list[int] = []

    @property
    def done(self) -> bool:
        return self.next_offset >= self.part.end

    def flush(self) -> pa.RecordBatch:
        batch = _to_batch(self.part, self.keys, self.values, self.offsets, self.stamps,
                          self.stamp_types)
        self.clear()
        return batch


def read_ranges(client_options: dict[str, str], ranges: tuple[TopicPartitionRange, ...], *,
                timeout_s: float, fail_on_data_loss: bool = True,
                batch_rows: int = 50_000) -> Iterator[pa.RecordBatch]:
    """Records of each range [start, end) as Arrow batches, in offset order per partition.

    Keeps polling through broker outages until `timeout_s` passes without progress.
    """
    from confluent_kafka import KafkaError, TopicPartition

    buffers = {(r.topic, r.partition): _RangeBuffer(r) for r in ranges if r.end > r.start}
    if not buffers:
        return
    consumer = _new_consumer(client_options)
    consumer.assign([TopicPartition(t, p, b.next_offset) for (t, p), b in buffers.items()])
    pending = set(buffers)
    deadline = time.monotonic() + timeout_s
    try:
        while pending:
            # consume() waits for all `num_messages` or the timeout: never ask for more than
            # is left, and keep the timeout short so a finished range does not stall.
            remaining = sum(buffers[tp].part.end - buffers[tp].next_offset for tp in pending)
            messages = consumer.consume(num_messages=max(1, min(10_000, remaining)),
                                        timeout=0.1)
            if not messages:
                if time.monotonic() > deadline:
                    missing = ", ".join(f"{t}[{p}]@{buffers[(t, p)].next_offset}"
                                        for t, p in sorted(pending))
                    raise KafkaSourceError(f"no records within {timeout_s:.0f}s for {missing}")
                continue
            deadline = time.monotonic() + timeout_s
            for msg in messages:
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF and not err.retriable():
                        raise KafkaSourceError(f"{msg.topic()}[{msg.partition()}]: {err}")
                    continue
                buf = buffers[(msg.topic(), msg.partition())]
                offset = msg.offset()
                if offset < buf.next_offset or buf.done:
                    continue  # re-delivered after a reconnect, or past this range's end
                if offset >= buf.part.end:  # a gap at the tail (e.g. control records)
                    buf.next_offset = buf.part.end
                elif offset > buf.next_offset and fail_on_data_loss:
                    raise KafkaSourceError(
                        f"{buf.part.topic}[{buf.part.partition}]: offsets {buf.next_offset}.."
                        f"{offset - 1} are gone from the broker (data loss)")
                else:
                    ts_type, ts_ms = msg.timestamp()
                    buf.keys.append(msg.key())
                    buf.values.append(msg.value())
                    buf.offsets.append(offset)
                    buf.stamps.append(ts_ms * 1000)
                    buf.stamp_types.append(max(ts_type - 1, 0))  # librdkafka: 1=create, 2=append
                    buf.next_offset = offset + 1
                if buf.done:
                    pending.discard((buf.part.topic, buf.part.partition))
                    consumer.pause([TopicPartition(buf.part.topic, buf.part.partition)])
            for buf in buffers.values():
                if len(buf.offsets) >= batch_rows or (buf.done and buf.offsets):
                    yield buf.flush()
    finally:
        consumer.close()


def _new_consumer(client_options: dict[str, str]) -> Any:
    """A consumer for one read task, closed when the read ends.

    Not pooled per Python worker, though Spark's own source pools: a reused consumer (after
    unassign, assign at new offsets) got its first records only after ~1 s on every other
    read in the help job, while a fresh one reads, and closes, in 20-40 ms
    (docs/BENCHMARKS.md, "Kafka source: no consumer pool").
    """
    from confluent_kafka import Consumer

    return Consumer({**client_options, "group.id": "lakehouse-reader",
                     "enable.auto.commit": False, "enable.partition.eof": False,
                     "fetch.max.bytes": 104857600, "max.partition.fetch.bytes": 52428800,
                     "fetch.wait.max.ms": 50, "queued.max.messages.kbytes": 262144})


def _to_batch(part: TopicPartitionRange, keys: list, values: list, offsets: list[int],
              stamps: list[int], stamp_types: list[int]) -> pa.RecordBatch:
    n = len(offsets)
    return pa.RecordBatch.from_arrays([
        pa.array(keys, pa.binary()),
        pa.array(values, pa.binary()),
        pa.repeat(pa.scalar(part.topic, pa.string()), n),
        pa.repeat(pa.scalar(part.partition, pa.int32()), n),
        pa.array(offsets, pa.int64()),
        pa.array(stamps, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        pa.array(stamp_types, pa.int32()),
    ], schema=_ARROW_SCHEMA)


class KafkaDataSource(DataSource):
    """`spark.readStream.format("lakehouse_kafka")`: options as Spark's Kafka source."""

    @classmethod
    def name(cls) -> str:
        return FORMAT_NAME

    def schema(self) -> StructType:
        return KAFKA_SCHEMA

    def streamReader(self, schema: StructType) -> KafkaStreamReader:
        return KafkaStreamReader(self.options)
