"""The Help window as a per-classroom buffer (transformWithState, event-time timers).

Why not only a stream-stream join: a join's output watermark is its input watermark minus the
longest time it keeps state (the 60 s look-back), so the per-request aggregation after it can
only close a request a minute after the window did (docs/BENCHMARKS.md, "bench help"). Here
each classroom keeps its recent evidence signals and open requests (held per bucket of
classrooms: `HelpWindowProcessor` says why); a request is due at its broker time +
`window_after_s`, and goes out as soon as the watermark passes that, with everything the
classroom sent in its window. The rows given to the operator carry no
watermarked column, so Spark never drops a late request or late evidence: a late request is
tagged at once with what is buffered.

Early cut (`help.early_tags`): when a request arrives, its pairs with the evidence buffered so
far also go out at once, marked `early`; the sink tags from them when their primary tag is one
of early_tags (faults start before the Help press, so the look-back usually decides), else the
window-closed pairs decide. Each help_id is tagged once either way (the sink's guard).

Why `transformWithState` (rows) and not `transformWithStateInPandas`: the operator sees each
classroom's few rows per micro-batch, and the pandas flavour built a DataFrame per group
on the way in and out: about a seventh of the Python worker's time in the profile, more than
the window logic itself (docs/BENCHMARKS.md, "bench help: the window buffer's pruning and its
move to rows"). Plain rows also need no conversion to state values.

In-batch close: Spark applies a watermark only in the batch after the one that read it, so a
window closed by timers goes out two micro-batches after the records that closed it were
read. The job's own ticks (`help.tick_topic`) show how far a batch read: every tick row goes
to every bucket, and a request is closed in the batch whose newest tick is `watermark_delay_s`
past its due time, the same rule as the watermark's, one batch sooner. Every partition is
read to the same moment in a batch (pipelines/io/kafka_source.py), so the evidence up to
there is in this batch or the state.

Timers follow the query's watermark, which Spark records per batch in the offset log, so a
replayed batch fires the same timers over the same state and emits the same pairs; a replayed
batch reads the same ticks, so the in-batch close repeats too. Changing
`help.key_buckets` moves classrooms away from their state: keep it while a checkpoint lives.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from pyspark.sql import DataFrame, Row
from pyspark.sql import functions as F
from pyspark.sql.streaming import StatefulProcessor, StatefulProcessorHandle

from pipelines.config import HelpConfig
from pipelines.transforms.help import (
    ALIVE,
    DIAGNOSTICS,
    EARLY,
    EVIDENCE_COLUMNS,
    RELAY,
    RELAY_FIELDS,
    REQUEST,
    REQUEST_COLUMNS,
    ROLES,
    TICK,
    WINDOW_OUTPUT_SCHEMA,
    Transform,
    classroom_bucket,
    window_pairs,
)
from pipelines.transforms.playbook import PAGE_TURN

_PAIR_COLUMNS = (*REQUEST_COLUMNS, *EVIDENCE_COLUMNS, EARLY, RELAY)
_RELAY_NAMES = tuple(name for name, _ in RELAY_FIELDS)
_RELAY_ONLY = frozenset((ALIVE, PAGE_TURN, DIAGNOSTICS))  # rows for the resolver, not evidence
# help_signals column -> request field
_REQUEST_SOURCE = {"help_id": "help_id", "classroom_id": "classroom_id",
                   "lesson_id": "lesson_id", "requester_id": "user_id",
                   "requester_role": "role", "category": "category",
                   "request_time_ms": "event_time_ms", "request_kafka_ms": "kafka_time_ms"}


_PAIR = Row(*_PAIR_COLUMNS)


def _pair_row(pair: dict[str, Any], *, early: bool) -> Row:
    return _PAIR(*(early if c == EARLY else None if c == RELAY else pair[c]
                   for c in _PAIR_COLUMNS))


def _relay_row(items: list[dict[str, Any]]) -> Row:
    """The bucket's relay for this micro-batch: one output row, the items as a JSON array."""
    return _PAIR(*(orjson.dumps(items).decode() if c == RELAY else None
                   for c in _PAIR_COLUMNS))


def _relay_item(row: Row) -> dict[str, Any]:
    """An input row as the resolver reads it (RELAY_FIELDS; `kind` is the row's signal)."""
    return {name: row["signal" if name == "kind" else name] for name in _RELAY_NAMES}


_KAFKA_MS = EVIDENCE_COLUMNS.index("kafka_time_ms")


