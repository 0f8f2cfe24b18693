"""Gold classroom health: windows per classroom, role and minute, finalised by the watermark."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from pipelines.jobs.gold import HEALTH_TABLE, start_gold
from pipelines.jobs.runner import await_query
from pipelines.transforms.gold import health_score

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def av_row(minute: int, second: int, role: str, loss: float, rtt: float, freezes: int = 0,
           direction: str = "down") -> dict:
    return {"classroom_id": "c1", "lesson_id": "l1", "role": role, "event_type": "av.quality",
            "event_time": T0 + timedelta(minutes=minute, seconds=second),
            "direction": direction, "media": "video", "packet_loss_pct": loss,
            "rtt_ms": rtt, "freeze_count": freezes}


def signal_row(minute: int, role: str, event_type: str) -> dict:
    return {"classroom_id": "c1", "lesson_id": "l1", "role": role, "event_type": event_type,
            "event_time": T0 + timedelta(minutes=minute, seconds=30), "rtt_ms": 50.0}


def write(settings, table: str, rows: list[dict]) -> None:
    write_deltalake(settings.table_path(table), pa.Table.from_pylist(rows), mode="append")


def test_health_score_penalises_each_problem(spark) -> None:
    from pyspark.sql import functions as F

    row = spark.range(1).select(
        health_score(F.lit(0.0), F.lit(80.0), F.lit(0), F.lit(0), F.lit(0), F.lit(0)).alias("ok"),
        health_score(F.lit(10.0), F.lit(300.0), F.lit(2), F.lit(1), F.lit(0), F.lit(0))
        .alias("bad")).first()
    assert row.ok == 100.0
    assert row.bad == pytest.approx(100 - 20 - 10 - 10 - 15)


@pytest.mark.e2e
def test_gold_aggregates_finished_minutes_only(spark, broker, tmp_path) -> None:
    settings = broker.make_settings(tmp_path, {"LAKEHOUSE__GOLD__WATERMARK_S": "60"})
    write(settings, "silver.av_quality", [
        av_row(0, 5, "teacher", 1.0, 100.0), av_row(0, 25, "teacher", 3.0, 300.0, freezes=2),
        av_row(0, 45, "student", 0.0, 80.0),
        av_row(1, 10, "teacher", 20.0, 900.0),
    ])
    write(settings, "silver.signal", [signal_row(1, "teacher", "signal.disconnect"),
                                      signal_row(1, "teacher", "signal.heartbeat")])
    # A later sample moves the event-time watermark past minutes 0 and 1, not past minute 5.
    write(settings, "silver.av_quality", [av_row(5, 0, "student", 0.0, 50.0)])

    job = start_gold(spark, settings, once=True)
    await_query(job.query, until_offsets=job.until_offsets, settle_s=20)

    rows = {(r["role"], r["minute"].minute): r for r in
            DeltaTable(settings.table_path(HEALTH_TABLE)).to_pyarrow_table().to_pylist()}
    assert set(rows) == {("teacher", 0), ("student", 0), ("teacher", 1)}
    first = rows[("teacher", 0)]
    assert first["p95_packet_loss_pct"] == 3.0 and first["mean_rtt_ms"] == 200.0
    assert first["freezes"] == 2 and first["events"] == 2 and first["disconnects"] == 0
    second = rows[("teacher", 1)]
    assert second["disconnects"] == 1 and second["events"] == 3
    assert second["health_score"] < first["health_score"] < rows[("student", 0)]["health_score"]
    assert rows[("student", 0)]["health_score"] == 100.0
