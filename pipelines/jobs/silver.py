"""`lakehouse run silver`: typed, validated, deduplicated, enriched silver tables + reject ledger.

Plan of the streaming query (pure transforms, then one foreachBatch sink):

    bronze (Delta stream) or Kafka
      -> parse_and_validate            contract: JSON parsed in the JVM, reason per record
      -> flag_unnatural_timestamps     client clock vs broker clock
      -> flag_filtered_users           test accounts, internal users
      -> flag_unrouted_topics          topics without a silver table (`filtered`, not lost)
      -> withWatermark(dedup_time) + dropDuplicatesWithinWatermark(dedup_key)
      -> foreachBatch: event-time watermark -> `late`, enrich, route (silver tables + ledger),
         one collect, write (exactly once), quality counts from the rows' outcomes

Why lateness is not left to Spark: stateful operators drop rows behind the watermark and only
count them, and the contract says late events must be kept. So the dedup operator's watermark
(`dedup_time`: event time capped at broker time; broker time for rejected rows) trails by
`silver.dedup_window_s`, longer than both the lateness delay and the clock tolerance
(`max_clock_behind_s`, checked before it): an event behind it is already `unnatural_timestamp`
and so keyed on broker time. Lateness itself (Spark's rule: the newest accepted `dedup_time` of
earlier batches minus `silver.lateness_s`) is decided in the batch, where late rows go to
`silver.rejects` with the watermark they missed. What the dedup operator still drops (only an
input whose broker time lags the stream by minutes) is counted in `ops.stream_progress`.

Every table write carries the streaming transaction (query id, batch id): a replayed batch
re-derives the same rows and skips every table that already has them.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from datetime import UTC, datetime

import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from rich.console import Console
from rich.table import Table

from pipelines.config import Settings, SilverSource
from pipelines.dimensions.enrich import (
    LESSON_ATTRIBUTES,
    enrichment_reads_once,
    lesson_enricher,
)
from pipelines.io.delta import (
    RoutedTable,
    delta_writer,
    read_delta_stream,
    streaming_query_id,
)
from pipelines.io.kafka import kafka_end_offsets, read_kafka_stream
from pipelines.jobs.bronze import BRONZE_TABLE
from pipelines.jobs.runner import (
    CHANGELOG_CHECKPOINTING,
    JobResult,
    RunningJob,
    query_conf,
    run_streaming_job,
)
from pipelines.spark import scheduler_pool
from pipelines.transforms.bronze import kafka_to_bronze
from pipelines.transforms.silver import (
    ENVELOPE_COLUMNS,
    OUTCOME_COLUMNS,
    REJECT_COLUMNS,
    REJECTS_TABLE,
    ROUTE_COLUMN,
    SILVER_TABLES,
    EventTimeWatermark,
    accepted_columns,
    flag_filtered_users,
    flag_late,
    flag_unnatural_timestamps,
    flag_unrouted_topics,
    ledger_stamps,
    quality_counts,
    routed_rows,
    with_dedup_key,
)
from pipelines.transforms.validate import parse_and_validate
from schemas.contract import EVENT_TYPES_OF_TOPIC, UNION_PAYLOAD_FIELDS, payload_fields

METRICS_TABLE = "ops.quality_metrics"


SILVER_PAYLOAD_FIELDS = [spec.name for spec in UNION_PAYLOAD_FIELDS]


def topic_payload_fields(topic: str) -> list[str]:
    """Every payload field any version of the topic's event types defines, in order."""
    return [spec.name for spec in payload_fields(EVENT_TYPES_OF_TOPIC[topic])]


def silver_topic_tables(settings: Settings) -> dict[str, str]:
    """Kafka topic (with the configured prefix) -> the silver table its accepted rows go to."""
    return {settings.kafka_topic(t): table for t, table in SILVER_TABLES.items()}


