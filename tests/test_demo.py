"""Scenario: `lakehouse demo` (the README's `make demo`) runs every job live and reports."""

from __future__ import annotations

import re

import pytest
from kafka_helpers import lakehouse_cli, topic_prefix_env


def report_values(markdown: str) -> dict[str, str]:
    """The `| what | value |` rows of the demo report."""
    return {m.group(1).strip(): m.group(2).strip()
            for m in re.finditer(r"^\| ([^|]+) \| ([^|]+) \|$", markdown, re.MULTILINE)}


def number(value: str) -> int:
    return int(value.replace(",", "").split()[0])


@pytest.mark.e2e
def test_demo_runs_every_job_and_writes_its_report(broker, tmp_path) -> None:
    env = {**broker.environ, "LAKEHOUSE_ROOT": str(tmp_path),
           "LAKEHOUSE__KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap, **topic_prefix_env(),
           "LAKEHOUSE__SIMULATOR__HELP_SHARE": "0.5"}
    result = lakehouse_cli(["demo", "--classrooms", "20", "--duration", "60",
                            "--drain-timeout", "300"], env, timeout=1500)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    out = tmp_path / "demo"
    values = report_values((out / "report.md").read_text())
    for chart in ("latency.png", "outcomes.png"):
        assert (out / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert number(values["events produced (5 topics)"]) > 5_000
    assert values["events produced (5 topics)"] == values["bronze.events rows"]
    assert values["bronze = accepted + rejected + duplicates + dropped"] == "yes"
    requests = number(values["Help requests (ground truth)"])
    assert requests >= 3
    assert number(values["tagged"]) == requests
    assert number(values["still open at the end"]) == 0
    finals = sum(number(values[s]) for s in ("RESOLVED_AUTO", "RESOLVED_SELF", "ESCALATED"))
    assert finals == requests
    assert "report:" in result.stdout and "demo/report.md" in result.stdout