@dataclass
class WindowBucket:
    """The window state of one bucket of classrooms, kept as one value.

    ev: classroom -> its buffered evidence signals (EVIDENCE_COLUMNS tuples as lists);
    pending: classroom -> help_id -> its open request (REQUEST_COLUMNS values, then due_ms);
    timer: the one event-time timer registered for the bucket (None: none). A classroom with
    no id is kept under "".
    """

    ev: dict[str, list[list[Any]]] = field(default_factory=dict)
    pending: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    timer: int | None = None

    def dumps(self) -> str:
        return orjson.dumps({"ev": self.ev, "pending": self.pending,
                             "timer": self.timer}).decode()

    @classmethod
    def loads(cls, text: str | None) -> WindowBucket:
        if not text:
            return cls()
        raw = orjson.loads(text)
        return cls(raw["ev"], raw["pending"], raw["timer"])

    @property
    def empty(self) -> bool:
        return not (self.ev or self.pending)

    @property
    def held(self) -> tuple[int, int]:
        """(evidence rows, open requests) held: what must stay flat over a long run."""
        return (sum(len(rows) for rows in self.ev.values()),
                sum(len(requests) for requests in self.pending.values()))

    def evidence_of(self, classroom: str) -> list[dict[str, Any]]:
        return [dict(zip(EVIDENCE_COLUMNS, t, strict=True)) for t in self.ev.get(classroom, ())]

    def take_due(self, until_ms: int) -> list[tuple[str, dict[str, Any]]]:
        """Remove and return (classroom, request) of every open request due at `until_ms`."""
        out = []
        for classroom in list(self.pending):
            requests = self.pending[classroom]
            for help_id in [h for h, v in requests.items() if v[-1] <= until_ms]:
                out.append((classroom, dict(zip(REQUEST_COLUMNS, requests.pop(help_id)[:-1],
                                                strict=True))))
            if not requests:
                del self.pending[classroom]
        return out

    def prune(self, watermark_ms: int, retain_ms: int) -> None:
        """Drop evidence older (broker time) than `retain_ms` behind the watermark."""
        horizon = watermark_ms - retain_ms
        for classroom in list(self.ev):
            kept = [t for t in self.ev[classroom] if t[_KAFKA_MS] >= horizon]
            if kept:
                self.ev[classroom] = kept
            else:
                del self.ev[classroom]

    def reschedule(self, watermark_ms: int, retain_ms: int, every_ms: int
                   ) -> tuple[int | None, int | None]:
        """Keep one timer at the bucket's next wake-up: (timer to delete, timer to register).

        The wake-up is the earliest open request's due time or, for evidence alone, when the
        oldest row falls out, but no sooner than `every_ms` past the watermark. A registered
        timer stays while no request is due before it. Why: a bucket with a steady trickle
        of signals always has a row just inside the horizon, and would otherwise move its
        timer (two round trips) in every micro-batch. A timer at or behind the watermark
        fires in this batch, and Spark drops it.
        """
        live = self.timer if self.timer is not None and self.timer > watermark_ms else None
        due = min((v[-1] for requests in self.pending.values() for v in requests.values()),
                  default=None)
        if self.empty:
            wanted = None
        elif live is not None and (due is None or due >= live):
            return None, None
        elif live is not None:
            wanted = due
        else:
            oldest = min((t[_KAFKA_MS] for rows in self.ev.values() for t in rows), default=None)
            wake = None if oldest is None else max(oldest + retain_ms, watermark_ms + every_ms)
            wanted = min((t for t in (due, wake) if t is not None), default=None)
        if wanted is not None and wanted == self.timer:
            return None, None  # a due request's timer, still to fire in this batch
        self.timer = wanted
        return live, wanted


