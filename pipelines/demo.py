"""`lakehouse demo`: the whole system live, in one Spark application, then its report.

1. the embedded broker (started here unless one runs; a fresh memory broker clears old state);
2. every streaming job on one Spark session: bronze, help and resolver from the start, silver
   once bronze exists, gold once the silver tables exist (their sources must exist to start);
3. the simulator as a child process (`lakehouse simulate --rate-multiplier 1`), paced at real
   time so the resolver's actions reach it while the lessons still run, and it reacts;
4. a live line per few seconds (what each query has done);
5. once the simulation ends: each job drains (bronze and silver read everything, every request
   is tagged, every case reaches a final state or the playbook's total timeout), all stop;
6. the report (pipelines/demo_report.py) printed and written as Markdown + PNG under
   `<root>/demo/`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from deltalake import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql.streaming import StreamingQuery
from rich.console import Console

from pipelines.broker import EmbeddedBroker
from pipelines.config import Settings
from pipelines.demo_report import (
    DemoReport,
    collect_report,
    render,
    write_charts,
    write_markdown,
)
from pipelines.io.delta import delta_writer
from pipelines.io.kafka import caught_up, kafka_end_offsets
from pipelines.io.kafka_admin import ensure_topics
from pipelines.jobs.bronze import BRONZE_TABLE, start_bronze
from pipelines.jobs.gold import HEALTH_SOURCES, start_gold
from pipelines.jobs.help import HelpJob, start_help
from pipelines.jobs.progress import ProgressRecorder
from pipelines.jobs.resolver import ResolverJob, start_resolver
from pipelines.jobs.silver import start_silver
from pipelines.simulator.run import paced_simulate_cmd
from pipelines.spark import build_spark
from pipelines.transforms.help import HELP_TOPICS
from pipelines.transforms.playbook import ESCALATED, RESOLVED_AUTO, RESOLVED_SELF

# Queries whose progress goes to ops.stream_progress (help and resolver have their own tables).
_RECORDED = ("bronze", "silver", "gold")
# What a job run leaves under the root; stale once the broker that fed it is gone.
_RUN_STATE = ("_checkpoints", "bronze", "silver", "gold", "ops", "demo")


class DemoError(RuntimeError):
    """A stage of the demo failed; the message says which and where its log is."""


def _reset_stale_state(settings: Settings, console: Console) -> None:
    """A fresh memory-storage broker starts at offset 0: old checkpoints would point past it."""
    root = Path(settings.storage.root)
    stale = [root / name for name in _RUN_STATE if (root / name).exists()]
    if stale:
        console.print(f"[yellow]fresh in-memory broker: clearing the previous run's state in "
                      f"{root.resolve()} ({', '.join(p.name for p in stale)})[/yellow]")
        for path in stale:
            shutil.rmtree(path)


Started = tuple[StreamingQuery, Callable[[], None]]  # a query and what stops it cleanly


@dataclass
class _Jobs:
    """The demo's streaming queries by name; a query that fails is restarted from its
    checkpoint (exactly once makes that safe) up to `max_restarts` times, as a job supervisor
    would: on a loaded 2-core machine a Python worker can miss Spark's 10 s connect-back."""

    console: Console
    max_restarts: int = 3
    queries: dict[str, StreamingQuery] = field(default_factory=dict)
    stoppers: dict[str, Callable[[], None]] = field(default_factory=dict)
    starters: dict[str, Callable[[], Started]] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    help_job: HelpJob | None = None
    resolver_job: ResolverJob | None = None

    def start(self, name: str, starter: Callable[[], Started], *, wait_s: float = 120) -> None:
        """Start a query and wait for its first progress, so Python workers start one query
        at a time instead of all at once."""
        self.starters[name] = starter
        self.queries[name], self.stoppers[name] = starter()
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and self.queries[name].lastProgress is None:
            time.sleep(0.5)
            self.check()

    def check(self) -> None:
        for name, query in list(self.queries.items()):
            exc = query.exception()
            if exc is None:
                continue
            n = self.restarts.get(name, 0) + 1
            if n > self.max_restarts:
                raise DemoError(f"the {name} query failed {n} times; last: {exc}") from exc
            self.restarts[name] = n
            first_line = str(exc).strip().splitlines()[0][:200]
            self.console.print(f"[yellow]{name} failed ({first_line}); restarting it from "
                               f"its checkpoint ({n}/{self.max_restarts})[/yellow]")
            with contextlib.suppress(Exception):
                self.stoppers[name]()
            self.queries[name], self.stoppers[name] = self.starters[name]()

    def last_progress(self, name: str) -> dict | None:
        query = self.queries.get(name)
        return query.lastProgress if query is not None else None

    def stop_all(self) -> None:
        """Stop every query (the newest first); a failure to stop one does not keep the rest."""
        stoppers, self.stoppers = self.stoppers, {}
        for stop in reversed(list(stoppers.values())):
            with contextlib.suppress(Exception):
                stop()


