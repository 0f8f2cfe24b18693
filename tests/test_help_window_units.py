"""The Help window processor's pure parts (no Spark): its output rows, and when the evidence
buffer is pruned."""

from __future__ import annotations

from pipelines.transforms.help import EARLY, EVIDENCE_COLUMNS, REQUEST_COLUMNS, STATE_PAIR_SCHEMA
from pipelines.transforms.help_window import _pair_row, prune_plan


def test_pair_rows_follow_the_output_schema_and_carry_the_cut() -> None:
    pair = {**dict.fromkeys(EVIDENCE_COLUMNS), **{c: f"v-{c}" for c in REQUEST_COLUMNS},
            "signal": "mic_muted", "rtt_ms": 900}
    row = _pair_row(pair, early=True)
    names = [f.split(" ")[0] for f in STATE_PAIR_SCHEMA.split(", ")]
    assert list(row.asDict()) == names == [*REQUEST_COLUMNS, *EVIDENCE_COLUMNS, EARLY]
    assert row[EARLY] is True and row["signal"] == "mic_muted" and row["rtt_ms"] == 900
    assert row["help_id"] == "v-help_id" and row["detail"] is None
    assert _pair_row(pair, early=False)[EARLY] is False


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
