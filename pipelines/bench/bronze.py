"""`lakehouse bench bronze`: the broker's and clients' ceiling vs a plain loop vs the bronze job.

All figures come from one run on one broker and the same records, so the ratios hold even on a
busy or slow machine where the absolute rates do not. Stages:

1. raw consume with librdkafka (confluent-kafka) and kafka-python: what broker and client deliver;
2. a plain single-process loop, confluent-kafka -> Arrow -> delta-rs, what a user might write
   instead of Spark;
3. the bronze job (`start_bronze`, `--once`) on an already-built, warmed-up Spark session, for a
   few `kafka.max_records_per_trigger` caps; its rate comes from the query progress, so Spark's
   start-up is not in it;
4. optionally a profiled run that splits a micro-batch into read / collect / Delta write.

Every timed stage runs `repeat` times and keeps its best run: on a shared machine the best run is
the one least disturbed by other work. CPU seconds are recorded too, as they barely depend on it.
The bench starts its own memory-storage broker on a free port with a throw-away storage root and
removes both at the end, also on error.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from pyspark.sql import SparkSession
from rich.console import Console
from rich.table import Table

from pipelines.bench.events import AV_TOPIC
from pipelines.bench.memory import (
    CPU_KINDS,
    JVM_THREAD_GROUPS,
    SparkMemory,
    WorkerSampler,
    cpu_by_process,
    cpu_delta,
    jvm_thread_cpu,
    spark_cpu,
    spark_memory,
)
from pipelines.bench.profile import PIECES, ProfileResult, profile_bronze_batches, sum_phases
from pipelines.bench.stages import BenchError, StageResult, run_isolated
from pipelines.config import DeltaEngine, KafkaSourceKind, Settings, load_settings

DEFAULT_TRIGGER_CAPS = (100_000, 200_000)
DEFAULT_REPEAT = 2
GOAL_VS_PLAIN = 0.5  # bronze >= 0.5x the plain loop
GOAL_RATE = 30_000  # bronze >= 30,000 events/s

R = TypeVar("R")

_HEADER = """# Benchmarks

Each `## bench ...` section below is one run of a `lakehouse bench ...` command, appended by the
command itself; `###` notes under a run are written by hand.

## Method: `lakehouse bench bronze`

One run, one embedded tansu broker (memory storage, a free loopback port, a throw-away storage
root) and one set of records: N synthetic `av.quality` events (~430 bytes of JSON, contract v1,
key = classroom_id) produced to `classroom.av` (4 partitions) with confluent-kafka, large batches
(`linger.ms=50`, `batch.size=1000000`; tansu returns one record batch per partition per fetch, so
this sets how much a consumer gets per round trip) and every delivery report checked. Then, on
those records:

- **librdkafka** / **kafka-python**: a bare consumer assigned to every partition from the first
  offset, counting records (and their value sizes) until it has seen N. The ceiling of what the
  broker and a Python client deliver here. Whether kafka-python uses the `crc32c` C extension is
  noted (without it, CRC checks dominate its consume time).
- **plain loop**: one process, no Spark: confluent-kafka -> Python lists -> an Arrow table with
  bronze.events' columns -> `deltalake.write_deltalake` append every 100,000 records, partitioned
  like bronze. What a user might write instead of Spark.
- **bronze**: `start_bronze(spark, settings, once=True)` with its own fresh storage root, once
  per `kafka.max_records_per_trigger` cap, on a Spark session built *and warmed up* (one full
  bronze pass over the same records, not counted) before the clock starts. *sustained* = sum of
  numInputRows / sum of `durationMs.triggerExecution` over the micro-batches with data; *wall* =
  N / (end of the last such batch - start of the first). Afterwards the bronze table must hold
  exactly N rows.
