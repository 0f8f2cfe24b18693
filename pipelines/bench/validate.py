"""`lakehouse bench validate`: the CPU of the contract validation alone, and what JIT-compiling
huge methods does to it.

The validation (`parse_and_validate`) is the per-record work silver and the Help fast path
share. This bench times it apart from any source or sink: the simulator's records (every
bad-input kind) are cached in Spark, then validated into Spark's `noop` sink several times.
Each variant of the JVM options runs in a fresh process (JVM options are fixed at start), and
the variants alternate over rounds so a noisy neighbour hits both alike:

- `default`: the jobs' options (`pipelines.spark.JAVA_OPTIONS`);
- `no-huge-jit`: the same plus `-XX:+DontCompileHugeMethods`, HotSpot's default, under which
  methods over 8,000 bytecodes are never compiled.

Per run: the median over the measured repetitions (the first `WARMUP_REPS` warm the JIT and
are not counted) of the wall time and of the JVM's CPU time (all threads: tasks, JIT, GC).

`--plan` picks what is timed on the same records: `contract` (the validation alone), or the
input plan of a Help fast-path job before its stateful operator, `help` (candidates,
validation, signals) or `resolver` (candidates, validation, its input rows). Those two read
every record, so their CPU per record is what each job's input costs at a given event rate.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from pipelines.bench.help import command_env
from pipelines.config import Settings, load_settings

if TYPE_CHECKING:
    import psutil
    from pyspark.sql import DataFrame, SparkSession

WARMUP_REPS = 2
VARIANTS = {"default": "", "no-huge-jit": "-XX:+DontCompileHugeMethods"}
PLANS = ("contract", "help", "resolver")
_RESULT_MARK = "VALIDATE-RESULT "


@dataclass(frozen=True)
class ValidateRun:
    """One process's measurement: medians over the repetitions after the warm-up."""

    variant: str
    records: int
    rejects: int
    wall_s: float
    jvm_cpu_s: float
    plan: str = "contract"
    rows_out: int | None = None

    @property
    def cpu_us_per_record(self) -> float:
        return self.jvm_cpu_s / self.records * 1e6


