"""`lakehouse run help`: tag every Help request with its likely root cause within seconds.

The fast path of DESIGN.md: the five topics straight from Kafka (no bronze -> silver hop), the
same `kafka_to_bronze` and `parse_and_validate` as silver, then the window and rules of
pipelines/transforms/help.py. One query:

    Kafka (5 topics + the job's tick topic)
      -> kafka_to_bronze -> withWatermark(kafka_timestamp, help.watermark_delay_s)
      -> parse_and_validate -> help_signals          valid rows; requests + fired signals only
      -> window: state (default) | join              pairs once a request's window closed
      -> foreachBatch: aggregate + rules -> guard -> Kafka classroom.help.tags -> gold.help_tags

Why broker time for the watermark: client clocks drift, and an event-time watermark lets one
fast clock push every other classroom's requests behind it. Broker time only moves forward, and
the job's own ticks (a record per `tick_interval_s` on `help.tick_topic`) move it with the wall
clock when the streams are quiet, so the last request before a lull is tagged too, and
`--once` can close every open window before it stops.

Delivery: Kafka first, then Delta. Delta gets each batch once (the streaming transaction), and
help_ids already in gold.help_tags are never written or published again; a batch replayed after
a crash between the two writes publishes its tags to Kafka a second time (at least once, same
help_id key), so Kafka consumers dedupe by help_id.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery
from rich.console import Console

from pipelines.config import HelpEngine, Settings
from pipelines.io.delta import DeltaRsWriter, delta_writer, read_table, streaming_query_id
from pipelines.io.kafka import caught_up, kafka_end_offsets, read_kafka_stream
from pipelines.io.kafka_admin import ensure_topics
from pipelines.spark import build_spark
from pipelines.transforms.bronze import kafka_to_bronze
from pipelines.transforms.help import (
    HELP_TOPICS,
    aggregate_evidence,
    apply_tag_rules,
    help_signals,
    join_requests_with_evidence,
    tag_records,
    tag_requests,
)
from pipelines.transforms.help_window import buffer_requests_with_evidence
from pipelines.transforms.validate import parse_and_validate

HELP_TAGS_TABLE = "gold.help_tags"
PERCENTILES = (0.5, 0.95, 0.99)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def help_stream(spark: SparkSession, settings: Settings, checkpoint: str) -> DataFrame:
    """The streaming part: Kafka -> pairs (state) or per-request aggregates (join)."""
    cfg = settings.help
    topics = [settings.kafka_topic(t) for t in (*HELP_TOPICS, cfg.tick_topic)]
    if cfg.max_records_per_trigger is not None:
        kafka = settings.kafka.model_copy(
            update={"max_records_per_trigger": cfg.max_records_per_trigger})
        settings = settings.model_copy(update={"kafka": kafka})
    tick_topic = settings.kafka_topic(cfg.tick_topic)
    # The watermark sees valid records and ticks; validation runs before it because Spark
    # pushes a filter that does not use the event-time column below the watermark anyway.
    delay = f"{int(cfg.watermark_delay_s * 1000)} milliseconds"
    signals = (read_kafka_stream(spark, settings, topics, checkpoint=checkpoint)
               .transform(kafka_to_bronze)
               .transform(parse_and_validate)
               .where(F.col("reject_reason").isNull() | (F.col("topic") == tick_topic))
               .withWatermark("kafka_timestamp", delay)
               .transform(help_signals(cfg.rules)))
    if cfg.engine is HelpEngine.JOIN:
        return (signals.transform(join_requests_with_evidence(cfg))
                       .transform(aggregate_evidence(extra_keys=["request_kafka_ts"])))
    return signals.transform(buffer_requests_with_evidence(cfg))


def _flush_horizon_ms(settings: Settings) -> int:
    """How far past a request's broker time the watermark must be before it is tagged."""
    cfg = settings.help
    if cfg.engine is HelpEngine.JOIN:  # the aggregation waits for the join's state watermark
        return int((cfg.window_before_s + cfg.evidence_slack_s) * 1000) + 1
    return int(cfg.window_after_s * 1000) + 1


