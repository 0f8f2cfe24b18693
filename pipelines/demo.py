"""`lakehouse demo`: broker, a simulation, bronze -> silver -> gold, and what each produced."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from pyspark.sql import functions as F
from rich.console import Console
from rich.table import Table

from pipelines.broker import EmbeddedBroker
from pipelines.config import Settings
from pipelines.io.delta import read_table
from pipelines.jobs.bronze import BRONZE_TABLE, start_bronze
from pipelines.jobs.gold import HEALTH_TABLE, start_gold
from pipelines.jobs.progress import ProgressRecorder
from pipelines.jobs.runner import await_query
from pipelines.jobs.silver import silver_report, start_silver
from pipelines.simulator.run import run_simulation
from pipelines.spark import build_spark

# What a job run leaves under the root; stale once the broker that fed it is gone.
_RUN_STATE = ("_checkpoints", "bronze", "silver", "gold")


def _reset_stale_state(settings: Settings, console: Console) -> None:
    """A fresh memory-storage broker starts at offset 0: old checkpoints would point past it."""
    root = Path(settings.storage.root)
    stale = [root / name for name in _RUN_STATE if (root / name).exists()]
    if stale:
        console.print(f"[yellow]fresh in-memory broker: clearing the previous run's state in "
                      f"{root.resolve()} ({', '.join(p.name for p in stale)})[/yellow]")
        for path in stale:
            shutil.rmtree(path)


def run_demo(settings: Settings, *, classrooms: int, duration_s: float, seed: int,
             console: Console) -> None:
    broker = EmbeddedBroker(settings)
    status = broker.start()
    started_here = not status.already_running
    console.print(status.describe())
    if started_here and settings.broker.storage.startswith("memory://") \
            and "://" not in settings.storage.root:
        _reset_stale_state(settings, console)
    spark = None
    try:
        console.rule("[bold]1. simulate classrooms")
        summary = run_simulation(settings, classrooms=classrooms, duration_s=duration_s,
                                 seed=seed)
        console.print(summary.render())

        console.rule("[bold]2. bronze: Kafka -> Delta, exactly once")
        began = time.monotonic()
        spark = build_spark(settings, app_name="lakehouse-demo")
        spark_ready = time.monotonic()
        job = start_bronze(spark, settings, once=True)
        batches, rows = await_query(job.query, console=console, until_offsets=job.until_offsets)
        ended = time.monotonic()
        console.print(f"bronze: {rows:,} records in {batches} micro-batches, "
                      f"{ended - spark_ready:.1f} s after a {spark_ready - began:.1f} s Spark "
                      f"start ({rows / max(ended - spark_ready, 1e-9):,.0f} records/s)")

        console.rule("[bold]3. what landed")
        bronze = read_table(spark, settings, BRONZE_TABLE)
        per_topic = (bronze.groupBy("topic")
                     .agg(F.count("*").alias("rows"),
                          F.sum(F.col("value_raw").isNotNull().cast("int")).alias("not_utf8"),
                          F.countDistinct("partition").alias("partitions"),
                          F.max("offset").alias("max_offset"))
                     .orderBy("topic").collect())
        table = Table(title=f"{BRONZE_TABLE} at {settings.table_path(BRONZE_TABLE)}")
        for column in ("topic", "rows", "not UTF-8 (kept raw)", "partitions", "max offset"):
            table.add_column(column, justify="left" if column == "topic" else "right")
        for row in per_topic:
            table.add_row(row.topic, f"{row.rows:,}", f"{row.not_utf8:,}",
                          str(row.partitions), f"{row.max_offset:,}")
        console.print(table)
        landed = sum(r.rows for r in per_topic)
        verdict = "[green]every produced record landed once[/green]" if landed == summary.total \
            else f"[yellow]{landed:,} rows vs {summary.total:,} produced in this run[/yellow]"
        console.print(f"produced {summary.total:,}, bronze holds {landed:,}: {verdict}")

        console.rule("[bold]4. silver: contract, dedup, enrichment, reject ledger")
        recorder = ProgressRecorder(spark, settings)
        spark.streams.addListener(recorder)
        job = start_silver(spark, settings, once=True)
        await_query(job.query, console=console, until_offsets=job.until_offsets)
        console.print(silver_report(spark, settings))

        console.rule("[bold]5. gold: classroom health per minute")
        job = start_gold(spark, settings, once=True, console=console)
        await_query(job.query, console=console, until_offsets=job.until_offsets)
        health = read_table(spark, settings, HEALTH_TABLE)
        worst = health.orderBy("health_score").limit(5).collect()
        console.print(f"gold.classroom_health_1m: {health.count():,} finished classroom-minutes; "
                      "least healthy:")
        for row in worst:
            console.print(f"  {row.classroom_id} {row.role:<8} {row.minute:%H:%M} "
                          f"score {row.health_score:5.1f}  p95 loss {row.p95_packet_loss_pct}  "
                          f"disconnects {row.disconnects}  enter failures {row.enter_failures}")
    finally:
        if spark is not None:
            spark.stop()
        if started_here:
            broker.stop()
