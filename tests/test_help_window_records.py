"""The pandas -> state-value conversion of the Help window processor (pure, no Spark).

What Arrow hands the processor per classroom is a small pandas frame whose long columns turn
into float64 when they hold a null; the state API needs plain ints, floats, strings and None.
"""

from __future__ import annotations

import math

import pandas as pd

from pipelines.transforms.help_window import _records


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
