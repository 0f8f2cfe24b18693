"""`lakehouse bench silver`: bronze -> silver rate beside the bronze rate, and dedup state size.

One broker, one Spark session: simulate a class (every bad-input kind included), land it in
bronze, then run silver over it; by default all of that once before, unreported (the JVM's
warm-up), then again on topics and tables of its own. Rates exclude Spark start-up: they are
input rows over the summed micro-batch durations from the query progress
(`ops.stream_progress`). The state rows per batch show whether the dedup state stays flat once
the simulated time is longer than the dedup window.
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from deltalake import DeltaTable
from pyspark.sql import SparkSession
from rich.console import Console
from rich.table import Table

from pipelines.bench.help import broker_and_spark, warm_up
from pipelines.bench.memory import jvm_process, vm_hwm_bytes
from pipelines.config import Settings, load_settings
from pipelines.io.kafka_admin import ensure_topics
from pipelines.jobs.bronze import start_bronze
from pipelines.jobs.progress import PROGRESS_TABLE, ProgressRecorder
from pipelines.jobs.runner import await_query
from pipelines.jobs.silver import start_silver
from pipelines.simulator.run import run_simulation


@dataclass
class StageRate:
    """One query's input rows over its summed micro-batch durations; `first_*` is its first
    data batch, which also pays the JVM's warm-up (silver's: compiling the validation plan)."""

    name: str
    rows: int
    busy_s: float
    batches: int
    first_rows: int = 0
    first_busy_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.rows / self.busy_s if self.busy_s else 0.0

    @property
    def steady_rate(self) -> float | None:
        """The rate after the first batch (None with fewer than two batches)."""
        busy = self.busy_s - self.first_busy_s
        return (self.rows - self.first_rows) / busy if self.batches > 1 and busy > 0 else None


def stage_rate(progress: list[dict], name: str) -> StageRate:
    rows = sorted((p for p in progress if p["query_name"] == name and p["input_rows"]),
                  key=lambda p: p["batch_id"])
    first = rows[0] if rows else {"input_rows": 0, "batch_duration_ms": 0}
    return StageRate(name, sum(p["input_rows"] for p in rows),
                     sum(p["batch_duration_ms"] for p in rows) / 1000, len(rows),
                     first["input_rows"], first["batch_duration_ms"] / 1000)


def _or_dash(value: float | None, spec: str) -> str:
    """`value` formatted, or "-" where there is none (a single batch has no steady rate)."""
    return "-" if value is None else format(value, spec)


def steady_ratio(bronze: StageRate, silver: StageRate) -> float | None:
    if bronze.steady_rate and silver.steady_rate is not None:
        return silver.steady_rate / bronze.steady_rate
    return None


def _stage_run(spark: SparkSession, env: dict[str, str], root: Path, classrooms: int,
               duration_s: float) -> tuple[int, list[dict]]:
    """Simulate into topics of the run's own, land them in bronze, run silver over bronze;
    return the events simulated and the run's query progress rows."""
    env = {**env, "LAKEHOUSE_ROOT": str(root), "LAKEHOUSE__KAFKA__TOPIC_PREFIX": f"{root.name}."}
    settings = load_settings(None, environ=env)
    ensure_topics(settings.kafka.client_options(), settings.kafka_topic_configs())
    summary = run_simulation(settings, classrooms=classrooms, duration_s=duration_s, seed=7)
    recorder = ProgressRecorder(spark, settings)
    spark.streams.addListener(recorder)
    try:
        for start in (start_bronze, start_silver):
            job = start(spark, settings, once=True)
            await_query(job.query, until_offsets=job.until_offsets)
        return summary.total, _wait_progress(settings)
    finally:
        spark.streams.removeListener(recorder)


@dataclass
class SilverRun:
    """One measured run: bronze and silver over the same simulated class."""

    events: int
    bronze: StageRate
    silver: StageRate
    state: list[int]  # dedup state rows after each silver data batch

    @property
    def ratio(self) -> float:
        return self.silver.rate / self.bronze.rate if self.bronze.rate else 0.0

    @classmethod
    def from_progress(cls, events: int, progress: list[dict]) -> SilverRun:
        state = [p["state_rows"] for p in sorted(progress, key=lambda p: p["batch_id"])
                 if p["query_name"] == "silver" and p["input_rows"]]
        return cls(events, stage_rate(progress, "bronze"), stage_rate(progress, "silver"), state)