def simulated_records(settings: Settings, records: int, seed: int = 7) -> list[bytes]:
    """The first `records` values of a simulated class with the configured bad-input shares
    (repeated if the class is shorter: validation does not look for duplicates)."""
    from pipelines.simulator.generator import generate_events

    events = generate_events(settings.simulator, 60, 3600, seed, 1_700_000_000_000)
    values = [e.value for e in itertools.islice(events, records)]
    return (values * (records // len(values) + 1))[:records]


def timed_plan(plan: str, settings: Settings) -> Callable[[DataFrame], DataFrame]:
    """The transform `--plan` names, with the configured rules."""
    from pipelines.jobs.help import relays_evidence
    from pipelines.transforms.help import LIVENESS, help_candidates, help_signals
    from pipelines.transforms.resolver import resolver_inputs
    from pipelines.transforms.validate import parse_and_validate

    rules, relay = settings.help.rules, relays_evidence(settings)
    if plan == "contract":
        return parse_and_validate
    if plan == "help":  # with the relay's extra rows when the resolver takes them
        return lambda df: (df.transform(help_candidates(rules, relay=relay))
                             .transform(parse_and_validate, (LIVENESS,) if relay else ())
                             .transform(help_signals(rules, relay=relay)))
    if plan == "resolver":
        return resolver_inputs(rules, settings.kafka_topic(settings.help.tags_topic))
    raise ValueError(f"unknown plan {plan!r}; one of {', '.join(PLANS)}")


def measure(spark: SparkSession, values: list[bytes], reps: int, variant: str = "default",
            plan: str = "contract", settings: Settings | None = None) -> ValidateRun:
    """Run `plan` over `values` `reps` times into the noop sink on `spark`; medians after
    warm-up."""
    from pipelines.bench.memory import jvm_process
    from pipelines.bench.stages import bronze_batch
    from pipelines.transforms.validate import parse_and_validate

    if reps <= WARMUP_REPS:
        raise ValueError(f"reps must exceed the {WARMUP_REPS} warm-up repetitions")
    n = len(values)
    rows = bronze_batch(["classroom.av"] * n, [0] * n, list(range(n)), [1_704_067_200_000] * n,
                        [0] * n, [None] * n, values)
    bronze = spark.createDataFrame(rows).repartition(spark.sparkContext.defaultParallelism)
    bronze = bronze.cache()
    bronze.count()
    rejects = bronze.transform(parse_and_validate).where("reject_reason IS NOT NULL").count()
    timed = bronze.transform(timed_plan(plan, settings or load_settings()))
    rows_out = timed.count()
    jvm = jvm_process()
    walls, cpus = [], []
    try:
        for _ in range(reps):
            cpu = _cpu_seconds(jvm)
            start = time.perf_counter()
            timed.write.format("noop").mode("overwrite").save()
            walls.append(time.perf_counter() - start)
            cpus.append(_cpu_seconds(jvm) - cpu)
    finally:
        bronze.unpersist()
    return ValidateRun(variant, len(values), rejects, statistics.median(walls[WARMUP_REPS:]),
                       statistics.median(cpus[WARMUP_REPS:]), plan, rows_out)


def _cpu_seconds(process: psutil.Process | None) -> float:
    if process is None:
        return float("nan")
    times = process.cpu_times()
    return float(times.user + times.system)


def run_one(variant: str, records: int, reps: int, plan: str = "contract") -> ValidateRun:
    """A variant in this process (the `python -m` entry): its own session and JVM options."""
    from pipelines.spark import build_spark

    settings = load_settings()
    if VARIANTS[variant]:  # after any options of the user's: the last one wins
        conf = dict(settings.spark.extra_conf)
        key = "spark.driver.extraJavaOptions"
        conf[key] = f"{conf.get(key, '')} {VARIANTS[variant]}".strip()
        spark_conf = settings.spark.model_copy(update={"extra_conf": conf})
        settings = settings.model_copy(update={"spark": spark_conf})
    spark = build_spark(settings, app_name=f"bench-validate-{variant}")
    try:
        return measure(spark, simulated_records(settings, records), reps, variant, plan,
                       settings)
    finally:
        spark.stop()


def _run_isolated(variant: str, records: int, reps: int, plan: str) -> ValidateRun:
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.bench.validate", variant, str(records), str(reps),
         plan],
        capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(_RESULT_MARK):
            return ValidateRun(**json.loads(line[len(_RESULT_MARK):]))
    raise RuntimeError(f"bench validate {variant} failed:\n{proc.stderr[-3000:]}")


def run_validate_bench(*, records: int, reps: int, rounds: int, output: Path | None,
                       console: Console, plan: str = "contract") -> list[ValidateRun]:
    if plan not in PLANS:
        raise ValueError(f"unknown plan {plan!r}; one of {', '.join(PLANS)}")
    runs = []
    for round_ in range(rounds):
        for variant in VARIANTS:
            console.print(f"round {round_ + 1}/{rounds}: {variant} ...")
            runs.append(_run_isolated(variant, records, reps, plan))
    table = Table(title=f"bench validate --plan {plan}: {records:,} records x {reps} "
                        "repetitions")
    for column in ("round", "variant", "rejects", "rows out", "wall s", "JVM CPU s",
                   "CPU us/record"):
        table.add_column(column, justify="right")
    for i, run in enumerate(runs):
        table.add_row(str(i // len(VARIANTS) + 1), run.variant, f"{run.rejects:,}",
                      f"{run.rows_out or 0:,}", f"{run.wall_s:.2f}", f"{run.jvm_cpu_s:.2f}",
                      f"{run.cpu_us_per_record:.1f}")
    console.print(table)
    ratios = _ratios(runs)
    console.print("default / no-huge-jit JVM CPU per round: "
                  + ", ".join(f"{r:.2f}x" for r in ratios))
    if output is not None:
        _append_markdown(output, records, reps, runs, ratios, plan)
    return runs


def _ratios(runs: list[ValidateRun]) -> list[float]:
    """Per round: the default's JVM CPU over the no-huge-jit one's."""
    n = len(VARIANTS)
    return [runs[i].jvm_cpu_s / runs[i + 1].jvm_cpu_s for i in range(0, len(runs) - n + 1, n)]


def _append_markdown(output: Path, records: int, reps: int, runs: list[ValidateRun],
                     ratios: list[float], plan: str = "contract") -> None:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    rounds = len(runs) // len(VARIANTS)
    lines = [
        "", f"## bench validate — {when}", "",
        f"Command: `{command_env()}lakehouse bench validate --records {records} --reps {reps} "
        f"--rounds {rounds} --plan {plan}` ({os.cpu_count()} cores; load average after "
        f"{os.getloadavg()[0]:.1f}). Method: module docstring of "
        "`pipelines/bench/validate.py`.", "",
        "| round | variant | rejects | rows out | wall s (median) | JVM CPU s (median) "
        "| CPU us/record |",
        "|---:|---|---:|---:|---:|---:|---:|",
        *(f"| {i // len(VARIANTS) + 1} | {r.variant} | {r.rejects:,} | {r.rows_out or 0:,} "
          f"| {r.wall_s:.2f} | {r.jvm_cpu_s:.2f} | {r.cpu_us_per_record:.1f} |"
          for i, r in enumerate(runs)),
        "", "JVM CPU, default / no-huge-jit, per round: "
        + ", ".join(f"{r:.2f}x" for r in ratios) + ".", "",
    ]
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("a") as handle:
        handle.write("\n".join(lines))


if __name__ == "__main__":
    result = run_one(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    print(_RESULT_MARK + json.dumps(result.__dict__), flush=True)