- **profile** (the first cap): the same source and transform with a foreachBatch that splits each
  micro-batch into *read* (`localCheckpoint(eager=True)`: the Python source's read on the
  executors, Arrow into the JVM, the transform, rows kept in memory), *collect* (`toArrow()` of
  those rows into the Python driver, as the delta-rs writer does) and *write*
  (`write_deltalake`). For reference, `read_ranges` (the source's executor code) also runs
  without Spark.

Each timed stage runs `repeat` times (default 2) and the best run is reported: on a shared
machine it is the one least disturbed. *CPU s* is the CPU time the stage used (all threads; for
bronze the driver, the JVM and the Python workers together), which other load barely changes;
*events/CPU-s* is the efficiency that sets the rate on a machine with no spare cores. CPU is
also split by process: the Python driver, the JVM, the Python workers running tasks, other
Python processes (Spark's data source planners and the streaming source runner) and the broker,
and the JVM's CPU by thread (executor tasks vs JIT compilers vs GC). Each non-Spark stage runs in
a fresh process, so its peak RSS is its own. Spark memory: the Python driver's `ru_maxrss`, the
JVM's `VmHWM` (/proc), and the sampled peak of all Python workers together (PSS: forked workers
share pages). Every stage stops with an error when it sees fewer records than were produced.
The load average is recorded with each run.
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
    cpu: dict[str, float]  # CPU seconds by process kind, query start to stop
    jvm_threads: dict[str, float]  # the JVM's CPU seconds by thread group (JVM_THREAD_GROUPS)

    @property
    def cpu_seconds(self) -> float:
        """The Spark side's CPU seconds (driver, JVM, Python workers), broker excluded."""
        return spark_cpu(self.cpu)

    @property
    def rate(self) -> float:
        """Sustained rate: rows over the summed micro-batch durations."""
        return self.rows / self.batch_seconds if self.batch_seconds > 0 else 0.0

    @property
    def wall_rate(self) -> float:
        return self.rows / self.wall_seconds if self.wall_seconds > 0 else 0.0


@dataclass
class BronzeBenchReport:
    """Everything one `bench bronze` run measured (best run of each stage)."""

    events: int
    started_at: str
    repeat: int
    command: str  # the command line that reproduces the run
    bootstrap: str  # the bench's own broker (stopped by the time the report is returned)
    workdir: str  # its throw-away storage (removed likewise)
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
def _bench_settings(profile: str, root: Path, port: int) -> Settings:
    """Settings for the bench's own broker (memory storage) and a storage root of its own."""
    env = {**os.environ, "LAKEHOUSE_ROOT": str(root), "LAKEHOUSE__BROKER__PORT": str(port),
           "LAKEHOUSE__BROKER__EMBEDDED": "true",
           "LAKEHOUSE__BROKER__STORAGE": "memory://tansu/"}
    return load_settings(profile, environ=env)


def _run_settings(base: Settings, root: Path, cap: int) -> Settings:
    """`base` with its own storage root and trigger cap, for one bronze run.

    Derived from the settings loaded once at the start rather than loaded again, so a config
    file edited while the bench runs cannot change (or break) it halfway.
    """
    if cap < 1:
        raise BenchError(f"kafka.max_records_per_trigger must be >= 1, not {cap}")
    return base.model_copy(update={
        "storage": base.storage.model_copy(update={"root": str(root)}),
        "kafka": base.kafka.model_copy(update={"max_records_per_trigger": cap}),
    })


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
        "load": _load(),
        "versions": (f"Python {platform.python_version()}, PySpark {pyspark.__version__}, "
                     f"librdkafka {confluent_kafka.libversion()[0]}, "
                     f"kafka-python {kafka.__version__}, deltalake {deltalake.__version__}, "
                     f"pyarrow {pyarrow.__version__}"),
    }


# Environment that changes what the bench measures, so it belongs in the reproduce line. The
# storage root and broker port are not: the bench picks its own.
_REPRO_SKIP = {"LAKEHOUSE_ROOT", "LAKEHOUSE__BROKER__PORT", "LAKEHOUSE__STORAGE__ROOT"}


def reproduce_command(events: int, environ: dict[str, str] | None = None) -> str:
    """The command line that repeats this run, with the LAKEHOUSE settings from the environment
    (never a secret)."""
    env = os.environ if environ is None else environ
    names = sorted(k for k in env if (k.startswith("LAKEHOUSE__") or k in {
        "LAKEHOUSE_PROFILE", "LAKEHOUSE_CONF_DIR", "LAKEHOUSE_DRIVER_MEMORY"})
        and k not in _REPRO_SKIP and "PASSWORD" not in k and "SECRET" not in k)
    prefix = "".join(f"{k}={shlex.quote(env[k])} " for k in names)
    return f"{prefix}lakehouse bench bronze --events {events}"