def silver_input(settings: Settings) -> Callable[[DataFrame], DataFrame]:
    """Contract checks and record-level filters, before dedup (pure)."""
    cfg = settings.silver

    def apply(df: DataFrame) -> DataFrame:
        return (df.transform(parse_and_validate)
                  .transform(flag_unnatural_timestamps(cfg.max_clock_ahead_s,
                                                       cfg.max_clock_behind_s))
                  .transform(flag_filtered_users(cfg.filtered_users))
                  .transform(flag_unrouted_topics(list(silver_topic_tables(settings))))
                  .transform(with_dedup_key))

    return apply


class SilverBatchWriter:
    """The foreachBatch sink: lateness, routing, enrichment, and exactly-once writes."""

    def __init__(self, settings: Settings, checkpoint: str) -> None:
        self.settings = settings
        self.checkpoint = checkpoint
        self.writer = delta_writer(settings)
        self.watermark = EventTimeWatermark(int(settings.silver.lateness_s * 1000))
        self.app_id: str | None = None
        self.max_event_ms: dict[int, int] = {}  # batch id -> newest accepted event time
        self.enrich = lesson_enricher(settings)  # Delta dims (re-read) or PostgreSQL lookup
        self.topic_tables = silver_topic_tables(settings)
        extra = [*(c for c in LESSON_ATTRIBUTES if c not in ENVELOPE_COLUMNS), "lesson_known"]
        self.tables = [*(RoutedTable(table, settings.table_path(table),
                                     tuple(accepted_columns(topic_payload_fields(topic), extra)),
                                     ("event_date",))
                         for topic, table in SILVER_TABLES.items()),
                       RoutedTable(REJECTS_TABLE, settings.table_path(REJECTS_TABLE),
                                   REJECT_COLUMNS, ("reject_date",))]
        self.enrich_reads_once = enrichment_reads_once(settings)

    def _load_history(self, spark: SparkSession) -> None:
        """Newest accepted event time per earlier batch, from the metrics this query wrote."""
        path = self.settings.table_path(METRICS_TABLE)
        if not self.writer.exists(path):
            return
        rows = (self.writer.read(spark, path)
                .where((F.col("query_id") == self.app_id) & (F.col("outcome") == "accepted"))
                .groupBy("batch_id").agg(F.max("max_event_time").alias("newest"))
                .collect())
        self.max_event_ms = {r.batch_id: int(r.newest.timestamp() * 1000)
                             for r in rows if r.newest is not None}

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        spark = batch.sparkSession
        if self.app_id is None:
            self.app_id = streaming_query_id(spark, self.checkpoint)
            self._load_history(spark)
        before = [m for b, m in self.max_event_ms.items() if b < batch_id]
        watermark_ms = self.watermark.for_batch(max(before) if before else None)
        rows = batch.transform(flag_late(watermark_ms))
        if not self.enrich_reads_once:
            rows = rows.persist()  # the lookup reads the rows, then the join does
        try:
            self._write(spark, rows, batch_id)
        finally:
            rows.unpersist()

    def _write(self, spark: SparkSession, rows: DataFrame, batch_id: int) -> None:
        """One Spark job computes the batch: its rows, routed to the silver tables and the
        ledger, come to the driver once; the per-team counts are made from their outcomes."""
        assert self.app_id is not None
        routed = (rows.transform(self.enrich(spark))  # one lookup per batch
                  .transform(routed_rows(self.topic_tables, SILVER_PAYLOAD_FIELDS)))
        outcomes = self.writer.append_routed(
            routed, ROUTE_COLUMN, self.tables, app_id=self.app_id, version=batch_id,
            returning=OUTCOME_COLUMNS, constants=ledger_stamps(batch_id, datetime.now(UTC)))
        if self.settings.faults.kill_after_delta_commit_batch == batch_id:
            # Fault injection (tests): die between the batch's table commits and its metrics.
            os.kill(os.getpid(), signal.SIGKILL)
        metrics = quality_counts(outcomes, batch_id=batch_id, query_id=self.app_id,
                                 recorded_at=datetime.now(UTC))
        self.writer.append_arrow(spark, metrics, self.settings.table_path(METRICS_TABLE),
                                 partition_by=[], app_id=self.app_id, version=batch_id)
        accepted = metrics.filter(pc.equal(metrics["outcome"], "accepted"))
        newest = pc.max(accepted["max_event_time"]).as_py() if accepted.num_rows else None
        if newest is not None:
            self.max_event_ms[batch_id] = int(newest.timestamp() * 1000)


