"""`lakehouse bench help`: tagging accuracy on a seeded run, then latency and rate under load.

One broker of its own (memory storage, a free port) and one Spark session for every stage:

1. accuracy: a seeded simulation produced as fast as possible, then `run help --once`; the
   primary tag of every request against the simulator's ground truth (confusion matrix,
   precision and recall per tag);
2. warm-up (unless `--no-warmup`): the first load once, unreported, so the load runs do not
   measure the fresh JVM's JIT compiling Spark's code;
3. load, for each lesson count N: the help job runs continuously while `lakehouse simulate`
   (a child process) paces N lessons at real time (`--rate-multiplier 1`) for `duration_s`;
   then the job runs until every request is tagged. Latency is gold.help_tags' request ->
   tag-on-Kafka time (p50/p95/p99 from the request's event time, and split by tags decided
   when the request arrived (`early`) or when its window closed);
   *offered* is what the simulator produced per second, *processed* the job's input rows over
   its summed batch time, *lag at end* how long after the simulator stopped the job had read
   everything it produced; the CPU table gives each process's average cores busy over the
   run (`pipelines.bench.memory.CpuMeter`).
4. optionally (`--join`) the first load again with `help.engine: join`.

Help share is 0.5 in every run so a short run has enough requests to rank latencies.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shlex
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from deltalake import DeltaTable
from py4j.protocol import Py4JJavaError
from pyspark.errors import PySparkException
from pyspark.sql import SparkSession
from pyspark.sql.streaming import StreamingQuery
from rich.console import Console
from rich.table import Table

from pipelines.bench.bronze import machine_info
from pipelines.bench.memory import CPU_COLUMNS, CpuMeter, CpuSpan, cpu_caption, cpu_cells
from pipelines.broker import EmbeddedBroker, free_port
from pipelines.config import (
    HELP_TAGS,
    NO_ISSUE_TAG,
    HelpEngine,
    ResolverEvidence,
    Settings,
    load_settings,
)
from pipelines.io.kafka import caught_up, kafka_end_offsets
from pipelines.io.kafka_admin import ensure_topics
from pipelines.jobs.help import (
    HELP_TAGS_TABLE,
    help_latency,
    run_help,
    start_help,
    window_state,
)
from pipelines.simulator.run import paced_simulate_cmd, run_simulation
from pipelines.spark import build_spark
from pipelines.transforms.help import HELP_TOPICS

TAGS = (*HELP_TAGS, NO_ISSUE_TAG)


def score_tags(truth: dict[str, str], got: dict[str, str]
               ) -> tuple[Counter[tuple[str, str]], dict[str, tuple[float, float]]]:
    """(confusion counts of (true cause, primary tag), {tag: (precision, recall)}).

    A request with no tag counts as `MISSING`; a tag nobody predicted has precision 1.
    """
    confusion = Counter((cause, got.get(h, "MISSING")) for h, cause in truth.items())
    scores = {}
    for tag in sorted(set(truth.values()) | {t for t in got.values()}):
        tp = confusion[(tag, tag)]
        predicted = sum(n for (_, g), n in confusion.items() if g == tag)
        actual = sum(n for (c, _), n in confusion.items() if c == tag)
        scores[tag] = (tp / predicted if predicted else 1.0, tp / actual if actual else 1.0)
    return confusion, scores


@dataclass
class LoadRun:
    classrooms: int
    engine: str
    requests: int
    tags: int
    accuracy: float
    latency: dict[str, float]
    offered_rate: float
    processed_rate: float
    batch_ms: list[int]
    lag_at_end_s: float | None
    state_rows: int
    # Max state rows in the first and second half of the simulation (by batch time): equal
    # halves mean the window state stays flat (evidence is pruned behind the watermark). State
    # engine: evidence rows and open requests read back from the state while the simulation
    # runs (`WindowStateSampler`); join engine: the query progress's state rows.
    state_rows_halves: tuple[int, int] = (0, 0)
    # Where a data batch's time goes, median seconds: Spark's phases of the trigger (durationMs)
    # and, inside addBatch, the tag sink's (compute = the rules job and collect, kafka, delta).
    phases: dict[str, float] = field(default_factory=dict)
    events: int = 0  # produced on the five topics during the run
    cpu: CpuSpan | None = None  # simulator start -> every request tagged (or the timeout)


SPARK_PHASES = ("latestOffset", "queryPlanning", "addBatch", "walCommit", "commitOffsets",
                "triggerExecution")
SINK_PHASES = ("compute", "kafka", "delta")


def batch_phases(progress: list[dict], sink_timings: dict[int, dict[str, float]]
                 ) -> dict[str, float]:
    """Median seconds per phase over the batches that read rows (sink phases: over the batches
    that reached them; a batch with no tag stops after `compute`)."""
    busy = [p for p in progress if p.get("numInputRows")]
    out = {}
    for name in SPARK_PHASES:
        values = [p["durationMs"][name] / 1000 for p in busy if name in p["durationMs"]]
        if values:
            out[name] = statistics.median(values)
    for name in SINK_PHASES:
        values = [t[name] for p in busy if name in (t := sink_timings.get(p["batchId"], {}))]
        if values:
            out[f"sink {name}"] = statistics.median(values)
    return out


@dataclass
class HelpBenchReport:
    started_at: str
    machine: dict[str, str]
    settings: dict[str, object]
    accuracy: tuple[int, Counter[tuple[str, str]], dict[str, tuple[float, float]]] | None = None
    loads: list[LoadRun] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class ProgressLog:
    """Every progress event of the bench's queries (name -> query), kept by batch id:
    `recentProgress` holds only the last hundred."""

    def __init__(self, **queries: StreamingQuery) -> None:
        self.queries = queries
        self.seen: dict[str, dict[int, dict]] = {name: {} for name in queries}

    def poll(self) -> None:
        """Keep the new progress events; raise a query's failure."""
        for name, query in self.queries.items():
            for p in query.recentProgress:
                self.seen[name].setdefault(p["batchId"], p)
            if query.exception() is not None:
                raise query.exception()

    def wait_first(self) -> None:
        """Until every query ran its first (empty) batch: planned, its Python workers up."""
        while not all(self.seen.values()):
            time.sleep(0.5)
            self.poll()

    def data_batches(self, name: str) -> list[dict]:
        """The query's batches that read rows."""
        return [p for p in self.seen[name].values() if p.get("numInputRows")]

    def processed_rate(self, name: str) -> float:
        """The query's input rows over its data batches' summed time (rows/s; 0 if none)."""
        busy = self.data_batches(name)
        busy_s = sum(p["durationMs"].get("triggerExecution", 0) for p in busy) / 1000
        return sum(int(p["numInputRows"]) for p in busy) / busy_s if busy_s else 0.0


