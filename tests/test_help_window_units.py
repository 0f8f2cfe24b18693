"""The Help window processor's pure parts (no Spark): the pandas -> state-value conversion,
and when the evidence buffer is pruned.

What Arrow hands the processor per classroom is a small pandas frame whose long columns turn
into float64 when they hold a null; the state API needs plain ints, floats, strings and None.
"""

from __future__ import annotations

import math

import pandas as pd

from pipelines.transforms.help_window import _records, prune_plan


def test_records_are_plain_python_values_with_none_for_missing() -> None:
    pdf = pd.DataFrame({
        "event_id": ["e1", None],
        "signal": ["request", "AV_BAD_NETWORK"],
        "kafka_time_ms": pd.Series([1_750_000_000_123, 1_750_000_000_456], dtype="int64"),
        "rtt_ms": pd.Series([float("nan"), 900.0]),  # a long column with a null
        "packet_loss_pct": pd.Series([12.5, float("nan")]),
        "unlisted": [float("nan"), 3],
    })
    rows = _records(pdf)
    assert rows == [
        {"event_id": "e1", "signal": "request", "kafka_time_ms": 1_750_000_000_123,
         "rtt_ms": None, "packet_loss_pct": 12.5, "unlisted": None},
        {"event_id": None, "signal": "AV_BAD_NETWORK", "kafka_time_ms": 1_750_000_000_456,
         "rtt_ms": 900, "packet_loss_pct": None, "unlisted": 3},
    ]
    assert type(rows[1]["rtt_ms"]) is int and type(rows[0]["kafka_time_ms"]) is int
    assert type(rows[0]["packet_loss_pct"]) is float
    assert not any(isinstance(v, float) and math.isnan(v) for r in rows for v in r.values())


def test_records_of_an_empty_frame() -> None:
    pdf = pd.DataFrame({"event_id": ["e1"], "rtt_ms": [80], "detail": ["x"]})
    assert _records(pdf.iloc[0:0]) == []


RETAIN, EVERY = 75_000, 10_000


def test_prune_drops_rows_behind_the_horizon_and_waits_for_the_oldest_kept() -> None:
    watermark = 1_000_000
    keep, next_at = prune_plan([watermark - RETAIN - 1, watermark - RETAIN, watermark - 40_000],
                               watermark, RETAIN, EVERY)
    assert keep == [False, True, True]
    assert next_at == watermark + EVERY  # the oldest kept falls out now: not before the floor
    keep, next_at = prune_plan([watermark - 30_000, watermark], watermark, RETAIN, EVERY)
    assert keep == [True, True]
    assert next_at == watermark - 30_000 + RETAIN  # later than the floor: when it falls out


def test_prune_of_a_steady_trickle_runs_once_per_floor_not_every_batch() -> None:
    """One signal per second, a watermark moving 1 s per batch: the buffer is read and
    rewritten once per `EVERY` of broker time, and never holds more than RETAIN + EVERY."""
    rows, next_at, prunes = [], 0, 0
    for watermark in range(0, 300_000, 1000):
        rows.append(watermark)
        if watermark >= next_at:
            prunes += 1
            keep, next_at = prune_plan(rows, watermark, RETAIN, EVERY)
            rows = [t for t, k in zip(rows, keep, strict=True) if k]
            assert next_at is not None and next_at >= watermark + EVERY
        assert watermark - min(rows) <= RETAIN + EVERY
    assert prunes <= 300_000 // EVERY + 1


def test_prune_of_nothing_left_schedules_nothing() -> None:
    assert prune_plan([1, 2], 1_000_000, RETAIN, EVERY) == ([False, False], None)
