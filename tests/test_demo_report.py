"""The demo report's charts and its outcome check, from small hand-built inputs (no Spark, no
broker)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipelines.demo_report import DemoReport, outcome_problems, summary_rows, write_charts


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


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def test_outcome_problems_names_each_breach_of_the_ground_truth() -> None:
    truth = {
        "ok-auto": {"cause": "TEACHER_NETWORK", "fixable": True, "fixed_at_ms": 10_000},
        "ok-escalated": {"cause": "VIDEO_FREEZE", "fixable": False, "fixed_at_ms": None},
        "ok-no-issue": {"cause": "NO_ISSUE_DETECTED", "fixable": False, "fixed_at_ms": None},
        "early-auto": {"cause": "STUDENT_MIC_MUTED", "fixable": True, "fixed_at_ms": 20_000},
        "never-fixed": {"cause": "STUDENT_MIC_MUTED", "fixable": True, "fixed_at_ms": None},
        "unfixable-self": {"cause": "VIDEO_FREEZE", "fixable": False, "fixed_at_ms": None},
        "two-ends": {"cause": "VIDEO_FREEZE", "fixable": False, "fixed_at_ms": None},
        "open": {"cause": "VIDEO_FREEZE", "fixable": False, "fixed_at_ms": None},
    }
    finals = [
        {"help_id": "ok-auto", "state": "RESOLVED_AUTO", "transition_time": _at(10_500)},
        {"help_id": "ok-escalated", "state": "ESCALATED", "transition_time": _at(9_000)},
        {"help_id": "ok-no-issue", "state": "RESOLVED_SELF", "transition_time": _at(9_000)},
        {"help_id": "early-auto", "state": "RESOLVED_AUTO", "transition_time": _at(19_000)},
        # naive times are UTC (Spark's session time zone)
        {"help_id": "never-fixed", "state": "RESOLVED_AUTO",
         "transition_time": _at(30_000).replace(tzinfo=None)},
        {"help_id": "unfixable-self", "state": "RESOLVED_SELF", "transition_time": _at(1)},
        {"help_id": "two-ends", "state": "ESCALATED", "transition_time": _at(1)},
        {"help_id": "two-ends", "state": "RESOLVED_SELF", "transition_time": _at(2)},
    ]
    problems = outcome_problems(truth, finals)
    assert problems == [
        "early-auto: RESOLVED_AUTO at 19000 but fixed at 20000",
        "never-fixed: RESOLVED_AUTO at 30000 but fixed at None",
        "unfixable-self: unfixable VIDEO_FREEZE ended RESOLVED_SELF",
        "two-ends: 2 final states",
        "open: 0 final states",
    ]
    values = dict(summary_rows(_report(outcome_problems=problems)))
    assert values["outcomes against ground truth"] == (
        "5 problems: early-auto: RESOLVED_AUTO at 19000 but fixed at 20000")
    assert dict(summary_rows(_report()))["outcomes against ground truth"] == "as expected"
