"""`lakehouse`: the one command-line entry point (typer). Every command has `--help`."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pipelines.config import ConfigError, Settings, load_settings

app = typer.Typer(help="classroom-lakehouse: Kafka -> Spark Structured Streaming -> Delta.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
broker_app = typer.Typer(help="The embedded Kafka-compatible broker (tansu).", no_args_is_help=True)
run_app = typer.Typer(help="Run a streaming job.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks (results go to docs/BENCHMARKS.md).",
                        no_args_is_help=True)
app.add_typer(broker_app, name="broker")
app.add_typer(run_app, name="run")
app.add_typer(bench_app, name="bench")
rejects_app = typer.Typer(help="The reject ledger (silver.rejects).", no_args_is_help=True)
app.add_typer(rejects_app, name="rejects")

console = Console(stderr=True)


class _State:
    profile: str | None = None


def settings() -> Settings:
    """Settings for the profile chosen on the command line; config errors end the command."""
    try:
        return load_settings(_State.profile)
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from exc


@app.callback()
def _main(
    profile: Annotated[str | None, typer.Option(
        "--profile", envvar="LAKEHOUSE_PROFILE",
        help="local (embedded default) or cluster.")] = None,
) -> None:
    _State.profile = profile
    settings()  # fail fast on a bad configuration, naming the key


# ---------------------------------------------------------------------------- broker
@broker_app.command("start")
def broker_start() -> None:
    """Start the embedded broker; return once it answers and the configured topics exist."""
    from pipelines.broker import EmbeddedBroker

    status = EmbeddedBroker(settings()).start()
    console.print(status.describe())


@broker_app.command("stop")
def broker_stop() -> None:
    """Stop the embedded broker; leave no process behind."""
    from pipelines.broker import EmbeddedBroker

    status = EmbeddedBroker(settings()).stop()
    console.print(status.describe())


@broker_app.command("status")
def broker_status() -> None:
    """Report whether the embedded broker runs and answers."""
    from pipelines.broker import EmbeddedBroker

    status = EmbeddedBroker(settings()).status()
    console.print(status.describe())
    if not status.running:
        raise typer.Exit(1)


# ---------------------------------------------------------------------------- simulate
@app.command()
def simulate(
    classrooms: Annotated[int, typer.Option(min=1, help="Concurrent classrooms (lessons).")] = 50,
    duration: Annotated[float, typer.Option(min=1, help="Simulated seconds of class.")] = 60,
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same events.")] = 7,
    rate_multiplier: Annotated[float, typer.Option(
        min=0, help="0 = as fast as possible; 1 = real time; 2 = twice real time.")] = 0,
    ground_truth: Annotated[Path | None, typer.Option(
        help="Ground-truth JSON file (help_id -> injected cause); default under the root.")] = None,
    react: Annotated[bool | None, typer.Option(
        "--react/--no-react", help="Close the loop: apply classroom.help.actions (fixes, "
        "diagnostics replies) by the fault model in conf. Default: when paced "
        "(--rate-multiplier > 0).")] = None,
) -> None:
    """Produce the five classroom event streams (with injected faults and bad input)."""
    from pipelines.simulator.run import run_simulation

    cfg = settings()
    summary = run_simulation(cfg, classrooms=classrooms, duration_s=duration, seed=seed,
                             rate_multiplier=rate_multiplier, ground_truth_path=ground_truth,
                             react=react)
    Console().print(summary.render())


# ---------------------------------------------------------------------------- run
@run_app.command("bronze")
def run_bronze(
    once: Annotated[bool, typer.Option(
        "--once", help="Process what is available (availableNow trigger) and stop.")] = False,
) -> None:
    """Land every Kafka record in bronze.events, exactly once."""
    from pipelines.jobs.bronze import run_bronze_job

    result = run_bronze_job(settings(), once=once, console=console)
    console.print(result)


@run_app.command("silver")
def run_silver(
    once: Annotated[bool, typer.Option(
        "--once", help="Process what bronze holds now and stop.")] = False,
) -> None:
    """Validate, deduplicate and enrich into silver tables; rejects into silver.rejects."""
    from pipelines.jobs.silver import run_silver_job

    result = run_silver_job(settings(), once=once, console=console)
    console.print(result)


@run_app.command("help")
def run_help(
    once: Annotated[bool, typer.Option(
        "--once", help="Tag the Help requests in Kafka now (waiting for their windows to "
        "close), print the latency percentiles, and stop.")] = False,
) -> None:
    """Tag every Help request from Kafka directly: classroom.help.tags + gold.help_tags."""
    from pipelines.jobs.help import run_help_job

    result = run_help_job(settings(), once=once, console=console)
    console.print(result)


@run_app.command("resolver")
def run_resolver(
    once: Annotated[bool, typer.Option(
        "--once", help="Run the playbooks of the tags in Kafka now, wait until every case is "
        "resolved or escalated (at most the total timeout), and stop.")] = False,
) -> None:
    """Resolve tagged Help requests: classroom.help.actions/.escalations + gold.help_resolutions."""
    from pipelines.jobs.resolver import run_resolver_job

    result = run_resolver_job(settings(), once=once, console=console)
    console.print(result)


@run_app.command("gold")
def run_gold(
    once: Annotated[bool, typer.Option(
        "--once", help="Process what silver holds now and stop.")] = False,
) -> None:
    """Per classroom, role and minute health into gold.classroom_health_1m."""
    from pipelines.jobs.gold import run_gold_job

    result = run_gold_job(settings(), once=once, console=console)
    console.print(result)


# ---------------------------------------------------------------------------- rejects
@rejects_app.command("replay")
def rejects_replay(
    reason: Annotated[str | None, typer.Option(help="Only this reason code.")] = None,
    since: Annotated[datetime | None, typer.Option(
        help="Only records the broker received at or after this time (UTC).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count, do not produce.")] = False,
) -> None:
    """Re-publish chosen rejects (exact bytes and key) to their topic after a fix."""
    from pipelines.jobs.replay import replay_rejects

    when = since.replace(tzinfo=UTC) if since is not None and since.tzinfo is None else since
    counts = replay_rejects(settings(), reason=reason, since=when, dry_run=dry_run)
    verb = "would replay" if dry_run else "replayed"
    total = sum(counts.values())
    console.print(f"{verb} {total} rejects: " + ", ".join(f"{t}={n}" for t, n in counts.items()))


# ---------------------------------------------------------------------------- bench
@bench_app.command("bronze")
def bench_bronze(
    events: Annotated[int, typer.Option(min=1000, help="AV events to produce.")] = 300_000,
    output: Annotated[Path, typer.Option(help="Markdown file to append results to.")] = Path(
        "docs/BENCHMARKS.md"),
) -> None:
    """librdkafka ceiling vs a plain ingest loop vs the bronze job, on the same data."""
    from pipelines.bench.bronze import run_bronze_bench

    run_bronze_bench(settings(), events=events, output=output, console=console)


WARMUP_HELP = ("First run the first load once, unreported, so that the fresh JVM's JIT "
               "warm-up is not measured.")


@bench_app.command("help")
def bench_help(
    classrooms: Annotated[list[int] | None, typer.Option(
        help="Concurrent lessons of a paced load run (repeat for several; default 50).")] = None,
    duration: Annotated[float, typer.Option(min=20, help="Seconds of each load run.")] = 120,
    accuracy_classrooms: Annotated[int, typer.Option(
        min=0, help="Lessons of the seeded accuracy run (0: skip it).")] = 40,
    seed: Annotated[int, typer.Option()] = 7,
    join: Annotated[bool, typer.Option(
        "--join", help="Also run the stream-stream join variant at the first load.")] = False,
    warmup: Annotated[bool, typer.Option(help=WARMUP_HELP)] = True,
    output: Annotated[Path, typer.Option(help="Markdown file to append results to.")] = Path(
        "docs/BENCHMARKS.md"),
) -> None:
    """Help tagging: confusion matrix of a seeded run, then latency and rate under load."""
    from pipelines.bench.help import run_help_bench

    run_help_bench(settings(), loads=classrooms or [50], duration_s=duration,
                   accuracy_classrooms=accuracy_classrooms, seed=seed, with_join=join,
                   output=output, console=console, warmup=warmup)


@bench_app.command("resolve")
def bench_resolve(
    classrooms: Annotated[list[int] | None, typer.Option(
        help="Concurrent lessons of a paced load run (repeat for several; default 200).")
    ] = None,
    duration: Annotated[float, typer.Option(min=30, help="Seconds of each load run.")] = 120,
    seed: Annotated[int, typer.Option()] = 7,
    warmup: Annotated[bool, typer.Option(help=WARMUP_HELP)] = True,
    output: Annotated[Path, typer.Option(help="Markdown file to append results to.")] = Path(
        "docs/BENCHMARKS.md"),
) -> None:
    """The closed loop under load: help + resolver + reacting simulator, request -> resolved."""
    from pipelines.bench.resolve import run_resolve_bench

    run_resolve_bench(settings(), loads=classrooms or [200], duration_s=duration, seed=seed,
                      output=output, console=console, warmup=warmup)


@bench_app.command("silver")
def bench_silver(
    classrooms: Annotated[int, typer.Option(min=1)] = 100,
    duration: Annotated[float, typer.Option(min=10, help="Simulated seconds.")] = 600,
    warmup: Annotated[bool, typer.Option(
        help="First run the same simulation through bronze and silver once, unreported, so "
             "that the fresh JVM's JIT warm-up is not measured.")] = True,
    repeat: Annotated[int, typer.Option(
        min=1, help="Measured runs, each simulating, landing and validating its own class: "
                    "the ratio of every run and their median.")] = 1,
    output: Annotated[Path, typer.Option(help="Markdown file to append results to.")] = Path(
        "docs/BENCHMARKS.md"),
) -> None:
    """bronze -> silver rate beside the bronze rate in one run, and dedup state per batch."""
    from pipelines.bench.silver import run_silver_bench

    run_silver_bench(settings(), classrooms=classrooms, duration_s=duration, output=output,
                     console=console, warmup=warmup, repeat=repeat)


@bench_app.command("validate")
def bench_validate(
    records: Annotated[int, typer.Option(min=1000, help="Simulated records.")] = 100_000,
    reps: Annotated[int, typer.Option(min=3, help="Repetitions per run (2 warm up).")] = 8,
    rounds: Annotated[int, typer.Option(min=1, help="Rounds of the JVM-option variants.")] = 2,
    plan: Annotated[str, typer.Option(
        help="What to time: contract (the validation), help or resolver (that job's input "
             "plan before its state).")] = "contract",
    output: Annotated[Path, typer.Option(help="Markdown file to append results to.")] = Path(
        "docs/BENCHMARKS.md"),
) -> None:
    """The contract validation's (or a fast-path job's input plan's) CPU per record, with and
    without JIT of huge methods."""
    from pipelines.bench.validate import run_validate_bench

    run_validate_bench(records=records, reps=reps, rounds=rounds, output=output, console=console,
                       plan=plan)


# ---------------------------------------------------------------------------- demo
@app.command()
def demo(
    classrooms: Annotated[int, typer.Option(min=1, help="Concurrent lessons.")] = 200,
    duration: Annotated[float, typer.Option(
        min=30, help="Seconds of class, simulated at real time.")] = 150,
    seed: Annotated[int, typer.Option()] = 7,
    drain_timeout: Annotated[float, typer.Option(
        min=10, help="Longest wait after the simulation for the jobs to finish.")] = 240,
) -> None:
    """The whole system live: broker, simulator, bronze, silver, gold, help, resolver, report."""
    from pipelines.demo import run_demo

    run_demo(settings(), classrooms=classrooms, duration_s=duration, seed=seed,
             console=console, drain_timeout_s=drain_timeout)


# ---------------------------------------------------------------------------- quality
quality_app = typer.Typer(help="Batch contract checks (Great Expectations).",
                          no_args_is_help=True)
app.add_typer(quality_app, name="quality")


@quality_app.command("check")
def quality_check(
    table: Annotated[list[str] | None, typer.Option(
        help="Silver table(s) to check, e.g. silver.av_quality (default: every one).")] = None,
) -> None:
    """Validate silver tables against the contract's GE suites; exit 1 on any failure."""
    from pipelines.transforms.silver import SILVER_TABLES
    from quality.expectations import check_silver_table

    cfg = settings()
    failed = False
    for name in table or list(SILVER_TABLES.values()):
        report = check_silver_table(cfg, name)
        failed |= not report.success
        verdict = "[green]ok[/green]" if report.success else "[red]FAILED[/red]"
        console.print(f"{name}: {report.rows:,} rows, {verdict}")
        for rule, n in sorted(report.failed.items()):
            if n:
                console.print(f"  {rule}: {n:,} records")
    if failed:
        raise typer.Exit(1)


def main() -> None:
    from pipelines.broker import BrokerError
    from pipelines.demo import DemoError
    from pipelines.io.kafka_source import KafkaSourceError
    from pipelines.jobs.replay import ReplayError
    from pipelines.simulator.run import SimulationError

    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)
    except (BrokerError, SimulationError, KafkaSourceError, ConfigError, ReplayError,
            DemoError, FileNotFoundError) as exc:
        console.print(f"error: {exc}", markup=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
