"""The Help window as a per-classroom buffer (transformWithState, event-time timers).

Why not only a stream-stream join: a join's output watermark is its input watermark minus the
longest time it keeps state (the 60 s look-back), so the per-request aggregation after it can
only close a request a minute after the window did (docs/BENCHMARKS.md, "bench help"). Here
each classroom keeps its recent evidence signals and open requests; a request's timer is its
broker time + `window_after_s`, and it fires as soon as the watermark passes that, with
everything the classroom sent in its window. The rows given to the operator carry no
watermarked column, so Spark never drops a late request or late evidence: a late request is
tagged at once with what is buffered.

Early cut (`help.early_tags`): when a request arrives, its pairs with the evidence buffered so
far also go out at once, marked `early`; the sink tags from them when their primary tag is one
of early_tags (faults start before the Help press, so the look-back usually decides), else the
window-closed pairs decide. Each help_id is tagged once either way (the sink's guard).

Why `transformWithState` (rows) and not `transformWithStateInPandas`: the operator sees each
classroom's few rows per micro-batch, and the pandas flavour builds a DataFrame per classroom
on the way in and out: about a seventh of the Python worker's time in the profile, more than
the window logic itself (docs/BENCHMARKS.md, "bench help: the window buffer's pruning and its
move to rows"). Plain rows also need no conversion to state values.

Timers follow the query's watermark, which Spark records per batch in the offset log, so a
replayed batch fires the same timers over the same state and emits the same pairs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pyspark.sql import DataFrame, Row
from pyspark.sql.streaming import StatefulProcessor, StatefulProcessorHandle

from pipelines.config import HelpConfig
from pipelines.transforms.help import (
    EARLY,
    EVIDENCE_COLUMNS,
    EVIDENCE_FIELDS,
    REQUEST,
    REQUEST_COLUMNS,
    REQUEST_FIELDS,
    STATE_PAIR_SCHEMA,
    Transform,
    window_pairs,
)

EVIDENCE_STATE = ", ".join(f"{n} {t}" for n, t in EVIDENCE_FIELDS)
PENDING_STATE = ", ".join(f"{n} {t}" for n, t in (*REQUEST_FIELDS, ("due_ms", "long")))
_PAIR_COLUMNS = (*REQUEST_COLUMNS, *EVIDENCE_COLUMNS, EARLY)
# help_signals column -> request field
_REQUEST_SOURCE = {"help_id": "help_id", "classroom_id": "classroom_id",
                   "lesson_id": "lesson_id", "requester_id": "user_id",
                   "requester_role": "role", "category": "category",
                   "request_time_ms": "event_time_ms", "request_kafka_ms": "kafka_time_ms"}


_PAIR = Row(*_PAIR_COLUMNS)


def _pair_row(pair: dict[str, Any], *, early: bool) -> Row:
    return _PAIR(*(early if c == EARLY else pair[c] for c in _PAIR_COLUMNS))


def prune_plan(kafka_ms: list[int], watermark_ms: int, retain_ms: int, every_ms: int
               ) -> tuple[list[bool], int | None]:
    """Which buffered evidence rows to keep (broker time at most `retain_ms` behind the
    watermark) and when to prune next (None: nothing left): when the oldest kept row falls
    out, but no sooner than `every_ms` from now.

    Why the floor: a classroom with a steady trickle of signals always has a row just inside
    the horizon, so pruning when it falls out meant reading and rewriting the whole buffer
    in nearly every micro-batch (a fifth of the Python worker's time at 2,000 lessons,
    docs/BENCHMARKS.md). Rows kept a little longer are harmless: each request still takes
    only the evidence inside its own window.
    """
    horizon = watermark_ms - retain_ms
    keep = [t >= horizon for t in kafka_ms]
    kept = [t for t, k in zip(kafka_ms, keep, strict=True) if k]
    if not kept:
        return keep, None
    return keep, max(min(kept) + retain_ms, watermark_ms + every_ms)


class HelpWindowProcessor(StatefulProcessor):
    """Per classroom: evidence signals (list), open requests (map help_id -> request), timers.

    Evidence is pruned on a cleanup timer once it is older (broker time) than any open or
    future request can look back to: before + after + slack behind the watermark, at most
    once per slack of broker time (`prune_plan`).
    """

    def __init__(self, before_ms: int, after_ms: int, slack_ms: int, *, early: bool) -> None:
        self.before_ms = before_ms
        self.after_ms = after_ms
        self.retain_ms = before_ms + after_ms + slack_ms
        self.prune_every_ms = slack_ms
        self.early = early  # also cut each request's pairs when it arrives (early_tags)

    def init(self, handle: StatefulProcessorHandle) -> None:
        self.handle = handle
        self.evidence = handle.getListState("evidence", EVIDENCE_STATE)
        self.pending = handle.getMapState("pending", "help_id string", PENDING_STATE)
        self.cleanup_at = handle.getValueState("cleanup_at", "at long")

    def handleInputRows(self, key: Any, rows: Iterator[Row],
                        timerValues: Any) -> Iterator[Row]:
        evidence: list[Row] = []
        requests: list[Row] = []
        for row in rows:
            (requests if row["signal"] == REQUEST else evidence).append(row)
        if evidence:
            self.evidence.appendList([tuple(r[c] for c in EVIDENCE_COLUMNS) for r in evidence])
            if not self.cleanup_at.exists():
                self._schedule_cleanup(min(r["kafka_time_ms"] for r in evidence)
                                       + self.retain_ms)
        buffered = self._buffered() if self.early and requests else []
        for row in requests:
            request = {name: row[src] for name, src in _REQUEST_SOURCE.items()}
            request["classroom_id"] = request["classroom_id"] or key[0]
            due = int(request["request_kafka_ms"]) + self.after_ms
            self.pending.updateValue((request["help_id"],),
                                     (*[request[c] for c in REQUEST_COLUMNS], due))
            self.handle.registerTimer(due)
            for pair in window_pairs(request, buffered, self.before_ms, self.after_ms):
                yield _pair_row(pair, early=True)

    def _buffered(self) -> list[dict[str, Any]]:
        return [dict(zip(EVIDENCE_COLUMNS, t, strict=True)) for t in self.evidence.get()]

    def handleExpiredTimer(self, key: Any, timerValues: Any,
                           expiredTimerInfo: Any) -> Iterator[Row]:
        expiry = expiredTimerInfo.getExpiryTimeInMs()
        due = [(k, v) for k, v in self.pending.iterator() if v[-1] <= expiry]
        out: list[Row] = []
        if due:
            evidence = self._buffered()
            for help_key, value in due:
                request = dict(zip(REQUEST_COLUMNS, value[:-1], strict=True))
                out.extend(_pair_row(pair, early=False) for pair in window_pairs(
                    request, evidence, self.before_ms, self.after_ms))
                self.pending.removeKey(help_key)
        cleanup = self.cleanup_at.get()
        if cleanup is not None and cleanup[0] <= expiry:
            self._prune(timerValues.getCurrentWatermarkInMs())
        yield from out

    def _schedule_cleanup(self, at_ms: int) -> None:
        self.cleanup_at.update((int(at_ms),))
        self.handle.registerTimer(int(at_ms))

    def _prune(self, watermark_ms: int) -> None:
        rows = list(self.evidence.get())
        keep, next_at = prune_plan([t[4] for t in rows],  # t[4]: kafka_time_ms
                                   watermark_ms, self.retain_ms, self.prune_every_ms)
        if next_at is None:
            self.evidence.clear()
            self.cleanup_at.clear()
            return
        if not all(keep):
            self.evidence.put([t for t, k in zip(rows, keep, strict=True) if k])
        self._schedule_cleanup(next_at)

    def close(self) -> None:
        pass


def buffer_requests_with_evidence(cfg: HelpConfig) -> Transform:
    """Signals -> (request, evidence) pairs, each request once its window closed."""
    processor = HelpWindowProcessor(int(cfg.window_before_s * 1000),
                                    int(cfg.window_after_s * 1000),
                                    int(cfg.evidence_slack_s * 1000),
                                    early=bool(cfg.early_tags))

    def apply(df: DataFrame) -> DataFrame:
        # Dropping the watermarked column keeps Spark from filtering late rows out of the
        # operator; its timers still follow the query's watermark.
        return (df.drop("kafka_timestamp").groupBy("classroom_id")
                  .transformWithState(processor, STATE_PAIR_SCHEMA, "Append", "EventTime"))

    return apply