def _start_jobs(spark: SparkSession, settings: Settings, jobs: _Jobs) -> None:
    """Bronze, help and resolver, one after the other."""
    def bronze() -> Started:
        query = start_bronze(spark, settings, once=False).query
        return query, query.stop

    def help_() -> Started:
        job = jobs.help_job = start_help(spark, settings, once=False)
        return job.query, job.stop

    def resolver() -> Started:
        job = jobs.resolver_job = start_resolver(spark, settings, once=False)
        return job.query, job.stop

    for name, starter in (("bronze", bronze), ("help", help_), ("resolver", resolver)):
        jobs.start(name, starter)


def _start_pending(spark: SparkSession, settings: Settings, jobs: _Jobs) -> None:
    """Start silver once bronze exists and gold once every silver health source exists."""
    writer = delta_writer(settings)

    def started(query: StreamingQuery) -> Started:
        return query, query.stop

    if "silver" not in jobs.queries and writer.exists(settings.table_path(BRONZE_TABLE)):
        jobs.start("silver", lambda: started(start_silver(spark, settings, once=False).query),
                   wait_s=0)
    if "gold" not in jobs.queries and all(writer.exists(settings.table_path(t))
                                          for t in HEALTH_SOURCES):
        jobs.start("gold", lambda: started(start_gold(spark, settings, once=False).query),
                   wait_s=0)


def _status_line(jobs: _Jobs, elapsed_s: float, phase: str) -> str:
    """One line: per query its last batch id, input rows and (stateful ones) state rows."""
    parts = [f"[bold]{elapsed_s:4.0f} s[/bold] {phase}"]
    for name in ("bronze", "silver", "gold", "help", "resolver"):
        p = jobs.last_progress(name)
        if p is None:
            parts.append(f"{name} -")
            continue
        state = sum(int(op.get("numRowsTotal") or 0) for op in p.get("stateOperators") or [])
        parts.append(f"{name} #{p['batchId']} {int(p.get('numInputRows') or 0):,}"
                     + (f"/{state:,}" if p.get("stateOperators") else ""))
    help_job = jobs.help_job
    if help_job is not None:
        parts.append(f"tags {help_job.sink.tags}")
    resolver = jobs.resolver_job
    if resolver is not None:
        outcomes = resolver.sink.outcomes()
        auto, self_, escalated = (outcomes.pop(state, 0)
                                  for state in (RESOLVED_AUTO, RESOLVED_SELF, ESCALATED))
        parts.append(f"auto {auto} self {self_} escalated {escalated} "
                     f"open {sum(outcomes.values())}")
    return " | ".join(parts)


def _drained(settings: Settings, jobs: _Jobs, ends: dict, truth_requests: int) -> bool:
    """Bronze read every produced record, silver every bronze version, every request tagged,
    every case final (what the resolver reports as open)."""
    bronze = jobs.last_progress("bronze")
    if bronze is None or not any(caught_up(s.get("endOffset"), ends) for s in bronze["sources"]):
        return False
    silver = jobs.last_progress("silver")
    bronze_path = settings.table_path(BRONZE_TABLE)
    if silver is None or not any(
            caught_up(s.get("endOffset"), {"version": DeltaTable(bronze_path).version()})
            for s in silver["sources"]):
        return False
    help_job = jobs.help_job
    if help_job is not None and help_job.sink.tagged_ids < truth_requests:
        return False
    resolver = jobs.resolver_job
    if resolver is None:
        return True
    tags = kafka_end_offsets(settings, [settings.kafka_topic(settings.help.tags_topic)])
    progress = jobs.last_progress("resolver")
    return (progress is not None and not resolver.sink.open_cases
            and any(caught_up(s.get("endOffset"), tags) for s in progress["sources"]))


def demo_settings(settings: Settings) -> Settings:
    """The demo's trigger overrides (demo.triggers) over streaming.triggers."""
    triggers = {**settings.streaming.triggers, **settings.demo.triggers}
    return settings.model_copy(update={
        "streaming": settings.streaming.model_copy(update={"triggers": triggers})})


