"""`lakehouse bench resolve`: the closed loop under paced load, request -> RESOLVED_AUTO.

Issue 5's measurement: the help and resolver jobs on one Spark session and the simulator
beside them on this machine, the simulator's reaction delay counted. For each lesson count N,
on a broker of its own: both jobs run continuously while `lakehouse simulate` (a child process
that reads classroom.help.actions and reacts after its seeded reaction delay) paces N lessons at
real time for `duration_s`; then both run until every request is final (or the drain timeout).
By default the first load runs once more before, unreported, so that the JVM's JIT warm-up
falls outside the measured runs (`run_resolve_bench`).

Everything is read back from the run's outputs (pipelines.demo_report): gold.help_tags,
gold.help_resolutions and the simulator's ground truth. Reported: outcomes, fixable faults
auto-resolved, breaches of the ground truth, request -> tag and request -> RESOLVED_AUTO
percentiles, and where the time of each RESOLVED_AUTO case went (`resolution_segments`):

    request -> tag on Kafka -> first action issued -> the fixing action applied by the client
            -> RESOLVED_AUTO (the confirm: healthy evidence for healthy_span_s, then a batch)

*offered* is what the simulator produced per second over its run; *help processed* the help
job's input rows over its summed batch time; batch medians are over batches that read rows.
The CPU table gives each process's average cores busy from the simulator's start until every
case was final (`pipelines.bench.memory.CpuMeter`).
Help share and the quiet end of the run are the demo's (a request the lesson's end cuts off
cannot be confirmed).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deltalake import DeltaTable
from pyspark.sql import SparkSession
from rich.console import Console
from rich.table import Table

from pipelines.bench.bronze import machine_info
from pipelines.bench.help import (
    SPARK_PHASES,
    ProgressLog,
    batch_phases,
    broker_and_spark,
    command_env,
    markdown_table,
    warm_up,
    warmup_setting,
)
from pipelines.bench.memory import CPU_COLUMNS, CpuMeter, CpuSpan, cpu_caption, cpu_cells
from pipelines.config import Settings, load_settings
from pipelines.demo_report import (
    FINAL_STATES,
    RESOLUTIONS_TABLE,
    TAGS_TABLE,
    DemoReport,
    collect_report,
    percentile,
)
from pipelines.io.kafka import caught_up, kafka_end_offsets
from pipelines.io.kafka_admin import ensure_topics
from pipelines.jobs.help import start_help
from pipelines.jobs.resolver import start_resolver
from pipelines.simulator.run import paced_simulate_cmd
from pipelines.transforms.help import HELP_TOPICS

SEGMENTS = ("request -> tag", "tag -> first action", "fixing action -> applied",
            "applied -> RESOLVED_AUTO")


def _ms(value: Any) -> float:
    """A timestamp (aware, or naive UTC) as epoch milliseconds."""
    at = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return at.timestamp() * 1000


def resolution_segments(truth: dict[str, dict], tags: list[dict], finals: list[dict]
                        ) -> dict[str, list[float]]:
    """Seconds per segment (`SEGMENTS`) of every RESOLVED_AUTO case whose fix the ground truth
    recorded. `tags`: gold.help_tags rows (help_id, request_time, tagged_at); `finals`:
    gold.help_resolutions rows in a final state (help_id, state, transition_time); the truth
    holds each case's actions (issued_at_ms, applied_at_ms) and the fixing action."""
    tag_of = {t["help_id"]: t for t in tags}
    out: dict[str, list[float]] = {s: [] for s in SEGMENTS}
    for row in finals:
        t, tag = truth.get(row["help_id"]), tag_of.get(row["help_id"])
        if row["state"] != "RESOLVED_AUTO" or t is None or tag is None:
            continue
        fixer = [a for a in t.get("actions", []) if a["action_id"] == t.get("fixed_by_action_id")]
        if not fixer:
            continue
        requested, tagged = _ms(tag["request_time"]), _ms(tag["tagged_at"])
        first_issued = min(a["issued_at_ms"] for a in t["actions"])
        marks = (requested, tagged, first_issued, fixer[0]["issued_at_ms"], t["fixed_at_ms"],
                 _ms(row["transition_time"]))
        # the gap between the first action and the fixing one (a retry) is not a segment
        spans = (marks[1] - marks[0], marks[2] - marks[1], marks[4] - marks[3],
                 marks[5] - marks[4])
        for name, span in zip(SEGMENTS, spans, strict=True):
            out[name].append(span / 1000)
    return out