def _truth(path: Path) -> dict[str, str]:
    return {h: t["cause"] for h, t in json.loads(path.read_text()).items()}


def _tags(settings: Settings) -> dict[str, str]:
    path = settings.table_path(HELP_TAGS_TABLE)
    if not DeltaTable.is_deltatable(path):
        return {}
    rows = DeltaTable(path).to_pyarrow_table(columns=["help_id", "primary_tag"]).to_pylist()
    return {r["help_id"]: r["primary_tag"] for r in rows}


def _accuracy_run(spark: SparkSession, settings: Settings, classrooms: int, seed: int,
                  console: Console) -> tuple[int, Counter, dict]:
    ensure_topics(settings.kafka.client_options(), settings.kafka_topic_configs())
    truth_path = Path(settings.storage.path("truth.json"))
    run_simulation(settings, classrooms=classrooms, duration_s=120, seed=seed, progress=False,
                   ground_truth_path=truth_path)
    console.print(f"accuracy: {classrooms} lessons produced; tagging (--once waits for the "
                  "simulated clock, ~2 min)")
    run_help(spark, settings, once=True)
    truth = _truth(truth_path)
    confusion, scores = score_tags(truth, _tags(settings))
    return len(truth), confusion, scores


def _load_run(spark: SparkSession, env: dict[str, str], root: Path, classrooms: int,
              duration_s: float, seed: int, engine: str, console: Console) -> LoadRun:
    env = {**env, "LAKEHOUSE_ROOT": str(root), "LAKEHOUSE__HELP__ENGINE": engine,
           "LAKEHOUSE__KAFKA__TOPIC_PREFIX": f"{root.name}."}
    if engine == HelpEngine.JOIN.value:  # the join engine has no processor to relay from
        env["LAKEHOUSE__RESOLVER__EVIDENCE"] = ResolverEvidence.TOPICS.value
    settings = load_settings(None, environ=env)
    ensure_topics(settings.kafka.client_options(), settings.kafka_topic_configs())
    topics = [settings.kafka_topic(t) for t in HELP_TOPICS]
    job = start_help(spark, settings, once=False)
    watch = ProgressLog(help=job.query)
    watch.wait_first()
    progress = watch.seen["help"]
    truth_path = root / "truth.json"
    log = (root / "simulate.log").open("w")
    console.print(f"load: {classrooms} lessons x {duration_s:g} s at real time, engine {engine}")
    meter = CpuMeter()
    meter.start()
    sim = subprocess.Popen(paced_simulate_cmd(classrooms, duration_s, seed, truth_path), env=env,
                           stdout=log, stderr=subprocess.STDOUT)
    t0, t0_wall = time.monotonic(), time.time()
    sampler = WindowStateSampler(spark, settings.checkpoint_path("help"),
                                 enabled=engine == HelpEngine.STATE.value)
    while sim.poll() is None:
        time.sleep(1)
        watch.poll()
        sampler.poll()
    sim_s = time.monotonic() - t0
    if sim.returncode != 0:
        raise RuntimeError(f"simulate failed ({sim.returncode}); see {root / 'simulate.log'}")
    ends = kafka_end_offsets(settings, topics)
    events = sum(o for parts in ends.values() for o in parts.values())
    truth = _truth(truth_path)
    t_end, lag = time.monotonic(), None
    deadline = t_end + 120 + settings.help.window_before_s + settings.help.evidence_slack_s
    while job.sink.tags < len(truth) and time.monotonic() < deadline:
        time.sleep(1)
        watch.poll()
        if lag is None and any(p["sources"] and caught_up(p["sources"][0].get("endOffset"), ends)
                               for p in progress.values()):
            lag = time.monotonic() - t_end
    cpu = meter.stop()
    job.stop()
    busy = watch.data_batches("help")
    got = _tags(settings)
    if sampler.enabled:
        halves = sampler.halves(sim_start=t0_wall, sim_end=t0_wall + sim_s)
    else:
        halves = _state_halves(progress, sim_start=t0_wall, sim_end=t0_wall + sim_s)
    state = max(halves)
    return LoadRun(
        classrooms=classrooms, engine=engine, requests=len(truth), tags=len(got),
        accuracy=sum(got.get(h) == c for h, c in truth.items()) / max(len(truth), 1),
        latency=help_latency(spark, settings) if got else {},
        offered_rate=events / sim_s, processed_rate=watch.processed_rate("help"),
        batch_ms=[int(p["durationMs"].get("triggerExecution", 0)) for p in busy],
        lag_at_end_s=lag, state_rows=state, state_rows_halves=halves,
        phases=batch_phases(list(progress.values()), job.sink.timings), events=events, cpu=cpu)