def run_silver_bench(base: Settings, *, classrooms: int, duration_s: float,
                     output: Path | None, console: Console, warmup: bool = True,
                     repeat: int = 1) -> list[SilverRun]:
    """`warmup`: first run the same simulation through bronze and silver once, unreported, on
    the same Spark session (`pipelines.bench.help.warm_up` says why). Measured warm, bronze
    gains more than silver (docs/BENCHMARKS.md, 2026-11-27). `repeat`: measured runs, each on
    topics and tables of its own; this host's speed drifts by a third within minutes, so one
    run's ratio says less than several runs' spread."""
    notes: list[str] = []
    runs: list[SilverRun] = []
    with tempfile.TemporaryDirectory(prefix="bench-silver-") as tmp, \
            broker_and_spark(base, Path(tmp), "bench-silver") as (env, spark):
        if warmup:
            warm_up(lambda: _stage_run(spark, env, Path(tmp) / "warmup", classrooms,
                                       duration_s), notes, console)
        for i in range(repeat):
            events, progress = _stage_run(spark, env, Path(tmp) / f"run{i + 1}", classrooms,
                                          duration_s)
            runs.append(SilverRun.from_progress(events, progress))
        jvm = jvm_process()
        jvm_peak = vm_hwm_bytes(jvm.pid) if jvm is not None else None
    table = Table(title=f"bench silver: {runs[0].events:,} events, {classrooms} classrooms x "
                        f"{duration_s:g} simulated s")
    for column in ("run", "stage", "rows", "batches", "busy s", "rows/s", "after batch 1"):
        table.add_column(column, justify="left" if column in ("run", "stage") else "right")
    for i, run in enumerate(runs, 1):
        for stage in (run.bronze, run.silver):
            table.add_row(str(i), stage.name, f"{stage.rows:,}", str(stage.batches),
                          f"{stage.busy_s:.1f}", f"{stage.rate:,.0f}",
                          _or_dash(stage.steady_rate, ",.0f"))
    console.print(table)
    console.print(f"silver / bronze rate: {_ratios_summary(runs)} (goal >= 0.5); after each "
                  f"stage's first batch: "
                  + ", ".join(_or_dash(steady_ratio(r.bronze, r.silver), ".2f") for r in runs))
    for i, run in enumerate(runs, 1):
        console.print(f"run {i}: dedup state rows per silver batch: {_state_summary(run.state)}")
    console.print(f"Spark JVM peak RSS: {_megabytes(jvm_peak)}")
    if output is not None:
        _append_markdown(output, classrooms, duration_s, runs, warmup, notes, jvm_peak)
    return runs


def _megabytes(size: int | None) -> str:
    return "-" if size is None else f"{size / 2**20:,.0f} MB"


def _ratios_summary(runs: list[SilverRun]) -> str:
    """`0.21` for one run; `0.21, 0.25, 0.20 (median 0.21)` for several."""
    ratios = ", ".join(f"{r.ratio:.2f}" for r in runs)
    if len(runs) == 1:
        return ratios
    return f"{ratios} (median {statistics.median(r.ratio for r in runs):.2f})"


_PROGRESS_COLUMNS = ["query_name", "batch_id", "input_rows", "batch_duration_ms", "state_rows"]


def _wait_progress(settings: Settings, timeout_s: float = 60) -> list[dict]:
    """Progress rows once the (asynchronous) listener has written silver's."""
    import time

    path = settings.table_path(PROGRESS_TABLE)

    def read() -> list[dict]:
        if not DeltaTable.is_deltatable(path):
            return []
        return DeltaTable(path).to_pyarrow_table(columns=_PROGRESS_COLUMNS).to_pylist()

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not any(r["query_name"] == "silver" for r in read()):
        time.sleep(1)
    time.sleep(2)  # the listener may still be writing the last batch
    return read()


def _state_summary(state: list[int]) -> str:
    if not state:
        return "no stateful batches"
    quarters = [state[min(len(state) - 1, i * len(state) // 4)] for i in range(4)] + [state[-1]]
    return (f"{len(state)} batches; at 0/25/50/75/100%: "
            + ", ".join(f"{s:,}" for s in quarters)
            + f"; max {max(state):,}, median {statistics.median(state):,.0f}")


def _env_prefix() -> str:
    """The LAKEHOUSE__ overrides this run used, as they would be typed before the command."""
    overrides = sorted((k, v) for k, v in os.environ.items() if k.startswith("LAKEHOUSE__"))
    return "".join(f"{k}={v} " for k, v in overrides)


def _append_markdown(output: Path, classrooms: int, duration_s: float, runs: list[SilverRun],
                     warmup: bool = True, notes: list[str] | None = None,
                     jvm_peak: int | None = None) -> None:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    repeat = f" --repeat {len(runs)}" if len(runs) > 1 else ""
    steady = ", ".join(_or_dash(steady_ratio(r.bronze, r.silver), ".2f") for r in runs)
    lines = [
        "", f"## bench silver — {when}", "",
        f"Command: `{_env_prefix()}lakehouse bench silver --classrooms {classrooms} "
        f"--duration {duration_s:g}{'' if warmup else ' --no-warmup'}{repeat}` "
        f"({runs[0].events:,} simulated events per run, every bad-input kind; {os.cpu_count()} "
        f"cores; load average after {os.getloadavg()[0]:.1f}; "
        f"{'after an unreported warm-up run of the same' if warmup else 'no warm-up run'}).",
        "",
        "| run | stage | rows | micro-batches | busy s | rows/s | rows/s after batch 1 |",
        "|---:|---|---:|---:|---:|---:|---:|",
        *(f"| {i} | {s.name} | {s.rows:,} | {s.batches} | {s.busy_s:.1f} | {s.rate:,.0f} "
          f"| {_or_dash(s.steady_rate, ',.0f')} |"
          for i, run in enumerate(runs, 1) for s in (run.bronze, run.silver)),
        "", f"Silver / bronze rate in the same run: **{_ratios_summary(runs)}** (goal: 0.5 or "
            f"more); after each stage's first batch (the JVM's warm-up): {steady}.", "",
        *(f"Dedup state rows per silver batch{f' (run {i})' if len(runs) > 1 else ''}: "
          f"{_state_summary(run.state)}." for i, run in enumerate(runs, 1)), "",
        f"Spark JVM peak RSS over the whole bench (warm-up included): {_megabytes(jvm_peak)}.",
        "",
        *(f"- {note}" for note in notes or []),
    ]
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("a") as handle:
        handle.write("\n".join(lines))
