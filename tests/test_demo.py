"""Scenario: `lakehouse demo` (the README's `make demo`) runs every job live and reports."""

from __future__ import annotations

import json
import re
from datetime import UTC
from pathlib import Path

import pytest
from deltalake import DeltaTable
from fixtures_broker import free_port
from kafka_helpers import lakehouse_cli


def report_values(markdown: str) -> dict[str, str]:
    """The `| what | value |` rows of the demo report."""
    return {m.group(1).strip(): m.group(2).strip()
            for m in re.finditer(r"^\| ([^|]+) \| ([^|]+) \|$", markdown, re.MULTILINE)}


def number(value: str) -> int:
    return int(value.replace(",", "").split()[0])


@pytest.mark.e2e
def test_demo_runs_every_job_and_writes_its_report(tmp_path) -> None:
    """As `make demo` does: the demo starts its own embedded broker (a free port here) and
    stops it at the end."""
    env = {"LAKEHOUSE_ROOT": str(tmp_path), "LAKEHOUSE__BROKER__PORT": str(free_port()),
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
    assert "report:" in result.stdout + result.stderr  # the CLI's console is stderr
    assert not _listening(env), "the demo left its broker running"
    assert not outcome_problems(tmp_path)


FINAL = {"RESOLVED_AUTO", "RESOLVED_SELF", "ESCALATED"}


def outcome_problems(root: Path) -> list[str]:
    """Outcomes against the simulator's ground truth: one final state per request, never
    RESOLVED_AUTO while the fault is still active, every unfixable fault ESCALATED."""
    truth = json.loads((root / "demo" / "ground_truth.json").read_text())
    rows = DeltaTable(str(root / "gold" / "help_resolutions")).to_pyarrow_table(
        columns=["help_id", "state", "transition_time"]).to_pylist()
    finals: dict[str, list[dict]] = {}
    for row in rows:
        if row["state"] in FINAL:
            finals.setdefault(row["help_id"], []).append(row)
    problems = []
    for help_id, t in truth.items():
        ends = finals.get(help_id, [])
        if len(ends) != 1:
            problems.append(f"{help_id}: {len(ends)} final states")
            continue
        state, at = ends[0]["state"], ends[0]["transition_time"]
        at_ms = (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp() * 1000
        fixed_ms = t.get("fixed_at_ms")
        if state == "RESOLVED_AUTO" and (fixed_ms is None or fixed_ms > at_ms):
            problems.append(f"{help_id}: RESOLVED_AUTO at {at_ms:.0f} but fixed at {fixed_ms}")
        if t["cause"] != "NO_ISSUE_DETECTED" and not t.get("fixable") and state != "ESCALATED":
            problems.append(f"{help_id}: unfixable {t['cause']} ended {state}")
    return problems


def _listening(env: dict[str, str]) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", int(env["LAKEHOUSE__BROKER__PORT"]))) == 0