def escalation_reasons(truth: dict[str, dict], finals: list[dict]) -> dict[str, Counter[str]]:
    """ESCALATED cases by reason, split by whether the ground truth says the fault was fixable
    (a fixable one escalated is a miss; an unfixable one must escalate). The reason is the
    transition's detail without its parenthesis, digits as N ("total timeout",
    "not confirmed after N attempts", "diagnostics found ...: no playbook")."""
    out: dict[str, Counter[str]] = {"fixable": Counter(), "not fixable": Counter()}
    for row in finals:
        if row["state"] != "ESCALATED":
            continue
        fixable = bool((truth.get(row["help_id"]) or {}).get("fixable"))
        reason = re.sub(r"\d+", "N", str(row.get("detail") or "?").split(" (")[0])
        out["fixable" if fixable else "not fixable"][reason] += 1
    return out


def escalation_line(run: ResolveRun) -> str:
    """One Markdown line: a run's escalations by reason, fixable ones first."""
    parts = []
    for kind, reasons in run.escalations.items():
        listed = ", ".join(f"{reason} {n}" for reason, n in reasons.most_common())
        parts.append(f"{kind}: {listed or 'none'}")
    return f"- {run.classrooms:,} lessons, escalations by reason: " + "; ".join(parts) + "."


@dataclass
class ResolveRun:
    classrooms: int
    report: DemoReport
    segments: dict[str, list[float]]
    offered_rate: float
    help_processed_rate: float
    batch_s: dict[str, list[float]]  # query -> triggerExecution seconds of its data batches
    drain_s: float | None  # after the simulator stopped, until every case was final
    # query -> median seconds per data batch of each of Spark's trigger phases
    phases: dict[str, dict[str, float]] = field(default_factory=dict)
    cpu: CpuSpan | None = None  # simulator start -> every case final (or the drain timeout)
    # "fixable" / "not fixable" (ground truth) -> reason -> ESCALATED cases
    escalations: dict[str, Counter[str]] = field(default_factory=dict)


@dataclass
class ResolveBenchReport:
    started_at: str
    machine: dict[str, str]
    settings: dict[str, object]
    runs: list[ResolveRun] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _rows(path: str, columns: list[str]) -> list[dict]:
    if not DeltaTable.is_deltatable(path):
        return []
    return DeltaTable(path).to_pyarrow_table(columns=columns).to_pylist()


def _load_run(spark: SparkSession, env: dict[str, str], root: Path, classrooms: int,
              duration_s: float, seed: int, console: Console) -> ResolveRun:
    base = load_settings(None, environ=env)
    quiet_end_s = min(base.demo.help_latest_before_end_s, duration_s / 3)
    env = {**env, "LAKEHOUSE_ROOT": str(root),
           "LAKEHOUSE__KAFKA__TOPIC_PREFIX": f"{root.name}.",
           "LAKEHOUSE__SIMULATOR__HELP_LATEST_BEFORE_END_S": str(quiet_end_s)}
    settings = load_settings(None, environ=env)
    ensure_topics(settings.kafka.client_options(), settings.kafka_topic_configs())
    help_job = start_help(spark, settings, once=False)
    resolver = start_resolver(spark, settings, once=False)
    progress = ProgressLog(help=help_job.query, resolver=resolver.query)
    meter, cpu = CpuMeter(), None
    try:
        progress.wait_first()
        truth_path = root / "truth.json"
        console.print(f"load: {classrooms} lessons x {duration_s:g} s at real time, help and "
                      "resolver jobs, closed loop")
        meter.start()
        with (root / "simulate.log").open("w") as log:
            sim = subprocess.Popen(paced_simulate_cmd(classrooms, duration_s, seed, truth_path),
                                   env=env, stdout=log, stderr=subprocess.STDOUT)
        t0 = time.monotonic()
        while sim.poll() is None:
            time.sleep(1)
            progress.poll()
        sim_s = time.monotonic() - t0
        if sim.returncode != 0:
            raise RuntimeError(f"simulate failed ({sim.returncode}); see {root / 'simulate.log'}")
        ends = kafka_end_offsets(settings, [settings.kafka_topic(t) for t in HELP_TOPICS])
        truth = json.loads(truth_path.read_text())
        t_end, drain_s = time.monotonic(), None
        deadline = t_end + settings.resolver.total_timeout_s + 120
        tags_topic = [settings.kafka_topic(settings.help.tags_topic)]
        while time.monotonic() < deadline:
            time.sleep(1)
            progress.poll()
            last = max(progress.seen["resolver"].values(), key=lambda p: p["batchId"])
            if (help_job.sink.tagged_ids >= len(truth) and not resolver.sink.open_cases
                    and any(caught_up(s.get("endOffset"), kafka_end_offsets(settings, tags_topic))
                            for s in last["sources"])):
                drain_s = time.monotonic() - t_end
                break
        cpu = meter.stop()
    finally:
        help_job.stop()
        resolver.stop()
    report = collect_report(spark, settings, truth_path=truth_path,
                            produced=sum(o for parts in ends.values() for o in parts.values()),
                            classrooms=classrooms, duration_s=duration_s, seed=seed,
                            silver_tables=[])
    finals = [r for r in _rows(settings.table_path(RESOLUTIONS_TABLE),
                               ["help_id", "state", "transition_time", "detail"])
              if r["state"] in FINAL_STATES]
    tags = _rows(settings.table_path(TAGS_TABLE), ["help_id", "request_time", "tagged_at"])
    return ResolveRun(
        classrooms=classrooms, report=report,
        segments=resolution_segments(truth, tags, finals),
        escalations=escalation_reasons(truth, finals),
        offered_rate=report.produced / sim_s,
        help_processed_rate=progress.processed_rate("help"),
        batch_s={name: [p["durationMs"].get("triggerExecution", 0) / 1000
                        for p in progress.data_batches(name)] for name in progress.seen},
        drain_s=drain_s,
        phases={name: batch_phases(list(seen.values()), {})
                for name, seen in progress.seen.items()},
        cpu=cpu)