class HelpWindowProcessor(StatefulProcessor):
    """Per bucket of classrooms (a hash of classroom_id into `key_buckets`): one value holds
    each classroom's evidence signals and open requests (`WindowBucket`); one event-time timer
    wakes the bucket at its earliest due request or evidence expiry.

    Why buckets and one value, not a group per classroom with a list, a map and a value state
    each: a group costs several round trips between the Python worker and the JVM's state
    server (set the key, append, exists, get, update, timers), and at 10,000 lessons thousands
    of classrooms had a signal in every micro-batch: the window stage took 4.4 s of a 4.9 s
    batch (docs/BENCHMARKS.md). A bucket costs set key, get and update, however many
    classrooms it holds. The resolver's state is bucketed for the same reason.

    Evidence is pruned whenever its bucket is saved, once it is older (broker time) than any
    open or future request can look back to: before + after + slack behind the watermark; the
    timer wakes an idle bucket to prune it (`WindowBucket.reschedule`).
    """

    def __init__(self, before_ms: int, after_ms: int, slack_ms: int, *, early: bool,
                 delay_ms: int | None = None, relay: bool = False) -> None:
        self.before_ms = before_ms
        self.after_ms = after_ms
        self.delay_ms = delay_ms  # close windows from this batch's ticks (None: timers only)
        self.retain_ms = before_ms + after_ms + slack_ms
        self.prune_every_ms = slack_ms
        self.early = early  # also cut each request's pairs when it arrives (early_tags)
        self.relay = relay  # relay fired signals, liveness and diagnostics for the resolver

    def init(self, handle: StatefulProcessorHandle) -> None:
        self.handle = handle
        self.state = handle.getValueState("bucket", "body string")

    def handleInputRows(self, key: Any, rows: Iterator[Row],
                        timerValues: Any) -> Iterator[Row]:
        watermark = timerValues.getCurrentWatermarkInMs()
        evidence: dict[str, list[list[Any]]] = {}
        requests: dict[str, list[Row]] = {}
        read_to: int | None = None  # the newest tick's broker time in this batch
        relayed: list[dict[str, Any]] = []
        for row in rows:
            classroom, signal = row["classroom_id"] or "", row["signal"]
            if signal == TICK:
                read_to = max(read_to or 0, int(row["kafka_time_ms"]))
            elif signal == REQUEST:
                requests.setdefault(classroom, []).append(row)
            elif signal in _RELAY_ONLY:
                relayed.append(_relay_item(row))
            else:
                evidence.setdefault(classroom, []).append([row[c] for c in EVIDENCE_COLUMNS])
                if self.relay and classroom and row["role"] in ROLES:
                    relayed.append(_relay_item(row))
        if relayed:
            yield _relay_row(relayed)
        held = self.state.exists()  # `get` of no value logs a warning in the JVM each time
        if not (evidence or requests or held):
            return  # only ticks, and nothing held
        stored = self.state.get() if held else None
        bucket = WindowBucket.loads(stored[0] if stored else None)
        for classroom, new in evidence.items():
            bucket.ev.setdefault(classroom, []).extend(new)
        out: list[Row] = []
        for classroom, arrived in requests.items():
            buffered = bucket.evidence_of(classroom) if self.early else []
            for row in arrived:
                request = {name: row[src] for name, src in _REQUEST_SOURCE.items()}
                due = int(request["request_kafka_ms"]) + self.after_ms
                bucket.pending.setdefault(classroom, {})[request["help_id"]] = [
                    *[request[c] for c in REQUEST_COLUMNS], due]
                out.extend(_pair_row(pair, early=True) for pair in window_pairs(
                    request, buffered, self.before_ms, self.after_ms))
        if read_to is not None and self.delay_ms is not None:
            out.extend(self._closed(bucket, read_to - self.delay_ms))
        self._save(bucket, stored is not None, watermark)
        yield from out

    def _closed(self, bucket: WindowBucket, until_ms: int) -> Iterator[Row]:
        """The window-closed pairs of every open request due by `until_ms` (broker time)."""
        for classroom, request in bucket.take_due(until_ms):
            yield from (_pair_row(pair, early=False) for pair in window_pairs(
                request, bucket.evidence_of(classroom), self.before_ms, self.after_ms))

    def handleExpiredTimer(self, key: Any, timerValues: Any,
                           expiredTimerInfo: Any) -> Iterator[Row]:
        stored = self.state.get()
        if stored is None:
            return
        watermark = timerValues.getCurrentWatermarkInMs()
        bucket = WindowBucket.loads(stored[0])
        out = list(self._closed(bucket, max(watermark, expiredTimerInfo.getExpiryTimeInMs())))
        self._save(bucket, True, watermark)
        yield from out

    def _save(self, bucket: WindowBucket, stored: bool, watermark_ms: int) -> None:
        """Prune the bucket, keep its one timer, store it (or clear it when empty)."""
        bucket.prune(watermark_ms, self.retain_ms)
        delete, register = bucket.reschedule(watermark_ms, self.retain_ms, self.prune_every_ms)
        if delete is not None:
            self.handle.deleteTimer(delete)
        if register is not None:
            self.handle.registerTimer(register)
        if bucket.empty:
            if stored:
                self.state.clear()
        else:
            self.state.update((bucket.dumps(),))

    def close(self) -> None:
        pass


def buffer_requests_with_evidence(cfg: HelpConfig, *, relay: bool = False) -> Transform:
    """Signals -> (request, evidence) pairs, each request once its window closed
    (WINDOW_OUTPUT_SCHEMA); with `relay` (input from `help_signals(..., relay=True)`), also
    the resolver's rows, one relay row per bucket and micro-batch."""
    processor = HelpWindowProcessor(int(cfg.window_before_s * 1000),
                                    int(cfg.window_after_s * 1000),
                                    int(cfg.evidence_slack_s * 1000),
                                    early=bool(cfg.early_tags),
                                    delay_ms=int(cfg.watermark_delay_s * 1000),
                                    relay=relay)

    def apply(df: DataFrame) -> DataFrame:
        # Dropping the watermarked column keeps Spark from filtering late rows out of the
        # operator; its timers still follow the query's watermark. A tick row goes to every
        # bucket (the in-batch close, see the module docstring).
        every_bucket = F.sequence(F.lit(0), F.lit(cfg.key_buckets - 1))
        bucket = F.explode(F.when(F.col("signal") == TICK, every_bucket)
                            .otherwise(F.array(classroom_bucket(cfg.key_buckets))))
        return (df.drop("kafka_timestamp").withColumn("bucket", bucket).groupBy("bucket")
                  .transformWithState(processor, WINDOW_OUTPUT_SCHEMA, "Append", "EventTime"))

    return apply