def start_silver(spark: SparkSession, settings: Settings, *, once: bool) -> RunningJob:
    """Start the silver query on an existing session (CLI, demo, tests)."""
    checkpoint = settings.checkpoint_path("silver")
    cfg = settings.silver
    target = None
    if cfg.source is SilverSource.KAFKA:
        topics = list(silver_topic_tables(settings))
        source = read_kafka_stream(spark, settings, topics, checkpoint=checkpoint)
        source = source.transform(kafka_to_bronze)
        if once:
            target = kafka_end_offsets(settings, topics)
    else:
        bronze_path = settings.table_path(BRONZE_TABLE)
        writer = delta_writer(settings)
        if not writer.exists(bronze_path):
            raise FileNotFoundError(f"{BRONZE_TABLE} does not exist yet at {bronze_path}: "
                                    "run `lakehouse run bronze` first")
        schema = writer.read(spark, bronze_path).schema
        source = read_delta_stream(spark, settings, BRONZE_TABLE, schema, checkpoint=checkpoint,
                                   max_versions_per_trigger=cfg.max_versions_per_trigger)
        if once:
            from deltalake import DeltaTable

            target = {"table": bronze_path, "version": DeltaTable(bronze_path).version()}
    deduped = (source.transform(silver_input(settings))
               .withWatermark("dedup_time", f"{int(cfg.dedup_window_s)} seconds")
               .dropDuplicatesWithinWatermark(["dedup_key"]))
    sink = SilverBatchWriter(settings, checkpoint)
    trigger_ms = int(settings.streaming.trigger_for("silver") * 1000)
    writer = (deduped.writeStream.queryName("silver")
              .option("checkpointLocation", checkpoint)
              .foreachBatch(sink)
              .trigger(processingTime=f"{trigger_ms} milliseconds"))
    state = {**CHANGELOG_CHECKPOINTING,
             "spark.sql.streaming.stateStore.providerClass": cfg.state_store.provider_class}
    with query_conf(spark, state), scheduler_pool(spark, settings, "silver"):
        query = writer.start()
    return RunningJob(query, target)


def silver_report(spark: SparkSession, settings: Settings) -> Table:
    """Accepted rows per silver table and rejects per reason, for people."""
    writer = delta_writer(settings)
    table = Table(title="silver")
    table.add_column("table / reason")
    table.add_column("rows", justify="right")
    for name in [*SILVER_TABLES.values(), REJECTS_TABLE]:
        path = settings.table_path(name)
        rows = writer.read(spark, path) if writer.exists(path) else None
        table.add_row(name, f"{rows.count():,}" if rows is not None else "-")
        if name == REJECTS_TABLE and rows is not None:
            for r in rows.groupBy("reject_reason").count().orderBy("reject_reason").collect():
                table.add_row(f"  {r.reject_reason}", f"{r['count']:,}")
    progress_path = settings.table_path("ops.stream_progress")
    if writer.exists(progress_path):
        dups = writer.read(spark, progress_path).agg(F.sum("dropped_duplicates")).first()[0]
        table.add_row("duplicates dropped (event_id)", f"{dups or 0:,}")
    return table


def run_silver_job(settings: Settings, *, once: bool, console: Console | None = None) -> JobResult:
    return run_streaming_job(settings, "silver",
                             lambda spark, cfg: start_silver(spark, cfg, once=once),
                             console=console, record_progress=True)


__all__ = ["run_silver_job", "silver_input", "start_silver"]
