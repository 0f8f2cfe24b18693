"""`lakehouse bench bronze`: the broker's and clients' ceiling vs a plain loop vs the bronze job.

All figures come from one run on one broker and the same records, so the ratios hold even on a
busy or slow machine where the absolute rates do not. Stages:

1. raw consume with librdkafka (confluent-kafka) and kafka-python: what broker and client deliver;
2. a plain single-process loop, confluent-kafka -> Arrow -> delta-rs, what a user might write
   instead of Spark;
3. the bronze job (`start_bronze`, `--once`) on an already-built Spark session, for a few
   `kafka.max_records_per_trigger` caps; its rate comes from the query progress, so Spark's
   start-up is not in it;
4. optionally a profiled run that splits a micro-batch into read / collect / Delta write.

The bench starts its own memory-storage broker on a free port with a throw-away storage root and
removes both at the end, also on error.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import socket
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pyspark.sql import SparkSession
from rich.console import Console
from rich.table import Table

from pipelines.bench.events import AV_TOPIC
from pipelines.bench.memory import SparkMemory, WorkerSampler, spark_memory
from pipelines.bench.profile import ProfileResult, profile_bronze_batches, sum_phases
from pipelines.bench.stages import BenchError, StageResult, run_isolated
from pipelines.config import DeltaEngine, KafkaSourceKind, Settings, load_settings

DEFAULT_TRIGGER_CAPS = (100_000, 200_000)
GOAL_VS_PLAIN = 0.5  # bronze >= 0.5x the plain loop
GOAL_RATE = 30_000  # bronze >= 30,000 events/s

_HEADER = """# Benchmarks

Each section below is one run of a `lakehouse bench ...` command, appended by the command itself.

## Method: `lakehouse bench bronze`

One run, one embedded tansu broker (memory storage, a free loopback port, a throw-away storage
root) and one set of records: N synthetic `av.quality` events (~430 bytes of JSON, contract v1,
key = classroom_id) produced to `classroom.av` (4 partitions) with confluent-kafka, large batches
(`linger.ms=50`, `batch.size=1000000`) and every delivery report checked. Then, on those records:

- **librdkafka** / **kafka-python**: a bare consumer assigned to every partition from the first
  offset, counting records until it has seen N (plus their value sizes). The ceiling of what the
  broker and a Python client deliver here. Whether kafka-python uses the `crc32c` C extension is
  noted (without it, CRC checks dominate its consume time).
- **plain loop**: one process, no Spark: confluent-kafka -> Python lists -> an Arrow table with
  bronze.events' columns -> `deltalake.write_deltalake` append every 100,000 records, partitioned
  like bronze. What a user might write instead of Spark.
- **bronze**: `start_bronze(spark, settings, once=True)` on a Spark session built *before* the
  clock starts, with its own fresh storage root, once per `kafka.max_records_per_trigger` cap.
  *sustained* = sum of numInputRows / sum of `durationMs.triggerExecution` over the micro-batches
  with data; *wall* = N / (end of the last such batch - start of the first). Afterwards the bronze
  table must hold exactly N rows.
- **profile** (one cap): the same source and transform with a foreachBatch timing
  `count()` (Python source read on the executors + Arrow into the JVM), `toArrow()` (read again +
  transform + collect to the driver) and `write_deltalake`; plus `read_ranges` (the source's
  executor code) run without Spark.

Each non-Spark stage runs in a fresh process, so its peak RSS is its own. Spark memory: the Python
driver's `ru_maxrss`, the JVM's `VmHWM` (/proc), and the sampled peak of all Python workers.
Every stage stops with an error when it sees fewer records than were produced. Rates are
events per second. The machine may be shared: the load average is recorded with each run.
"""


@dataclass
class BronzeRun:
    """One bronze `--once` run over the whole backlog at one trigger cap."""

    max_records_per_trigger: int
    rows: int
    batches: int
    batch_seconds: float  # sum of triggerExecution over batches with data
    wall_seconds: float  # first data batch start -> last data batch end
    phases_ms: dict[str, int]
    table_rows: int

    @property
    def rate(self) -> float:
        """Sustained rate: rows over the summed micro-batch durations."""
        return self.rows / self.batch_seconds if self.batch_seconds > 0 else 0.0

    @property
    def wall_rate(self) -> float:
        return self.rows / self.wall_seconds if self.wall_seconds > 0 else 0.0


@dataclass
class BronzeBenchReport:
    """Everything one `bench bronze` run measured."""

    events: int
    started_at: str
    produce: StageResult
    librdkafka: StageResult
    kafka_python: StageResult
    plain: StageResult
    bronze: list[BronzeRun]
    memory: SparkMemory
    machine: dict[str, str]
    profile: ProfileResult | None = None
    source_read: StageResult | None = None
    load_after: str = ""
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------ helpers
def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _bench_settings(profile: str, root: Path, port: int, **extra: str) -> Settings:
    """Settings for the bench's own broker and a storage root of its own."""
    env = {**os.environ, "LAKEHOUSE_ROOT": str(root), "LAKEHOUSE__BROKER__PORT": str(port),
           "LAKEHOUSE__BROKER__EMBEDDED": "true",
           "LAKEHOUSE__BROKER__STORAGE": "memory://tansu/", **extra}
    return load_settings(profile, environ=env)


