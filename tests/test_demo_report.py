"""The demo report's charts, from a small hand-built report (no Spark, no broker)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.demo_report import DemoReport, write_charts


def _report(**overrides: object) -> DemoReport:
    fields: dict[str, object] = dict(
        classrooms=2, duration_s=60, seed=7, produced=1_000, bronze_rows=1_000,
        silver_rows={"silver.av_quality": 900}, rejects_by_reason={"bad_type": 40},
        duplicates=50, dropped_by_watermark=10, help_requests=4, tagged=4, tag_accuracy=0.75,
        tag_scores={"TEACHER_NETWORK": (1.0, 0.5)},
        outcomes={"RESOLVED_AUTO": 2, "ESCALATED": 1},
        outcomes_by_tag={"TEACHER_NETWORK": {"RESOLVED_AUTO": 2},
                         "VIDEO_FREEZE": {"ESCALATED": 1}},
        open_cases=1, fixable=3, fixable_resolved_auto=2,
        tag_latency_s=[1.5, 2.0, 2.5, 4.0], resolution_latency_s=[6.0, 9.5])
    fields.update(overrides)
    return DemoReport(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("report", [
    pytest.param(_report(), id="some-data"),
    pytest.param(_report(outcomes={}, outcomes_by_tag={}, tag_latency_s=[],
                         resolution_latency_s=[]), id="empty",
                 marks=pytest.mark.filterwarnings("ignore:No artists with labels")),
])
def test_write_charts_renders_both_pngs(report: DemoReport, tmp_path: Path) -> None:
    out_dir = tmp_path / "demo"
    paths = write_charts(report, out_dir)
    assert paths == [out_dir / "latency.png", out_dir / "outcomes.png"]
    for path in paths:
        assert path.stat().st_size > 0
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