class Ticker:
    """Produces a tick to the job's tick topic every `interval_s` (a daemon thread)."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import Producer

        self.topic = settings.kafka_topic(settings.help.tick_topic)
        self.interval_s = settings.help.tick_interval_s
        self.producer = Producer({**settings.kafka.client_options(), "linger.ms": 0,
                                  "acks": "all"})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="help-ticker", daemon=True)

    def tick(self) -> None:
        self.producer.produce(self.topic, orjson.dumps({"tick_ms": _now_ms()}))
        self.producer.poll(0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.tick()

    def start(self) -> Ticker:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.producer.flush(5)


class HelpTagSink:
    """foreachBatch: rules -> guard -> Kafka (key help_id, JSON) -> gold.help_tags (once)."""

    def __init__(self, settings: Settings, checkpoint: str) -> None:
        cfg = settings.help
        self.settings = settings
        self.checkpoint = checkpoint
        self.writer = delta_writer(settings)
        self.path = settings.table_path(HELP_TAGS_TABLE)
        self.topic = settings.kafka_topic(cfg.tags_topic)
        if cfg.engine is HelpEngine.JOIN:
            rules = apply_tag_rules(cfg.rules, cfg.priority)
            self.records = lambda df: df.transform(rules).transform(tag_records)
        else:
            self.records = tag_requests(cfg)
        self.app_id: str | None = None
        self.producer = None
        self.known: dict[date, set[str]] = {}
        self.tags = self.skipped = 0

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        spark = batch.sparkSession
        if self.app_id is None:
            self.app_id = streaming_query_id(spark, self.checkpoint)
        table = batch.transform(self.records).toArrow()
        if table.num_rows == 0:
            return
        table = self._new_only(spark, table)
        if table.num_rows == 0:
            return
        table = with_tag_times(table, _now_ms(), self.app_id, batch_id)
        self._publish(table)
        self.writer.append(spark.createDataFrame(table), self.path,
                           partition_by=["request_date"], app_id=self.app_id, version=batch_id)
        for day, help_id in zip(table["request_date"].to_pylist(),
                                table["help_id"].to_pylist(), strict=True):
            self.known.setdefault(day, set()).add(help_id)
        self.tags += table.num_rows

    def _new_only(self, spark: SparkSession, table: pa.Table) -> pa.Table:
        """Drop help_ids tagged before (in gold.help_tags) and repeats within the batch."""
        keep, seen = [], set()
        for i, (day, help_id) in enumerate(zip(table["request_date"].to_pylist(),
                                               table["help_id"].to_pylist(), strict=True)):
            if help_id in seen or help_id in self._known_on(spark, day):
                continue
            seen.add(help_id)
            keep.append(i)
        self.skipped += table.num_rows - len(keep)
        return table.take(keep)

    def _known_on(self, spark: SparkSession, day: date) -> set[str]:
        """help_ids in gold.help_tags for one request date (read once, then kept up to date)."""
        if day not in self.known:
            ids: set[str] = set()
            if self.writer.exists(self.path):
                if isinstance(self.writer, DeltaRsWriter):
                    from deltalake import DeltaTable

                    ids = set(DeltaTable(self.path).to_pyarrow_table(
                        columns=["help_id"], partitions=[("request_date", "=", day.isoformat())]
                    )["help_id"].to_pylist())
                else:
                    ids = {r.help_id for r in self.writer.read(spark, self.path)
                           .where(F.col("request_date") == F.lit(day))
                           .select("help_id").collect()}
            self.known[day] = ids
        return self.known[day]

    def _publish(self, table: pa.Table) -> None:
        from confluent_kafka import Producer

        if self.producer is None:
            self.producer = Producer({**self.settings.kafka.client_options(), "linger.ms": 5,
                                      "acks": "all"})
        failures: list[str] = []

        def on_delivery(err: object, _msg: object) -> None:
            if err is not None:
                failures.append(str(err))

        for row in table.to_pylist():
            self.producer.produce(self.topic, key=row["help_id"].encode(),
                                  value=tag_message(row), on_delivery=on_delivery)
        remaining = self.producer.flush(self.settings.kafka.read_timeout_seconds)
        if remaining or failures:
            raise RuntimeError(f"{self.topic}: {remaining} tags unsent, {len(failures)} failed "
                               f"({failures[:1]})")


def with_tag_times(table: pa.Table, tagged_at_ms: int, query_id: str, batch_id: int) -> pa.Table:
    """Stamp tagged_at and the latencies: request event time and broker time -> tag."""
    n = table.num_rows

    def ms(column: str) -> pa.Array:
        return pc.divide(pc.cast(pc.cast(table[column], pa.timestamp("us", tz="UTC")), pa.int64()),
                         1000)

    tagged = pa.array([tagged_at_ms] * n, pa.int64())
    return (table
            .append_column("tagged_at", pc.cast(pc.multiply(tagged, 1000),
                                                pa.timestamp("us", tz="UTC")))
            .append_column("latency_ms", pc.subtract(tagged, ms("request_time")))
            .append_column("broker_latency_ms", pc.subtract(tagged, ms("request_broker_time")))
            .append_column("query_id", pa.array([query_id] * n, pa.string()))
            .append_column("batch_id", pa.array([batch_id] * n, pa.int64())))


def tag_message(row: dict) -> bytes:
    """The classroom.help.tags value: the tag record as JSON, times in epoch ms."""
    out = {k: v for k, v in row.items() if k not in {"evidence", "request_date"}}
    for key in ("request_time", "request_broker_time", "tagged_at"):
        out[key + "_ms"] = int(out.pop(key).timestamp() * 1000)
    out["evidence"] = orjson.Fragment(row["evidence"])
    return orjson.dumps(out)


@dataclass
class HelpJob:
    query: StreamingQuery
    sink: HelpTagSink
    ticker: Ticker
    until_offsets: dict[str, dict[str, int]] | None  # `--once`: read up to these, then ...
    flush_horizon_ms: int  # ... wait for the watermark to pass the newest record + this
    started: datetime = field(default_factory=lambda: datetime.now(UTC))


def start_help(spark: SparkSession, settings: Settings, *, once: bool) -> HelpJob:
    """Start the help query (and its ticker) on an existing session (CLI, bench, tests)."""
    cfg = settings.help
    ensure_topics(settings.kafka.client_options(),
                  {settings.kafka_topic(cfg.tick_topic): 1,
                   settings.kafka_topic(cfg.tags_topic): settings.topic(cfg.tags_topic).partitions
                   if any(t.name == cfg.tags_topic for t in settings.topics) else 1})
    checkpoint = settings.checkpoint_path("help")
    target = None
    if once:
        target = kafka_end_offsets(settings, [settings.kafka_topic(t) for t in HELP_TOPICS])
    sink = HelpTagSink(settings, checkpoint)
    query = (help_stream(spark, settings, checkpoint).writeStream.queryName("help")
             .option("checkpointLocation", checkpoint)
             .foreachBatch(sink)
             .trigger(processingTime=f"{int(cfg.trigger_seconds * 1000)} milliseconds")
             .start())
    return HelpJob(query, sink, Ticker(settings).start(), target, _flush_horizon_ms(settings))


def _event_time_ms(progress: dict, key: str) -> int | None:
    """`eventTime.<key>` (watermark, max, ...) of a query progress, in epoch ms."""
    value = (progress.get("eventTime") or {}).get(key)
    if not value:
        return None
    return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)


def await_help(job: HelpJob, *, console: Console | None = None, poll_s: float = 0.5
               ) -> tuple[int, int]:
    """Run until Ctrl-C, or (`--once`) until the backlog is read and every window closed.

    A window closes when the watermark passes the request's broker time + window_after_s, so
    `--once` waits, after reading the backlog, until the ticks have moved the watermark past
    the newest record read + that horizon. Records stamped ahead of the wall clock (a
    simulation faster than real time) make it wait until the clock gets there.
    Returns (micro-batches with input, input rows); a failed query raises its exception.
    """
    query, seen, batches, rows = job.query, -1, 0, 0
    read_all, newest, flush_until = False, 0, None
    try:
        while query.isActive:
            query.awaitTermination(poll_s)
            for progress in query.recentProgress:
                if progress["batchId"] <= seen:
                    continue
                seen = progress["batchId"]
                n = int(progress.get("numInputRows") or 0)
                batches, rows = batches + (n > 0), rows + n
                if console is not None and n:
                    console.print(f"[dim]help batch {seen}: {n:,} rows, "
                                  f"{progress['durationMs'].get('triggerExecution', 0):,} ms, "
                                  f"{job.sink.tags} tags so far[/dim]")
                newest = max(newest, _event_time_ms(progress, "max") or 0)
                if job.until_offsets is None:
                    continue
                if not read_all and progress["sources"]:
                    read_all = caught_up(progress["sources"][0].get("endOffset"),
                                         job.until_offsets)
                    if read_all:
                        flush_until = newest + job.flush_horizon_ms
                wm = _event_time_ms(progress, "watermark")
                if flush_until is not None and wm is not None and wm >= flush_until:
                    query.stop()
                    break
    except KeyboardInterrupt:
        query.stop()
    finally:
        job.ticker.stop()
    exc = query.exception()
    if exc is not None:
        raise exc
    return batches, rows


def help_latency(spark: SparkSession, settings: Settings, *, since: datetime | None = None
                 ) -> dict[str, float]:
    """p50/p95/p99 of request -> tag latency (event time and broker time) in gold.help_tags."""
    tags = read_table(spark, settings, HELP_TAGS_TABLE)
    if since is not None:
        tags = tags.where(F.col("tagged_at") >= F.lit(since))
    pct = list(PERCENTILES)
    row = tags.agg(F.count("*").alias("n"),
                   F.percentile("latency_ms", pct).alias("event"),
                   F.percentile("broker_latency_ms", pct).alias("broker")).first()
    out: dict[str, float] = {"tags": float(row["n"])}
    for kind in ("event", "broker"):
        for p, value in zip(pct, row[kind] or [None] * len(pct), strict=True):
            out[f"{kind}_p{int(p * 100)}_ms"] = float("nan") if value is None else float(value)
    return out


@dataclass
class HelpResult:
    batches: int
    rows: int
    tags: int
    skipped: int
    latency: dict[str, float]

    def __str__(self) -> str:
        lines = [f"help: {self.batches} micro-batches, {self.rows:,} input rows, {self.tags} tags "
                 f"({self.skipped} already tagged, skipped)"]
        for kind, label in (("event", "event time"), ("broker", "broker time")):
            if f"{kind}_p50_ms" in self.latency:
                p = [self.latency[f"{kind}_p{q}_ms"] for q in (50, 95, 99)]
                lines.append(f"latency request ({label}) -> tag on Kafka: p50 {p[0]:,.0f} ms, "
                             f"p95 {p[1]:,.0f} ms, p99 {p[2]:,.0f} ms")
        return "\n".join(lines)


def run_help(spark: SparkSession, settings: Settings, *, once: bool,
             console: Console | None = None) -> HelpResult:
    """Start, await and summarise the help job on an existing session."""
    job = start_help(spark, settings, once=once)
    batches, rows = await_help(job, console=console)
    latency: dict[str, float] = {}
    if job.sink.tags and delta_writer(settings).exists(settings.table_path(HELP_TAGS_TABLE)):
        latency = help_latency(spark, settings, since=job.started)
    return HelpResult(batches, rows, job.sink.tags, job.sink.skipped, latency)


def run_help_job(settings: Settings, *, once: bool, console: Console | None = None
                 ) -> HelpResult:
    spark = build_spark(settings, app_name="lakehouse-help")
    try:
        return run_help(spark, settings, once=once, console=console)
    finally:
        spark.stop()


__all__ = ["HELP_TAGS_TABLE", "help_latency", "run_help", "run_help_job", "start_help"]
