"""Scenario: `lakehouse demo` (the README's `make demo`) runs every job live and reports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from deltalake import DeltaTable
from fixtures_broker import free_port
from kafka_helpers import lakehouse_cli

from pipelines.demo_report import FINAL_STATES
from pipelines.demo_report import outcome_problems as problems_against_truth


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
    assert values["outcomes against ground truth"] == "as expected"


def outcome_problems(root: Path) -> list[str]:
    """The demo's outcomes against its ground truth, read from the files it left."""
    truth = json.loads((root / "demo" / "ground_truth.json").read_text())
    rows = DeltaTable(str(root / "gold" / "help_resolutions")).to_pyarrow_table(
        columns=["help_id", "state", "transition_time"]).to_pylist()
    return problems_against_truth(truth, [r for r in rows if r["state"] in FINAL_STATES])


def _listening(env: dict[str, str]) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", int(env["LAKEHOUSE__BROKER__PORT"]))) == 0