def run_resolve_bench(base: Settings, *, loads: list[int], duration_s: float, seed: int,
                      output: Path | None, console: Console, warmup: bool = True
                      ) -> ResolveBenchReport:
    """Run each load on a broker of its own; print the results; append them to `output`.

    `warmup`: first run the first load once, unreported, on the same Spark session
    (`pipelines.bench.help.warm_up` says why).
    """
    r, h = base.resolver, base.help
    report = ResolveBenchReport(
        started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        machine=machine_info(),
        settings={"help share": base.simulator.help_share,
                  "sample interval": f"{base.simulator.sample_interval_s:g} s",
                  "help trigger_seconds": h.trigger_seconds,
                  "resolver trigger_seconds": r.trigger_seconds, "grace_s": r.grace_s,
                  "healthy_span_s": r.healthy_span_s,
                  "reaction delay": f"{base.simulator.fault_model.reaction_delay_s.min:g}-"
                                    f"{base.simulator.fault_model.reaction_delay_s.max:g} s",
                  "shuffle_partitions": base.spark.shuffle_partitions,
                  "spark.master": base.spark.master,
                  "warm-up": warmup_setting(loads, duration_s, warmup)})
    work = Path(tempfile.mkdtemp(prefix="bench-resolve-"))
    with broker_and_spark(base, work, "bench-resolve") as (env, spark):
        if warmup:
            warm_up(lambda: _load_run(spark, env, work / f"warmup-{loads[0]}", loads[0],
                                      duration_s, seed, console), report.notes, console)
        for i, n in enumerate(loads, 1):  # a run's own root and topics, even if n repeats
            try:
                report.runs.append(_load_run(spark, env, work / f"run{i}-{n}", n, duration_s,
                                             seed, console))
            except Exception as exc:  # record what broke it and go on with the next load
                report.notes.append(f"{n} lessons: failed: {exc!s:.300}")
                console.print(f"[red]{report.notes[-1]}[/red]")
    report.machine["load_after"] = repr(os.getloadavg())
    for table in render(report):
        console.print(table)
    if output is not None:
        append_markdown(report, output, loads, duration_s, seed, warmup)
    return report


def _s(value: float) -> str:
    return "-" if value != value else f"{value:.1f} s"


def _pcts(values: list[float], qs: tuple[float, ...] = (.5, .95)) -> str:
    return " / ".join(_s(percentile(values, q)) for q in qs)


def _batches(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} / {max(values):.1f}" if values else "-"


OUTCOME_COLUMNS = ("lessons", "requests", "tagged, primary right", "auto / self / escalated / open",
                   "fixable auto-resolved", "ground-truth breaches", "request -> tag p50/p95",
                   "request -> RESOLVED_AUTO p50/p95/p99", "offered ev/s", "help processed ev/s",
                   "help batch median/max s", "resolver batch median/max s", "drain")