def _max_by_half(points: Iterable[tuple[float, int]], *, sim_start: float, sim_end: float
                 ) -> tuple[int, int]:
    """Max value of (wall time, value) points in the simulation's first half, and in its
    second; points outside the simulation count in neither."""
    middle = (sim_start + sim_end) / 2
    out = [0, 0]
    for at, value in points:
        if sim_start <= at <= sim_end:
            half = int(at >= middle)
            out[half] = max(out[half], value)
    return out[0], out[1]


def _state_halves(progress: dict[int, dict], *, sim_start: float, sim_end: float
                  ) -> tuple[int, int]:
    """Max state rows (the query progress's) over the batches of the simulation's first half,
    and of its second."""
    points = ((dt.datetime.fromisoformat(p["timestamp"].replace("Z", "+00:00")).timestamp(),
               sum(int(o.get("numRowsTotal") or 0) for o in p.get("stateOperators") or []))
              for p in progress.values())
    return _max_by_half(points, sim_start=sim_start, sim_end=sim_end)


class WindowStateSampler:
    """Evidence rows and open requests in the help window's state (`window_state`), read
    every `every_s` while the simulation runs.

    Why while it runs: Spark keeps only the last `minBatchesToRetain` (100) state versions, so
    a long run's first half cannot be read back afterwards. A read that fails (no batch
    committed yet) is skipped.
    """

    def __init__(self, spark: SparkSession, checkpoint: str, *, enabled: bool,
                 every_s: float = 10) -> None:
        self.spark, self.checkpoint, self.enabled, self.every_s = (spark, checkpoint, enabled,
                                                                   every_s)
        self.samples: list[tuple[float, int]] = []  # (wall time, rows)
        self._next = time.monotonic() + every_s

    def poll(self) -> None:
        if not self.enabled or time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self.every_s
        try:
            self.samples.append((time.time(), sum(window_state(self.spark, self.checkpoint))))
        except (PySparkException, Py4JJavaError):
            return

    def halves(self, *, sim_start: float, sim_end: float) -> tuple[int, int]:
        """Max rows sampled in the simulation's first half, and in its second."""
        return _max_by_half(self.samples, sim_start=sim_start, sim_end=sim_end)