def run_demo(settings: Settings, *, classrooms: int, duration_s: float, seed: int,
             console: Console, drain_timeout_s: float = 240) -> DemoReport:
    settings = demo_settings(settings)
    broker, started_here = None, False
    if settings.broker.embedded:
        broker = EmbeddedBroker(settings)
        status = broker.start()
        started_here = not status.already_running
        console.print(status.describe())
        if started_here and settings.broker.storage.startswith("memory://") \
                and settings.storage.is_local:
            _reset_stale_state(settings, console)
    else:
        console.print(f"Kafka: {settings.kafka.bootstrap_servers} (not embedded)")
    ensure_topics(settings.kafka.client_options(), settings.kafka_topic_configs())
    out_dir = Path(settings.storage.path("demo"))
    out_dir.mkdir(parents=True, exist_ok=True)
    truth_path = out_dir / "ground_truth.json"
    with _child_output_to(out_dir / "spark.log"):
        spark = build_spark(settings, app_name="lakehouse-demo")
    jobs = _Jobs(console)
    sim: subprocess.Popen | None = None
    try:
        console.rule("[bold]1. streaming jobs on one Spark session")
        spark.sparkContext.setLogLevel("ERROR")  # the demo prints its own progress
        console.print(f"Spark's own output: {out_dir / 'spark.log'}")
        recorder = ProgressRecorder(spark, settings, query_names=_RECORDED)
        spark.streams.addListener(recorder)
        _start_jobs(spark, settings, jobs)
        console.print("bronze, help and resolver are running; silver and gold start once their "
                      "source tables exist")

        console.rule(f"[bold]2. simulate {classrooms} classrooms x {duration_s:g} s at real time")
        log_path = out_dir / "simulate.log"
        # At most a third of a short run, so it still has Help requests.
        quiet_end_s = min(settings.demo.help_latest_before_end_s, duration_s / 3)
        sim_env = {**os.environ,
                   "LAKEHOUSE__SIMULATOR__HELP_LATEST_BEFORE_END_S": str(quiet_end_s)}
        with log_path.open("w") as log:
            sim = subprocess.Popen(paced_simulate_cmd(classrooms, duration_s, seed, truth_path),
                                   stdout=log, stderr=subprocess.STDOUT, env=sim_env)
        t0 = time.monotonic()
        last_line = 0.0
        while sim.poll() is None:
            time.sleep(1)
            jobs.check()
            _start_pending(spark, settings, jobs)
            if time.monotonic() - last_line >= 5:
                last_line = time.monotonic()
                console.print(_status_line(jobs, last_line - t0, "simulating"))
        if sim.returncode != 0:
            raise DemoError(f"the simulator failed (exit {sim.returncode}); see {log_path}")

        console.rule("[bold]3. drain: every record read, every request tagged and resolved")
        truth_requests = len(json.loads(truth_path.read_text())) if truth_path.exists() else 0
        ends = kafka_end_offsets(settings, [settings.kafka_topic(t) for t in HELP_TOPICS])
        deadline = time.monotonic() + drain_timeout_s
        while time.monotonic() < deadline:
            time.sleep(1)
            jobs.check()
            _start_pending(spark, settings, jobs)
            if _drained(settings, jobs, ends, truth_requests):
                break
            if time.monotonic() - last_line >= 5:
                last_line = time.monotonic()
                console.print(_status_line(jobs, last_line - t0, "draining"))
        else:
            console.print(f"[yellow]not fully drained after {drain_timeout_s:.0f} s; the "
                          "report shows what landed[/yellow]")
        jobs.stop_all()
        _await_recorder(jobs, recorder)
        spark.streams.removeListener(recorder)

        console.rule("[bold]4. report")
        produced = sum(o for parts in ends.values() for o in parts.values())
        report = collect_report(spark, settings, truth_path=truth_path, produced=produced,
                                classrooms=classrooms, duration_s=duration_s, seed=seed,
                                silver_tables=_silver_tables())
        report.charts = write_charts(report, out_dir)
        md = write_markdown(report, out_dir)
        console.print(render(report))
        console.print(f"report: {md} (charts: {', '.join(p.name for p in report.charts)})")
        return report
    finally:
        if sim is not None and sim.poll() is None:
            sim.terminate()
            sim.wait(10)
        jobs.stop_all()
        spark.stop()
        if broker is not None and started_here:
            broker.stop()


@contextlib.contextmanager
def _child_output_to(path: Path) -> Iterator[None]:
    """Processes started inside the block (Spark's JVM, and through it every Python worker)
    write their stdout and stderr to `path`: Spark's logs and PySpark's stateful workers'
    start-up lines would bury the demo's own lines (this process keeps its own stderr)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for fd in saved:
            os.dup2(log, fd)
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        os.close(log)


def _await_recorder(jobs: _Jobs, recorder: ProgressRecorder, timeout_s: float = 60) -> None:
    """The listener bus delivers progress events asynchronously: wait until the recorder has
    handled each recorded query's last batch (the report reads its duplicate counts)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pending = [name for name in _RECORDED
                   if (p := jobs.last_progress(name)) is not None
                   and recorder.handled.get(name, -1) < p["batchId"]]
        if not pending:
            return
        time.sleep(0.5)


def _silver_tables() -> list[str]:
    from pipelines.transforms.silver import SILVER_TABLES

    return list(SILVER_TABLES.values())