def outcome_rows(report: ResolveBenchReport) -> list[tuple[str, ...]]:
    rows = []
    for run in report.runs:
        r = run.report
        finals = " / ".join(str(r.outcomes.get(s, 0))
                            for s in ("RESOLVED_AUTO", "RESOLVED_SELF", "ESCALATED"))
        fixable = "-" if r.fixable is None else f"{r.fixable_resolved_auto} of {r.fixable}"
        rows.append((f"{run.classrooms:,}", str(r.help_requests),
                     f"{r.tagged}, {r.tag_accuracy:.0%}", f"{finals} / {r.open_cases}", fixable,
                     str(len(r.outcome_problems)), _pcts(r.tag_latency_s),
                     _pcts(r.resolution_latency_s, (.5, .95, .99)),
                     f"{run.offered_rate:,.0f}", f"{run.help_processed_rate:,.0f}",
                     _batches(run.batch_s.get("help", [])),
                     _batches(run.batch_s.get("resolver", [])),
                     "-" if run.drain_s is None else f"{run.drain_s:.0f} s"))
    return rows


SEGMENT_COLUMNS = ("lessons", "RESOLVED_AUTO cases", *(f"{s} p50/p95" for s in SEGMENTS))


def segment_rows(report: ResolveBenchReport) -> list[tuple[str, ...]]:
    return [(f"{run.classrooms:,}", str(len(run.segments[SEGMENTS[0]])),
             *(_pcts(run.segments[s]) for s in SEGMENTS)) for run in report.runs]


PHASE_COLUMNS = ("lessons", "query", *SPARK_PHASES)


def phase_rows(report: ResolveBenchReport) -> list[tuple[str, ...]]:
    return [(f"{run.classrooms:,}", query,
             *(f"{phases[n]:.2f}" if n in phases else "-" for n in SPARK_PHASES))
            for run in report.runs for query, phases in sorted(run.phases.items())]


RUN_CPU_COLUMNS = ("lessons", *CPU_COLUMNS)


def cpu_rows(report: ResolveBenchReport) -> list[tuple[str, ...]]:
    return [(f"{run.classrooms:,}", *cpu_cells(run.cpu, run.report.produced))
            for run in report.runs]


def render(report: ResolveBenchReport) -> list[Table]:
    tables = []
    for title, columns, rows in (
            ("bench resolve: outcomes and latency under paced load", OUTCOME_COLUMNS,
             outcome_rows(report)),
            ("bench resolve: where a RESOLVED_AUTO case's time went", SEGMENT_COLUMNS,
             segment_rows(report)),
            ("bench resolve: median seconds per data batch, by phase", PHASE_COLUMNS,
             phase_rows(report)),
            ("bench resolve: CPU by process, average cores busy (simulator start -> drain)",
             RUN_CPU_COLUMNS, cpu_rows(report))):
        table = Table(title=title)
        for c in columns:
            table.add_column(c, justify="right")
        for row in rows:
            table.add_row(*row)
        tables.append(table)
    return tables


def append_markdown(report: ResolveBenchReport, output: Path, loads: list[int],
                    duration_s: float, seed: int, warmup: bool = True) -> None:
    """Append this run as its own section (other benches append theirs to the same file)."""
    command = (f"lakehouse bench resolve {' '.join(f'--classrooms {n}' for n in loads)} "
               f"--duration {duration_s:g} --seed {seed}{'' if warmup else ' --no-warmup'}")
    m = report.machine
    lines = [f"## bench resolve, {report.started_at}", "",
             f"Command: `{command_env()}{command}`. Method: module docstring of "
             "`pipelines/bench/resolve.py`.",
             "", "Settings: " + ", ".join(f"{k} {v}" for k, v in report.settings.items()) + ".",
             "", f"Machine: {m['cpu']}, {m['nproc']} CPUs, {m['memory']}; load average before "
             f"{m['load']}, after {m.get('load_after', '?')}; {m['versions']}.", "",
             *markdown_table(OUTCOME_COLUMNS, outcome_rows(report)),
             *(escalation_line(run) for run in report.runs), "",
             "Where each RESOLVED_AUTO case's time went (seconds; a retry's wait between the "
             "first and the fixing action is in no column):", "",
             *markdown_table(SEGMENT_COLUMNS, segment_rows(report)),
             "Median seconds per data batch, by Spark's trigger phases:", "",
             *markdown_table(PHASE_COLUMNS, phase_rows(report)),
             cpu_caption("every case was final", m["nproc"]), "",
             *markdown_table(RUN_CPU_COLUMNS, cpu_rows(report)),
             *(f"- {note}" for note in report.notes)]
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("a") as fh:
        fh.write("\n" + "\n".join(lines).rstrip() + "\n")