@contextlib.contextmanager
def broker_and_spark(base: Settings, work: Path, app_name: str, **env_overrides: str
                     ) -> Iterator[tuple[dict[str, str], SparkSession]]:
    """A broker of the bench's own (memory storage, a free port) and a Spark session, both
    stopped at the end; yields the environment that points settings at that broker."""
    env = {**os.environ, "LAKEHOUSE__BROKER__PORT": str(free_port()),
           "LAKEHOUSE__BROKER__STORAGE": "memory://tansu/", "LAKEHOUSE__BROKER__EMBEDDED": "true",
           "LAKEHOUSE_PROFILE": base.profile.value, "LAKEHOUSE_ROOT": str(work / "broker"),
           **env_overrides}
    broker = EmbeddedBroker(load_settings(None, environ=env), environ=env)
    broker.start()
    try:
        spark = build_spark(load_settings(None, environ=env), app_name=app_name)
        try:
            yield env, spark
        finally:
            spark.stop()
    finally:
        broker.stop(kill=True)


def warm_up(run: Callable[[], object], notes: list[str], console: Console) -> None:
    """Run one load before the measured ones and keep nothing of it but a failure note.

    A fresh JVM spends its first minutes JIT-compiling Spark's own code (planner, analyzer,
    janino, py4j): about half a core on two cores, so a load run right after start measures that
    warm-up, not the sustained load (docs/BENCHMARKS.md, 2026-11-27).
    """
    console.print("[dim]warm-up run (not reported)[/dim]")
    try:
        run()
    except Exception as exc:  # the measured runs may still work: note it and go on
        notes.append(f"warm-up failed: {exc!s:.300}")
        console.print(f"[red]{notes[-1]}[/red]")


def warmup_setting(loads: list[int], duration_s: float, warmup: bool) -> str:
    """The warm-up as the report's settings line states it."""
    return f"{loads[0]:,} lessons x {duration_s:g} s, unreported" if warmup else "none"