def _offsets(settings: Settings, topic: str) -> dict[str, dict[str, int]]:
    """Each partition's true end offset (tansu's ListOffsets(latest) is corrected there)."""
    from pipelines.io.kafka import kafka_end_offsets

    return kafka_end_offsets(settings, [topic])


def _count(starts: dict[str, dict[str, int]], ends: dict[str, dict[str, int]]) -> int:
    return sum(end - starts.get(t, {}).get(p, 0) for t, parts in ends.items()
               for p, end in parts.items())


def _load() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def machine_info() -> dict[str, str]:
    """What the figures depend on: CPUs, memory, load, and the versions in play."""
    import confluent_kafka
    import deltalake
    import kafka
    import psutil
    import pyarrow
    import pyspark

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {
        "cpu": cpu,
        "nproc": str(usable),
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "load (1/5/15 min) at start": _load(),
        "versions": (f"Python {platform.python_version()}, PySpark {pyspark.__version__}, "
                     f"librdkafka {confluent_kafka.libversion()[0]}, "
                     f"kafka-python {kafka.__version__}, deltalake {deltalake.__version__}, "
                     f"pyarrow {pyarrow.__version__}"),
    }


def _parse_ts(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def run_bronze_once(spark: SparkSession, settings: Settings, expected: int,
                    console: Console | None = None) -> BronzeRun:
    """Bronze `--once` over the backlog; its rates from the query progress; rows verified."""
    from deltalake import DeltaTable

    from pipelines.jobs.bronze import BRONZE_TABLE, start_bronze
    from pipelines.jobs.runner import await_query

    job = start_bronze(spark, settings, once=True)
    try:
        await_query(job.query, console=console, until_offsets=job.until_offsets, poll_s=0.2)
    finally:
        if job.query.isActive:
            job.query.stop()
    progress = [p for p in job.query.recentProgress if int(p["numInputRows"]) > 0]
    rows = sum(int(p["numInputRows"]) for p in progress)
    batch_ms = sum(int(p["durationMs"]["triggerExecution"]) for p in progress)
    wall = 0.0
    if progress:
        first = min(_parse_ts(p["timestamp"]) for p in progress)
        last = max(_parse_ts(p["timestamp"])
                   + dt.timedelta(milliseconds=int(p["durationMs"]["triggerExecution"]))
                   for p in progress)
        wall = (last - first).total_seconds()
    table_rows = DeltaTable(settings.table_path(BRONZE_TABLE)).count()
    if rows != expected or table_rows != expected:
        raise BenchError(f"bronze (cap {settings.kafka.max_records_per_trigger}) read {rows} "
                         f"rows and its table holds {table_rows}; expected {expected}")
    return BronzeRun(settings.kafka.max_records_per_trigger, rows, len(progress),
                     batch_ms / 1000, wall, sum_phases(progress), table_rows)


def warm_up(spark: SparkSession, settings: Settings, *, batches: int = 2,
            timeout_s: float = 300) -> tuple[int, float]:
    """Run bronze for a few small batches and stop; return (rows, seconds).

    Keeps one-off costs out of the measured runs: Python worker start-up and imports, JIT, the
    first Delta commit.
    """
    import time

    from pipelines.jobs.bronze import start_bronze

    started = time.perf_counter()
    job = start_bronze(spark, settings, once=True)
    try:
        while job.query.isActive and time.perf_counter() - started < timeout_s:
            done = [p for p in job.query.recentProgress if int(p["numInputRows"]) > 0]
            if len(done) >= batches:
                break
            job.query.awaitTermination(0.2)
    finally:
        job.query.stop()
    exc = job.query.exception()
    if exc is not None:
        raise BenchError(f"the warm-up bronze run failed: {exc}")
    rows = sum(int(p["numInputRows"]) for p in job.query.recentProgress)
    return rows, time.perf_counter() - started


# ------------------------------------------------------------------------------ the bench
def run_bronze_bench(settings: Settings, *, events: int = 300_000, output: Path | None = None,
                     console: Console | None = None, spark: SparkSession | None = None,
                     trigger_caps: Sequence[int] | None = None, profile: bool = True
                     ) -> BronzeBenchReport:
    """Run every stage on one fresh broker; print the table; append it to `output` if given.

    `spark`: an existing session to reuse (tests); otherwise one is built before the bronze
    stage and stopped at the end. `trigger_caps`: the `kafka.max_records_per_trigger` values to
    run bronze with (default 100k and 200k).
    """
    console = console or Console(stderr=True)
    if settings.kafka.source is not KafkaSourceKind.PYTHON or (
            settings.delta.engine is not DeltaEngine.DELTA_RS):
        raise BenchError("bench bronze measures the local stack (Python Kafka source, delta-rs); "
                         "run it with --profile local")
    caps = list(dict.fromkeys(trigger_caps or DEFAULT_TRIGGER_CAPS))
    workdir = Path(tempfile.mkdtemp(prefix="lakehouse-bench-"))
    port = _free_port()
    profile_name = settings.profile.value
    broker_settings = _bench_settings(profile_name, workdir / "broker", port)
    machine = machine_info()
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")

    from pipelines.broker import EmbeddedBroker

    broker = EmbeddedBroker(broker_settings)
    own_spark = spark is None
    notes: list[str] = []
    try:
        console.print(f"[bold]bench bronze[/bold]: {events:,} events, broker "
                      f"{broker_settings.kafka.bootstrap_servers}, work dir {workdir}")
        broker.start()
        options = broker_settings.kafka.client_options()
        starts = _offsets(broker_settings, AV_TOPIC)

        produce = run_isolated("produce_av", client_options=options, topic=AV_TOPIC, n=events)
        ends = _offsets(broker_settings, AV_TOPIC)
        if _count(starts, ends) != events:
            raise BenchError(f"{events} records delivered but the broker's offsets span "
                             f"{_count(starts, ends)}")
        console.print(f"produced {produce.records:,} in {produce.seconds:.1f}s")

        raw = dict(client_options=options, starts=starts, n=events)
        librdkafka = run_isolated("consume_librdkafka", **raw)
        console.print(f"librdkafka: {librdkafka.rate:,.0f}/s")
        kafka_python = run_isolated("consume_kafka_python", **raw)
        console.print(f"kafka-python: {kafka_python.rate:,.0f}/s")
        plain_path = str(workdir / "plain" / "bronze_events")
        plain = run_isolated("plain_ingest_loop", table_path=plain_path, **raw)
        _check_table(plain_path, events, "plain loop")
        console.print(f"plain loop: {plain.rate:,.0f}/s")

        bronze_settings = [_bench_settings(profile_name, workdir / f"bronze-{cap}", port,
                                           LAKEHOUSE__KAFKA__MAX_RECORDS_PER_TRIGGER=str(cap))
                           for cap in caps]
        if spark is None:
            from pipelines.spark import build_spark

            console.print("building the Spark session (not timed)")
            spark = build_spark(bronze_settings[0], app_name="lakehouse-bench")
        runs: list[BronzeRun] = []
        with WorkerSampler() as sampler:
            warm_cap = max(1, min(20_000, events // 10))
            warm_rows, warm_s = warm_up(spark, _bench_settings(
                profile_name, workdir / "warm-up", port,
                LAKEHOUSE__KAFKA__MAX_RECORDS_PER_TRIGGER=str(warm_cap)))
            notes.append(f"Not timed: a warm-up bronze run ({warm_rows:,} rows in 2 batches of "
                         f"{warm_cap:,}, {warm_s:.1f}s) before the measured runs, so Python "
                         "worker start-up and the first-query costs are left out.")
            for cfg in bronze_settings:
                run = run_bronze_once(spark, cfg, events, console=console)
                console.print(f"bronze cap {run.max_records_per_trigger:,}: "
                              f"{run.rate:,.0f}/s sustained, {run.wall_rate:,.0f}/s wall")
                runs.append(run)
        memory = spark_memory(sampler)

        profiled = source_read = None
        if profile:
            cfg = _bench_settings(profile_name, workdir / "profile", port,
                                  LAKEHOUSE__KAFKA__MAX_RECORDS_PER_TRIGGER=str(caps[0]))
            console.print(f"profiling micro-batches (cap {caps[0]:,})")
            profiled = profile_bronze_batches(spark, cfg)
            if profiled.rows != events:
                raise BenchError(f"the profiled run read {profiled.rows} rows, not {events}")
            source_read = run_isolated("source_read", client_options=options, starts=starts,
                                       ends=ends, tasks=spark.sparkContext.defaultParallelism)

        report = BronzeBenchReport(
            events=events, started_at=started_at, produce=produce, librdkafka=librdkafka,
            kafka_python=kafka_python, plain=plain, bronze=runs, memory=memory,
            machine={**machine, "spark master": bronze_settings[0].spark.master},
            profile=profiled, source_read=source_read, load_after=_load(), notes=notes)
    finally:
        try:
            if own_spark and spark is not None:
                spark.stop()
        finally:
            try:
                broker.stop()
            finally:
                shutil.rmtree(workdir, ignore_errors=True)

    console.print(render_table(report))
    if report.profile is not None:
        console.print(render_profile(report))
    if output is not None:
        append_markdown(report, output)
        console.print(f"appended to {output}")
    return report


def _check_table(path: str, expected: int, what: str) -> None:
    from deltalake import DeltaTable

    rows = DeltaTable(path).count()
    if rows != expected:
        raise BenchError(f"{what}: the Delta table holds {rows} rows, expected {expected}")


# ------------------------------------------------------------------------------ output
def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:,.0f} MiB"


def _x(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def _rows(report: BronzeBenchReport) -> list[tuple[str, str, str, str, str]]:
    """(stage, records, seconds, events/s, peak RSS) for the table and the markdown."""
    crc = "C crc32c" if report.kafka_python.notes.get("crc32c_native") else "pure-Python crc32c"
    mem = report.memory
    out = [
        ("librdkafka consume (confluent-kafka)", report.librdkafka),
        (f"kafka-python consume ({crc})", report.kafka_python),
        ("plain loop: confluent-kafka -> Arrow -> delta-rs", report.plain),
    ]
    rows = [(name, f"{r.records:,}", f"{r.seconds:.2f}", f"{r.rate:,.0f}", _mib(r.peak_rss_bytes))
            for name, r in out]
    spark_mem = (f"driver {_mib(mem.driver_python)}, JVM {_mib(mem.jvm)}, "
                 f"workers {_mib(mem.python_workers)}")
    for run in report.bronze:
        rows.append((f"bronze, cap {run.max_records_per_trigger:,} ({run.batches} batches), "
                     "sustained", f"{run.rows:,}", f"{run.batch_seconds:.2f}",
                     f"{run.rate:,.0f}", spark_mem))
        rows.append((f"bronze, cap {run.max_records_per_trigger:,}, wall", f"{run.rows:,}",
                     f"{run.wall_seconds:.2f}", f"{run.wall_rate:,.0f}", "same"))
    return rows


def _ratios(report: BronzeBenchReport) -> list[tuple[str, str, str]]:
    """(ratio, value, goal verdict)."""
    plain, ceiling = report.plain.rate, report.librdkafka.rate
    out = [("plain loop / librdkafka", _x(plain, ceiling), ""),
           ("kafka-python / librdkafka", _x(report.kafka_python.rate, ceiling), "")]
    for run in report.bronze:
        cap = f"cap {run.max_records_per_trigger:,}"
        for label, rate in (("sustained", run.rate), ("wall", run.wall_rate)):
            vs_plain = rate / plain if plain else 0.0
            met = vs_plain >= GOAL_VS_PLAIN and rate >= GOAL_RATE
            verdict = (f"{'met' if met else 'NOT met'} (>= {GOAL_VS_PLAIN}x plain: "
                       f"{'yes' if vs_plain >= GOAL_VS_PLAIN else 'no'}, >= {GOAL_RATE:,}/s: "
                       f"{'yes' if rate >= GOAL_RATE else 'no'})")
            out.append((f"bronze {cap} {label} / plain loop", f"{vs_plain:.2f}x", verdict))
            out.append((f"bronze {cap} {label} / librdkafka", _x(rate, ceiling), ""))
    return out


def _profile_rows(report: BronzeBenchReport) -> list[tuple[str, str, str]]:
    """(piece, seconds, share of the profiled batches) for the micro-batch breakdown."""
    prof = report.profile
    if prof is None:
        return []
    count, arrow, write = prof.total("count_s"), prof.total("to_arrow_s"), prof.total("write_s")
    total = count + arrow + write
    rows = [
        (f"count(): source read on executors + Arrow into the JVM ({prof.rows:,} rows, "
         f"{len(prof.batches)} batches)", f"{count:.2f}", f"{count / total:.0%}"),
        ("toArrow(): read again + transform + collect to the driver", f"{arrow:.2f}",
         f"{arrow / total:.0%}"),
        ("  of which transform + collect (toArrow - count)", f"{max(arrow - count, 0):.2f}", ""),
        ("write_deltalake (Parquet + commit)", f"{write:.2f}", f"{write / total:.0%}"),
    ]
    if report.source_read is not None:
        sr = report.source_read
        per_task = ", ".join(f"{s:.2f}" for s in sr.notes.get("per_task_seconds", []))
        rows.append((f"read_ranges without Spark, {sr.notes.get('tasks')} tasks one after "
                     f"another ({per_task} s each)", f"{sr.seconds:.2f}",
                     f"{sr.rate:,.0f}/s"))
    phases = ", ".join(f"{k} {v / 1000:.2f}s" for k, v in prof.phases_ms.items() if v)
    rows.append((f"profiled query progress phases: {phases}", "", ""))
    for run in report.bronze:
        bphases = ", ".join(f"{k} {v / 1000:.2f}s" for k, v in run.phases_ms.items() if v)
        rows.append((f"bronze cap {run.max_records_per_trigger:,} progress phases: {bphases}",
                     "", ""))
    return rows


def render_table(report: BronzeBenchReport) -> Table:
    table = Table(title=f"bench bronze: {report.events:,} av.quality events, one broker")
    for column in ("stage", "records", "seconds", "events/s", "peak RSS"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for row in _rows(report):
        table.add_row(*row)
    table.add_section()
    for name, value, verdict in _ratios(report):
        table.add_row(name, "", "", value, verdict)
    return table


def render_profile(report: BronzeBenchReport) -> Table:
    table = Table(title="where a bronze micro-batch spends its time (profiled run)")
    for column in ("piece", "seconds", "share"):
        table.add_column(column, justify="left" if column == "piece" else "right")
    for row in _profile_rows(report):
        table.add_row(*row)
    return table


def to_markdown(report: BronzeBenchReport) -> str:
    """The run as a markdown section (no file header)."""
    m = report.machine
    lines = [
        f"## bench bronze, {report.started_at}",
        "",
        f"- Reproduce: `lakehouse bench bronze --events {report.events}`",
        f"- Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']} RAM, {m['os']}; "
        f"load {m['load (1/5/15 min) at start']} at start, {report.load_after} at end",
        f"- Spark: master {m['spark master']}; {m['versions']}",
        f"- Produced {report.produce.records:,} events "
        f"({report.librdkafka.notes.get('payload_bytes', 0) / report.events:.0f} B each on "
        f"average) in {report.produce.seconds:.1f}s, every delivery confirmed.",
        "",
        "| stage | records | seconds | events/s | peak RSS |",
        "|---|---:|---:|---:|---:|",
        *(f"| {' | '.join(row)} |" for row in _rows(report)),
        "",
        "Ratios in this run, and the goals (bronze >= "
        f"{GOAL_VS_PLAIN}x the plain loop and >= {GOAL_RATE:,} events/s):",
        "",
        "| ratio | value | goal |",
        "|---|---:|---|",
        *(f"| {name} | {value} | {verdict} |" for name, value, verdict in _ratios(report)),
        "",
    ]
    if report.profile is not None:
        lines += [
            f"Micro-batch breakdown (profiled run, cap "
            f"{report.profile.max_records_per_trigger:,}):",
            "",
            "| piece | seconds | share |",
            "|---|---:|---:|",
            *(f"| {' | '.join(row)} |" for row in _profile_rows(report)),
            "",
        ]
    lines += [f"- {note}" for note in report.notes]
    return "\n".join(lines).rstrip() + "\n"


def append_markdown(report: BronzeBenchReport, output: Path) -> None:
    """Append the section to `output`, creating it with the method header if missing."""
    output.parent.mkdir(parents=True, exist_ok=True)
    existing = output.read_text() if output.exists() else ""
    with output.open("a") as fh:
        if not existing.strip():
            fh.write(_HEADER)
        fh.write("\n" + to_markdown(report))
