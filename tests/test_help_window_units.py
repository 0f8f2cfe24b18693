"""The Help window processor's pure parts (no Spark): its output rows, and the bucket state:
what is due, what is pruned, when the bucket wakes up."""

from __future__ import annotations

from pipelines.transforms.help import (
    EARLY,
    EVIDENCE_COLUMNS,
    RELAY,
    REQUEST_COLUMNS,
    WINDOW_OUTPUT_SCHEMA,
)
from pipelines.transforms.help_window import WindowBucket, _pair_row


def test_pair_rows_follow_the_output_schema_and_carry_the_cut() -> None:
    pair = {**dict.fromkeys(EVIDENCE_COLUMNS), **{c: f"v-{c}" for c in REQUEST_COLUMNS},
            "signal": "mic_muted", "rtt_ms": 900}
    row = _pair_row(pair, early=True)
    names = [f.split(" ")[0] for f in WINDOW_OUTPUT_SCHEMA.split(", ")]
    assert list(row.asDict()) == names == [*REQUEST_COLUMNS, *EVIDENCE_COLUMNS, EARLY, RELAY]
    assert row[EARLY] is True and row["signal"] == "mic_muted" and row["rtt_ms"] == 900
    assert row["help_id"] == "v-help_id" and row["detail"] is None and row[RELAY] is None
    assert _pair_row(pair, early=False)[EARLY] is False


RETAIN, EVERY = 75_000, 10_000


def evidence(kafka_ms: int, signal: str = "mic_muted") -> list:
    row = {**dict.fromkeys(EVIDENCE_COLUMNS), "signal": signal, "role": "student",
           "event_time_ms": kafka_ms, "kafka_time_ms": kafka_ms}
    return [row[c] for c in EVIDENCE_COLUMNS]


def request(help_id: str, kafka_ms: int, due_ms: int) -> list:
    row = {**dict.fromkeys(REQUEST_COLUMNS), "help_id": help_id,
           "request_time_ms": kafka_ms, "request_kafka_ms": kafka_ms}
    return [*(row[c] for c in REQUEST_COLUMNS), due_ms]


def test_bucket_survives_its_state_value_and_gives_each_classroom_its_own_evidence() -> None:
    bucket = WindowBucket({"cr-1": [evidence(1000)], "": [evidence(2000, "wb_load_fail")]},
                          {"cr-1": {"h1": request("h1", 1500, 6500)}}, 6500)
    again = WindowBucket.loads(bucket.dumps())
    assert again == bucket
    assert [e["signal"] for e in again.evidence_of("cr-1")] == ["mic_muted"]
    assert [e["signal"] for e in again.evidence_of("")] == ["wb_load_fail"]
    assert again.evidence_of("cr-2") == []
    assert WindowBucket.loads(None) == WindowBucket() and WindowBucket().empty


def test_take_due_removes_only_requests_due_by_then() -> None:
    bucket = WindowBucket({}, {"cr-1": {"h1": request("h1", 1000, 6000),
                                        "h2": request("h2", 9000, 14000)},
                               "cr-2": {"h3": request("h3", 500, 5500)}})
    due = bucket.take_due(6000)
    assert sorted((c, r["help_id"]) for c, r in due) == [("cr-1", "h1"), ("cr-2", "h3")]
    assert due[0][1]["request_kafka_ms"] in (1000, 500)
    assert bucket.pending == {"cr-1": {"h2": request("h2", 9000, 14000)}}
    assert bucket.take_due(13_999) == []


def test_prune_drops_rows_behind_the_horizon_and_empty_classrooms() -> None:
    watermark = 1_000_000
    bucket = WindowBucket({"a": [evidence(watermark - RETAIN - 1), evidence(watermark - RETAIN)],
                           "b": [evidence(watermark - RETAIN - 5)]})
    bucket.prune(watermark, RETAIN)
    assert bucket.ev == {"a": [evidence(watermark - RETAIN)]}
    bucket.prune(watermark + 1, RETAIN)
    assert bucket.empty


def test_one_timer_at_the_earliest_due_request_or_evidence_expiry_with_a_floor() -> None:
    watermark = 1_000_000
    bucket = WindowBucket({"a": [evidence(watermark - 30_000)]})
    assert bucket.reschedule(watermark, RETAIN, EVERY) == (None, watermark - 30_000 + RETAIN)
    assert bucket.reschedule(watermark, RETAIN, EVERY) == (None, None)  # kept
    bucket.pending["a"] = {"h": request("h", watermark, watermark + 5000)}
    assert bucket.reschedule(watermark, RETAIN, EVERY) == (watermark - 30_000 + RETAIN,
                                                          watermark + 5000)
    assert bucket.timer == watermark + 5000
    bucket.take_due(watermark + 5000)  # the timer fired: a fresh one, at the floor now
    bucket.ev["b"] = [evidence(watermark + 5000 - RETAIN)]
    assert bucket.reschedule(watermark + 5000, RETAIN, EVERY) == (None,
                                                                  watermark + 5000 + EVERY)
    bucket.ev.clear()  # empty: the live timer goes
    assert bucket.reschedule(watermark + 5000, RETAIN, EVERY) == (watermark + 5000 + EVERY,
                                                                  None)
    assert bucket.timer is None
    assert WindowBucket().reschedule(watermark, RETAIN, EVERY) == (None, None)


def test_a_timer_due_in_this_batch_is_not_registered_twice() -> None:
    """Input comes before timers in a batch: a bucket whose request is due (its timer at or
    behind the watermark, not fired yet) keeps that timer rather than registering it again."""
    watermark = 1_000_000
    bucket = WindowBucket({"a": [evidence(watermark - 1000)]},
                          {"a": {"h": request("h", watermark - 6000, watermark - 1000)}},
                          timer=watermark - 1000)
    assert bucket.reschedule(watermark, RETAIN, EVERY) == (None, None)
    assert bucket.timer == watermark - 1000
    bucket.take_due(watermark)  # it fired: the next one is fresh
    assert bucket.reschedule(watermark, RETAIN, EVERY) == (None, watermark - 1000 + RETAIN)


def test_a_steady_trickle_wakes_its_bucket_once_per_floor_and_stays_bounded() -> None:
    """One signal per second, a watermark moving 1 s per batch (the processor's order: the
    timer fires, then the next batch's input is saved): the bucket wakes about once per
    `EVERY` of broker time, its timer moves only then, and it never holds rows older than
    RETAIN."""
    bucket, wakes, moves = WindowBucket(), 0, 0
    for watermark in range(0, 300_000, 1000):
        if bucket.timer is not None and bucket.timer <= watermark:
            wakes += 1
            bucket.prune(watermark, RETAIN)
            moves += bucket.reschedule(watermark, RETAIN, EVERY) != (None, None)
        bucket.ev.setdefault("a", []).append(evidence(watermark))
        bucket.prune(watermark, RETAIN)
        moves += bucket.reschedule(watermark, RETAIN, EVERY) != (None, None)
        oldest = min(r[EVIDENCE_COLUMNS.index("kafka_time_ms")] for r in bucket.ev["a"])
        assert watermark - oldest <= RETAIN
    assert 0 < wakes <= 300_000 // EVERY + 1
    assert moves <= wakes + 1