def run_help_bench(base: Settings, *, loads: list[int], duration_s: float,
                   accuracy_classrooms: int, seed: int, with_join: bool, output: Path | None,
                   console: Console, warmup: bool = True) -> HelpBenchReport:
    """Run the stages on a broker of its own; print the results; append them to `output`.

    `warmup`: before the load runs, run the first load once, unreported (`warm_up`).
    """
    cfg = base.help
    report = HelpBenchReport(
        started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        machine=machine_info(),
        settings={"engine": cfg.engine.value, "trigger_seconds": cfg.trigger_seconds,
                  "watermark_delay_s": cfg.watermark_delay_s,
                  "window": f"-{cfg.window_before_s:g} s / +{cfg.window_after_s:g} s",
                  "tick_interval_s": cfg.tick_interval_s,
                  "sample interval": f"{base.simulator.sample_interval_s:g} s",
                  "early_tags": ", ".join(cfg.early_tags) or "none",
                  "shuffle_partitions": base.spark.shuffle_partitions,
                  "spark.master": base.spark.master,
                  "warm-up": warmup_setting(loads, duration_s, warmup)})
    work = Path(tempfile.mkdtemp(prefix="bench-help-"))
    with broker_and_spark(base, work, "bench-help",
                          LAKEHOUSE__SIMULATOR__HELP_SHARE="0.5") as (env, spark):
        if accuracy_classrooms:
            acc_env = {**env, "LAKEHOUSE_ROOT": str(work / "accuracy"),
                       "LAKEHOUSE__KAFKA__TOPIC_PREFIX": "accuracy."}
            report.accuracy = _accuracy_run(spark, load_settings(None, environ=acc_env),
                                            accuracy_classrooms, seed, console)
        if warmup:
            warm_up(lambda: _load_run(spark, env, work / f"warmup-{loads[0]}", loads[0],
                                      duration_s, seed, cfg.engine.value, console),
                    report.notes, console)
        runs = [(n, cfg.engine.value) for n in loads]
        if with_join:
            runs.append((loads[0], "join"))
        for i, (n, engine) in enumerate(runs, 1):  # own root and topics, even if n repeats
            try:
                report.loads.append(_load_run(spark, env, work / f"run{i}-{n}-{engine}", n,
                                              duration_s, seed, engine, console))
            except Exception as exc:  # record what broke it and go on with the next load
                report.notes.append(f"{n} lessons ({engine}): failed: {exc!s:.300}")
                console.print(f"[red]{report.notes[-1]}[/red]")
    report.machine["load_after"] = repr(os.getloadavg())
    for table in render(report):
        console.print(table)
    if output is not None:
        append_markdown(report, output, loads, duration_s, accuracy_classrooms, seed, with_join,
                        warmup)
    return report


def _ms(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value / 1000:,.1f} s"


def _split(latency: dict[str, float], kind: str) -> str:
    """`n, p50 / p95` of the tags decided early or when their window closed."""
    n = int(latency.get(f"{kind}_tags", 0))
    if not n:
        return "0"
    return f"{n:,}, " + " / ".join(_ms(latency.get(f"{kind}_p{q}_ms")) for q in (50, 95))


def load_rows(report: HelpBenchReport) -> list[tuple[str, ...]]:
    rows = []
    for r in report.loads:
        lat = r.latency
        rows.append((f"{r.classrooms:,}", r.engine, f"{r.tags}/{r.requests}", f"{r.accuracy:.0%}",
                     " / ".join(_ms(lat.get(f"event_p{q}_ms")) for q in (50, 95, 99)),
                     _split(lat, "early"), _split(lat, "closed"),
                     f"{r.offered_rate:,.0f}", f"{r.processed_rate:,.0f}",
                     f"{statistics.median(r.batch_ms) / 1000:.1f} / {max(r.batch_ms) / 1000:.1f}"
                     if r.batch_ms else "-",
                     "-" if r.lag_at_end_s is None else f"{r.lag_at_end_s:.0f} s",
                     f"{r.state_rows:,}",
                     " / ".join(f"{n:,}" for n in r.state_rows_halves)))
    return rows


LOAD_COLUMNS = ("lessons", "engine", "tagged", "primary ok", "latency p50/p95/p99 (event)",
                "early tags: n, p50/p95", "window-closed tags: n, p50/p95", "offered ev/s",
                "processed ev/s", "batch median/max", "lag at end", "state rows (max)",
                "state rows max, 1st / 2nd half")


def confusion_rows(report: HelpBenchReport) -> tuple[list[str], list[tuple[str, ...]]]:
    assert report.accuracy is not None
    _, confusion, scores = report.accuracy
    predicted = [t for t in (*TAGS, "MISSING") if any(g == t for _, g in confusion)]
    rows = []
    for cause in TAGS:
        if not any(c == cause for c, _ in confusion):
            continue
        precision, recall = scores.get(cause, (1.0, 1.0))
        rows.append((cause, *[str(confusion[(cause, g)] or "") for g in predicted],
                     f"{precision:.2f}", f"{recall:.2f}"))
    return ["cause \\ primary tag", *predicted, "precision", "recall"], rows


LOAD_CPU_COLUMNS = ("lessons", "engine", *CPU_COLUMNS)


def cpu_rows(report: HelpBenchReport) -> list[tuple[str, ...]]:
    return [(f"{r.classrooms:,}", r.engine, *cpu_cells(r.cpu, r.events)) for r in report.loads]