def jvm_info(spark: SparkSession) -> str:
    """Java version, heap, garbage collector and -XX flags in force (they set JIT and GC costs)."""
    jvm = spark.sparkContext._jvm  # type: ignore[attr-defined]
    management = jvm.java.lang.management.ManagementFactory
    version = jvm.java.lang.System.getProperty("java.version")
    gcs = ", ".join(str(b.getName()) for b in management.getGarbageCollectorMXBeans())
    flags = [str(a) for a in management.getRuntimeMXBean().getInputArguments()
             if str(a).startswith(("-XX:", "-Xm")) and "IgnoreUnrecognized" not in str(a)]
    return (f"Java {version}, garbage collectors: {gcs}; JVM flags: "
            f"{' '.join(flags) or 'defaults'}")


def _parse_ts(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _best(runs: int, run: Callable[[], R], rate: Callable[[R], float]) -> tuple[R, list[R]]:
    """Run `runs` times; the fastest run and all of them."""
    done = [run() for _ in range(runs)]
    return max(done, key=rate), done


def _check_table(path: str, expected: int, what: str) -> None:
    from deltalake import DeltaTable

    rows = DeltaTable(path).count()
    if rows != expected:
        raise BenchError(f"{what}: the Delta table holds {rows} rows, expected {expected}")


# ------------------------------------------------------------------------------ bronze runs
def run_bronze_once(spark: SparkSession, settings: Settings, expected: int, *,
                    console: Console | None = None, broker_pid: int | None = None
                    ) -> BronzeRun:
    """Bronze `--once` over the backlog; its rates from the query progress; rows verified."""
    from deltalake import DeltaTable

    from pipelines.jobs.bronze import BRONZE_TABLE, start_bronze
    from pipelines.jobs.runner import await_query

    # Every batch's progress is needed afterwards; Spark keeps the last 100 by default.
    retention_key = "spark.sql.streaming.numRecentProgressUpdates"
    retention = spark.conf.get(retention_key, None)
    batches_expected = -(-expected // settings.kafka.max_records_per_trigger)
    spark.conf.set(retention_key, str(max(100, 2 * batches_expected + 10)))
    cpu0, threads0 = cpu_by_process(broker_pid), jvm_thread_cpu()
    try:
        job = start_bronze(spark, settings, once=True)
        try:
            await_query(job.query, console=console, until_offsets=job.until_offsets,
                        poll_s=0.2)
        finally:
            if job.query.isActive:
                job.query.stop()
    finally:  # the caller's session gets its setting back
        if retention is None:
            spark.conf.unset(retention_key)
        else:
            spark.conf.set(retention_key, retention)
    cpu = cpu_delta(cpu0, cpu_by_process(broker_pid))
    threads1 = jvm_thread_cpu()
    jvm_threads = {k: max(v - threads0.get(k, 0.0), 0.0) for k, v in threads1.items()}
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
                     batch_ms / 1000, wall, sum_phases(progress), table_rows, cpu, jvm_threads)


# ------------------------------------------------------------------------------ the bench
def run_bronze_bench(settings: Settings, *, events: int = 300_000, output: Path | None = None,
                     console: Console | None = None, spark: SparkSession | None = None,
                     trigger_caps: Sequence[int] | None = None, repeat: int = DEFAULT_REPEAT,
                     profile: bool = True) -> BronzeBenchReport:
    """Run every stage on one fresh broker; print the tables; append them to `output` if given.

    `spark`: an existing session to reuse (tests); otherwise one is built before the bronze
    stage and stopped at the end. `trigger_caps`: the `kafka.max_records_per_trigger` values to
    run bronze with (default 100k, 200k and the configured one). `repeat`: runs per timed
    stage, best one kept.
    """
    console = console or Console(stderr=True)
    if settings.kafka.source is not KafkaSourceKind.PYTHON or (
            settings.delta.engine is not DeltaEngine.DELTA_RS):
        raise BenchError("bench bronze measures the local stack (Python Kafka source, delta-rs); "
                         "run it with --profile local")
    # The configured cap is measured too: it is what `lakehouse run bronze` will use.
    caps = list(dict.fromkeys(trigger_caps or (*DEFAULT_TRIGGER_CAPS,
                                               settings.kafka.max_records_per_trigger)))
    repeat = max(repeat, 1)
    workdir = Path(tempfile.mkdtemp(prefix="lakehouse-bench-"))
    from pipelines.broker import EmbeddedBroker, free_port

    port = free_port()
    profile_name = settings.profile.value
    broker_settings = _bench_settings(profile_name, workdir / "broker", port)
    machine = machine_info()
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    notes: list[str] = []

    broker = EmbeddedBroker(broker_settings)
    own_spark = spark is None
    try:
        console.print(f"[bold]bench bronze[/bold]: {events:,} events, broker "
                      f"{broker_settings.kafka.bootstrap_servers}, work dir {workdir}")
        broker_pid = broker.start().pid
        options = broker_settings.kafka.client_options()
        topic = broker_settings.kafka_topic(AV_TOPIC)  # with kafka.topic_prefix, as bronze reads
        starts = _offsets(broker_settings, topic)

        produce = run_isolated("produce_av", client_options=options, topic=topic, n=events)
        ends = _offsets(broker_settings, topic)
        if _count(starts, ends) != events:
            raise BenchError(f"{events} records delivered but the broker's offsets span "
                             f"{_count(starts, ends)}")
        console.print(f"produced {produce.records:,} in {produce.seconds:.1f}s, all delivered")

        raw = dict(client_options=options, starts=starts, n=events)

        def stage(name: str, extra: Callable[[int], dict[str, str]] | None = None
                  ) -> StageResult:
            attempt = iter(range(repeat))
            best, runs = _best(repeat, lambda: run_isolated(
                name, **raw, **(extra(next(attempt)) if extra else {})), lambda r: r.rate)
            shown = ", ".join(f"{r.rate:,.0f}" for r in runs)
            console.print(f"{best.name}: {shown} events/s")
            if len(runs) > 1:
                notes.append(f"{best.name}: runs at {shown} events/s; the best is reported.")
            return best

        librdkafka = stage("consume_librdkafka")
        kafka_python = stage("consume_kafka_python")
        plain_tables = [str(workdir / f"plain-{i}" / "bronze_events") for i in range(repeat)]
        plain = stage("plain_ingest_loop", lambda i: {"table_path": plain_tables[i]})
        for path in plain_tables:
            _check_table(path, events, "plain loop")

        bronze_settings = [_run_settings(broker_settings, workdir / f"bronze-{cap}-{i}", cap)
                           for i in range(repeat) for cap in caps]
        if spark is None:
            from pipelines.spark import build_spark

            console.print("building the Spark session (not timed)")
            spark = build_spark(bronze_settings[0], app_name="lakehouse-bench")
        runs: list[BronzeRun] = []
        with WorkerSampler() as sampler:
            # Warm-up, not counted: one full pass, so Python worker start-up, codegen and most
            # JIT compilation are behind the measured runs (they are, in a long-running job).
            cold = run_bronze_once(spark, _run_settings(broker_settings, workdir / "warm-up",
                                                        caps[0]), events, broker_pid=broker_pid)
            notes.append(f"Warm-up, not counted: a first bronze pass over the same records "
                         f"(cap {caps[0]:,}) ran at {cold.rate:,.0f} events/s sustained using "
                         f"{cold.cpu_seconds:.1f} CPU s (JVM {cold.cpu['jvm']:.1f}), "
                         "with Python worker start-up and JIT compilation in it.")
            for cfg in bronze_settings:  # caps interleaved, so load changes hit them alike
                run = run_bronze_once(spark, cfg, events, broker_pid=broker_pid)
                console.print(f"bronze cap {run.max_records_per_trigger:,}: {run.batches} "
                              f"batches, {run.rate:,.0f}/s sustained, "
                              f"{run.wall_rate:,.0f}/s wall")
                runs.append(run)
        memory = spark_memory(sampler)
        best_runs = []
        for cap in caps:
            mine = [r for r in runs if r.max_records_per_trigger == cap]
            best_runs.append(max(mine, key=lambda r: r.rate))
            if len(mine) > 1:
                notes.append(f"bronze cap {cap:,}: runs at "
                             + ", ".join(f"{r.rate:,.0f}" for r in mine)
                             + " events/s sustained; the best is reported.")

        profiled = source_read = None
        if profile:
            cfg = _run_settings(broker_settings, workdir / "profile", caps[0])
            console.print(f"profiling micro-batches (cap {caps[0]:,})")
            profiled = profile_bronze_batches(spark, cfg, broker_pid=broker_pid)
            if profiled.rows != events:
                raise BenchError(f"the profiled run read {profiled.rows} rows, not {events}")
            source_read, _ = _best(repeat, lambda: run_isolated(
                "source_read", client_options=options, starts=starts, ends=ends,
                tasks=spark.sparkContext.defaultParallelism), lambda r: r.rate)

        report = BronzeBenchReport(
            events=events, started_at=started_at, repeat=repeat,
            command=reproduce_command(events),
            bootstrap=broker_settings.kafka.bootstrap_servers, workdir=str(workdir),
            produce=produce,
            librdkafka=librdkafka, kafka_python=kafka_python, plain=plain, bronze=best_runs,
            memory=memory, machine={**machine, "spark master": bronze_settings[0].spark.master,
                                    "jvm": jvm_info(spark)},
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

    for table in render_tables(report):
        console.print(table)
    if output is not None:
        append_markdown(report, output)
        console.print(f"appended to {output}")
    return report


# ------------------------------------------------------------------------------ output
def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:,.0f} MiB"


def _x(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def _per_cpu(records: int, cpu: float | None) -> str:
    return f"{records / cpu:,.0f}" if cpu else "n/a"


def rate_rows(report: BronzeBenchReport) -> list[tuple[str, ...]]:
    """(stage, records, seconds, events/s, CPU s, events/CPU-s)."""
    crc = "C crc32c" if report.kafka_python.notes.get("crc32c_native") else "pure-Python crc32c"
    rows = []
    for name, r in (("librdkafka consume", report.librdkafka),
                    (f"kafka-python consume ({crc})", report.kafka_python),
                    ("plain loop (confluent-kafka, Arrow, delta-rs)", report.plain)):
        cpu = f"{r.cpu_seconds:.2f}" if r.cpu_seconds is not None else "n/a"
        rows.append((name, f"{r.records:,}", f"{r.seconds:.2f}", f"{r.rate:,.0f}", cpu,
                     _per_cpu(r.records, r.cpu_seconds)))
    for run in report.bronze:
        label = (f"bronze, cap {run.max_records_per_trigger:,} ({run.batches} "
                 f"batch{'' if run.batches == 1 else 'es'})")
        rows.append((f"{label}, sustained", f"{run.rows:,}", f"{run.batch_seconds:.2f}",
                     f"{run.rate:,.0f}", f"{run.cpu_seconds:.2f}",
                     _per_cpu(run.rows, run.cpu_seconds)))
        rows.append((f"{label}, wall", f"{run.rows:,}", f"{run.wall_seconds:.2f}",
                     f"{run.wall_rate:,.0f}", "", ""))
    return rows


def ratio_rows(report: BronzeBenchReport) -> list[tuple[str, ...]]:
    """(ratio, value, goal verdict); bronze ratios use the sustained rate, wall in brackets."""
    plain, ceiling = report.plain.rate, report.librdkafka.rate
    rows = [("plain loop / librdkafka", _x(plain, ceiling), ""),
            ("kafka-python / librdkafka", _x(report.kafka_python.rate, ceiling), "")]
    for run in report.bronze:
        cap = f"cap {run.max_records_per_trigger:,}"
        vs_plain = run.rate / plain if plain else 0.0
        ok_ratio, ok_rate = vs_plain >= GOAL_VS_PLAIN, run.rate >= GOAL_RATE
        verdict = (f"{'met' if ok_ratio and ok_rate else 'NOT met'}: "
                   f">= {GOAL_VS_PLAIN}x plain {'yes' if ok_ratio else 'no'}, "
                   f">= {GOAL_RATE:,}/s {'yes' if ok_rate else 'no'}")
        rows.append((f"bronze {cap} / plain loop",
                     f"{vs_plain:.2f}x ({_x(run.wall_rate, plain)} wall)", verdict))
        rows.append((f"bronze {cap} / librdkafka",
                     f"{_x(run.rate, ceiling)} ({_x(run.wall_rate, ceiling)} wall)", ""))
    return rows


def memory_rows(report: BronzeBenchReport) -> list[tuple[str, str]]:
    mem = report.memory
    return [
        ("librdkafka consume process", _mib(report.librdkafka.peak_rss_bytes)),
        ("kafka-python consume process", _mib(report.kafka_python.peak_rss_bytes)),
        ("plain loop process", _mib(report.plain.peak_rss_bytes)),
        ("bronze: Python driver (ru_maxrss)", _mib(mem.driver_python)),
        ("bronze: JVM (VmHWM)", _mib(mem.jvm)),
        ("bronze: Python workers (sampled peak PSS, all together)", _mib(mem.python_workers)),
        ("bronze: total", _mib(mem.driver_python + (mem.jvm or 0) + (mem.python_workers or 0))),
    ]


def _cpu_cells(cpu: dict[str, float]) -> tuple[str, ...]:
    return (*(f"{cpu[k]:.2f}" for k in CPU_KINDS if k != "broker"), f"{spark_cpu(cpu):.2f}",
            f"{cpu['broker']:.2f}")


def cpu_rows(report: BronzeBenchReport) -> list[tuple[str, ...]]:
    """(what, wall s, CPU s per process kind..., Spark side total, broker): where work goes."""
    rows = []
    blank = dict.fromkeys(CPU_KINDS, 0.0)
    for name, stage in (("plain loop", report.plain),
                        ("read_ranges, no Spark", report.source_read)):
        if stage is not None and stage.cpu_seconds is not None:
            rows.append((name, f"{stage.seconds:.2f}",
                         *_cpu_cells({**blank, "driver": stage.cpu_seconds})[:-1], ""))
    for run in report.bronze:
        rows.append((f"bronze cap {run.max_records_per_trigger:,}",
                     f"{run.wall_seconds:.2f}", *_cpu_cells(run.cpu)))
    prof = report.profile
    if prof is not None:
        for piece, label in zip(PIECES, PIECE_LABELS, strict=True):
            rows.append((f"profile: {label}", f"{prof.pieces[piece].seconds:.2f}",
                         *_cpu_cells(prof.pieces[piece].cpu)))
    return rows


def jvm_rows(report: BronzeBenchReport) -> list[tuple[str, ...]]:
    """(run, JVM CPU s by thread group..., total) for the bronze runs and profiled pieces."""
    named = [(f"bronze cap {run.max_records_per_trigger:,}", run.jvm_threads)
             for run in report.bronze]
    if report.profile is not None:
        named += [(f"profile: {label}", report.profile.pieces[piece].jvm_threads)
                  for piece, label in zip(PIECES, PIECE_LABELS, strict=True)]
    return [(name, *(f"{threads.get(g, 0.0):.2f}" for g in JVM_THREAD_GROUPS),
             f"{sum(threads.values()):.2f}") for name, threads in named if threads]


def breakdown_rows(report: BronzeBenchReport) -> list[tuple[str, ...]]:
    """(piece, wall s, share, Spark CPU s, share) of the profiled micro-batches."""
    prof = report.profile
    if prof is None:
        return []
    wall = sum(p.seconds for p in prof.pieces.values()) or 1.0
    cpu = sum(p.spark_cpu for p in prof.pieces.values()) or 1.0
    return [(label, f"{prof.pieces[piece].seconds:.2f}",
             f"{prof.pieces[piece].seconds / wall:.0%}", f"{prof.pieces[piece].spark_cpu:.2f}",
             f"{prof.pieces[piece].spark_cpu / cpu:.0%}")
            for piece, label in zip(PIECES, PIECE_LABELS, strict=True)]


def phase_rows(report: BronzeBenchReport) -> list[tuple[str, str]]:
    """Summed `durationMs` phases (seconds) of each bronze run and of the profiled run."""
    def fmt(phases: dict[str, int]) -> str:
        return ", ".join(f"{k} {v / 1000:.2f}" for k, v in phases.items() if v)

    rows = [(f"bronze cap {r.max_records_per_trigger:,}", fmt(r.phases_ms))
            for r in report.bronze]
    if report.profile is not None:
        rows.append(("profiled run", fmt(report.profile.phases_ms)))
    return rows


PIECE_LABELS = ("read on the executors, into the JVM, transform",
                "rows to Arrow, collect to the Python driver", "write_deltalake on the driver")
BREAKDOWN_COLUMNS = ("piece", "wall s", "share", "Spark CPU s", "share")
JVM_COLUMNS = ("run", *JVM_THREAD_GROUPS, "JVM total")
CPU_COLUMNS = ("what", "wall s", "driver", "JVM", "workers", "planners", "Spark", "broker")


def _table(title: str, columns: Sequence[str], rows: list[tuple[str, ...]]) -> Table:
    table = Table(title=title)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 or column == "goal" else "right")
    for row in rows:
        table.add_row(*row)
    return table


def render_tables(report: BronzeBenchReport) -> list[Table]:
    """The rich tables the command prints."""
    tables = [
        _table(f"bench bronze: {report.events:,} av.quality events, best of {report.repeat}",
               ("stage", "records", "seconds", "events/s", "CPU s", "events/CPU-s"),
               rate_rows(report)),
        _table("ratios (same run)", ("ratio", "value", "goal"), ratio_rows(report)),
        _table("peak memory", ("process", "peak RSS"), memory_rows(report)),
    ]
    if report.profile is not None:
        tables.append(_table(
            f"where a bronze micro-batch spends its time (profiled run, "
            f"{report.profile.rows:,} rows in {report.profile.batches} batches)",
            BREAKDOWN_COLUMNS, breakdown_rows(report)))
    tables.append(_table("CPU seconds by process", CPU_COLUMNS, cpu_rows(report)))
    if jvm_rows(report):
        tables.append(_table("JVM CPU seconds by thread", JVM_COLUMNS, jvm_rows(report)))
    tables.append(_table("query progress phases, summed (s)", ("run", "phases"),
                         phase_rows(report)))
    return tables


def _md_table(columns: Sequence[str], rows: list[tuple[str, ...]]) -> list[str]:
    align = ["---" if i == 0 or c == "goal" else "---:" for i, c in enumerate(columns)]
    return [f"| {' | '.join(columns)} |", f"|{'|'.join(align)}|",
            *(f"| {' | '.join(row)} |" for row in rows), ""]


def to_markdown(report: BronzeBenchReport) -> str:
    """The run as a markdown section (no file header)."""
    m = report.machine
    size = report.librdkafka.notes.get("payload_bytes", 0) / max(report.events, 1)
    lines = [
        f"## bench bronze, {report.started_at}",
        "",
        f"- Reproduce: `{report.command}`",
        f"- Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']} RAM, {m['os']}; load average "
        f"(1/5/15 min) {m['load']} at start, {report.load_after} at end",
        f"- Spark master {m['spark master']}; {m['jvm']}",
        f"- {m['versions']}",
        f"- {report.produce.records:,} events of {size:.0f} B on average, produced in "
        f"{report.produce.seconds:.1f}s, every delivery confirmed; best of {report.repeat} runs "
        "per stage.",
        "",
        *_md_table(("stage", "records", "seconds", "events/s", "CPU s", "events/CPU-s"),
                   rate_rows(report)),
        f"Ratios in this run; goals: bronze >= {GOAL_VS_PLAIN}x the plain loop and "
        f">= {GOAL_RATE:,} events/s (judged on the sustained rate):",
        "",
        *_md_table(("ratio", "value", "goal"), ratio_rows(report)),
        "Peak memory:",
        "",
        *_md_table(("process", "peak RSS"), memory_rows(report)),
    ]
    if report.profile is not None:
        prof = report.profile
        lines += [f"Where a bronze micro-batch spends its time (profiled run, cap "
                  f"{prof.max_records_per_trigger:,}: {prof.rows:,} rows in {prof.batches} micro-"
                  "batches, each split into read / collect / write):", "",
                  *_md_table(BREAKDOWN_COLUMNS, breakdown_rows(report))]
    lines += ["CPU seconds by process: the Python driver, the JVM, the Python workers running "
              "tasks, the planners (other Python processes: Spark's data source planners and "
              "the streaming source runner); Spark = their sum; the broker apart. The plain "
              "loop and read_ranges are one process each (in the driver column). Bronze rows "
              "cover the whole query, start to stop; wall is first batch start to last end.",
              "", *_md_table(CPU_COLUMNS, cpu_rows(report))]
    if jvm_rows(report):
        lines += ["The JVM's CPU seconds by thread (executor tasks do the work; JIT compilers "
                  "and GC are the JVM's own overhead):", "",
                  *_md_table(JVM_COLUMNS, jvm_rows(report))]
    lines += ["Query progress phases, summed over the batches with data (seconds):", "",
              *_md_table(("run", "phases"), phase_rows(report))]
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