def render(report: HelpBenchReport) -> list[Table]:
    tables = []
    if report.accuracy is not None:
        columns, rows = confusion_rows(report)
        table = Table(title=f"bench help: confusion matrix ({report.accuracy[0]} requests)")
        for c in columns:
            table.add_column(c)
        for row in rows:
            table.add_row(*row)
        tables.append(table)
    table = Table(title="bench help: latency request -> tag on Kafka, under paced load")
    for c in LOAD_COLUMNS:
        table.add_column(c, justify="right")
    for row in load_rows(report):
        table.add_row(*row)
    tables.append(table)
    phase_columns, phase_rows = phase_table(report)
    if phase_rows:
        table = Table(title="bench help: median seconds per data batch, by phase")
        for c in phase_columns:
            table.add_column(c, justify="right")
        for row in phase_rows:
            table.add_row(*row)
        tables.append(table)
    table = Table(title="bench help: CPU by process, average cores busy (simulator start -> "
                        "last tag)")
    for c in LOAD_CPU_COLUMNS:
        table.add_column(c, justify="right")
    for row in cpu_rows(report):
        table.add_row(*row)
    tables.append(table)
    return tables


def phase_table(report: HelpBenchReport) -> tuple[list[str], list[tuple[str, ...]]]:
    """One row per load run: Spark's trigger phases, then the tag sink's."""
    names = [*SPARK_PHASES, *(f"sink {n}" for n in SINK_PHASES)]
    rows = [(f"{r.classrooms:,}", r.engine,
             *(f"{r.phases[n]:.2f}" if n in r.phases else "-" for n in names))
            for r in report.loads if r.phases]
    return ["lessons", "engine", *names], rows


def markdown_table(columns: list[str] | tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
            *("| " + " | ".join(row) + " |" for row in rows), ""]


def command_env() -> str:
    """The settings overrides in the environment that change what a bench measures, as the
    prefix of its reproducing command line (empty, or ending in a space)."""
    prefixes = ("LAKEHOUSE__HELP__", "LAKEHOUSE__RESOLVER__", "LAKEHOUSE__SIMULATOR__",
                "LAKEHOUSE__SPARK__MASTER")
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items())
                   if k.startswith(prefixes))
    return f"{env} " if env else ""


def append_markdown(report: HelpBenchReport, output: Path, loads: list[int], duration_s: float,
                    accuracy_classrooms: int, seed: int, with_join: bool,
                    warmup: bool = True) -> None:
    """Append this run as its own section (other benches append theirs to the same file)."""
    command = (f"lakehouse bench help {' '.join(f'--classrooms {n}' for n in loads)} "
               f"--duration {duration_s:g} --accuracy-classrooms {accuracy_classrooms} "
               f"--seed {seed}{' --join' if with_join else ''}"
               f"{'' if warmup else ' --no-warmup'}")
    m = report.machine
    lines = [f"## bench help, {report.started_at}", "",
             f"Command: `{command_env()}{command}`. Method: module docstring of "
             "`pipelines/bench/help.py`.", "",
             "Settings: " + ", ".join(f"{k} {v}" for k, v in report.settings.items()) + ".", "",
             f"Machine: {m['cpu']}, {m['nproc']} CPUs, {m['memory']}; load average before "
             f"{m['load']}, after {m.get('load_after', '?')}; {m['versions']}.", ""]
    if report.accuracy is not None:
        columns, rows = confusion_rows(report)
        lines += [f"Accuracy ({accuracy_classrooms} lessons x 120 s, help share 0.5, seed "
                  f"{seed}, {report.accuracy[0]} requests):", "", *markdown_table(columns, rows)]
    lines += ["Latency under load (help share 0.5, paced at real time):", "",
              *markdown_table(LOAD_COLUMNS, load_rows(report))]
    phase_columns, phase_rows = phase_table(report)
    if phase_rows:
        lines += ["Median seconds per data batch, by phase (Spark's trigger phases; the tag "
                  "sink's phases run inside addBatch):", "",
                  *markdown_table(phase_columns, phase_rows)]
    lines += [cpu_caption("every request was tagged", m["nproc"]), "",
              *markdown_table(LOAD_CPU_COLUMNS, cpu_rows(report))]
    lines += [f"- {note}" for note in report.notes]
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("a") as fh:
        fh.write("\n" + "\n".join(lines).rstrip() + "\n")
