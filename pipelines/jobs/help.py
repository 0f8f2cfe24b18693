"""`lakehouse run help`: tag every Help request with its likely root cause within seconds.

The fast path of DESIGN.md: the five topics straight from Kafka (no bronze -> silver hop), the
same `kafka_to_bronze` and `parse_and_validate` as silver, then the window and rules of
pipelines/transforms/help.py. One query:

    Kafka (5 topics + the job's tick topic)
      -> kafka_to_bronze -> withWatermark(kafka_timestamp, help.watermark_delay_s)
      -> help_candidates -> parse_and_validate -> help_signals   requests + fired signals
      -> window: state (default) | join              pairs once a request's window closed
      -> foreachBatch: aggregate + rules -> guard -> Kafka classroom.help.tags -> gold.help_tags

With `resolver.evidence: relay` the job also keeps heartbeats, page turns and
diagnostics replies (heartbeats and page turns unvalidated, see `liveness`), and the window
processor hands them, with the fired signals, to the sink, which publishes them on
`help.relay_topic` for the resolver before the batch's tags (docs/RESOLVER.md, "Inputs").

Why broker time for the watermark: client clocks drift, and an event-time watermark lets one
fast clock push every other classroom's requests behind it. Broker time only moves forward, and
the job's own ticks (a record per `tick_interval_s` on `help.tick_topic`) move it with the wall
clock when the streams are quiet, so the last request before a lull is tagged too, and
`--once` can close every open window before it stops.

Delivery (Kafka, then Delta, exactly once there): pipelines/jobs/help_sink.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery
from rich.console import Console

from pipelines.config import HelpEngine, ResolverEvidence, Settings
from pipelines.io.delta import delta_writer, read_table
from pipelines.io.kafka import caught_up, kafka_end_offsets, read_kafka_stream
from pipelines.io.kafka_admin import ensure_topics
from pipelines.jobs.help_sink import HELP_TAGS_TABLE, HelpTagSink, Ticker
from pipelines.jobs.runner import (
    InputCount,
    new_progress,
    raise_if_failed,
    start_stateful_query,
    stop_on_interrupt,
)
from pipelines.spark import build_spark
from pipelines.transforms.bronze import kafka_to_bronze
from pipelines.transforms.help import (
    EARLY,
    HELP_TOPICS,
    LIVENESS,
    aggregate_evidence,
    help_candidates,
    help_signals,
    join_requests_with_evidence,
)
from pipelines.transforms.help_window import WindowBucket, buffer_requests_with_evidence
from pipelines.transforms.silver import flag_filtered_users
from pipelines.transforms.validate import parse_and_validate

PERCENTILES = (0.5, 0.95, 0.99)


def help_stream(spark: SparkSession, settings: Settings, checkpoint: str) -> DataFrame:
    """The streaming part: Kafka -> pairs (state) or per-request aggregates (join)."""
    cfg = settings.help
    topics = [settings.kafka_topic(t) for t in (*HELP_TOPICS, cfg.tick_topic)]
    if cfg.max_records_per_trigger is not None:
        kafka = settings.kafka.model_copy(
            update={"max_records_per_trigger": cfg.max_records_per_trigger})
        settings = settings.model_copy(update={"kafka": kafka})
    # The watermark sees every record, ticks included (broker time needs no validation); the
    # contract check runs only on records that could matter (help_candidates). No Filter
    # between parse_and_validate and the explode in help_signals: Spark would push it below
    # the parse and evaluate the whole contract check twice, in one oversized expression.
    # Test accounts are flagged as silver flags them (a column, not a Filter): their records
    # are neither evidence nor Help requests.
    delay = f"{int(cfg.watermark_delay_s * 1000)} milliseconds"
    relay = relays_evidence(settings)
    # The state engine closes windows from the ticks of the batch (help_window.py); the join
    # engine only needs them for its watermark.
    tick_topic = topics[-1] if cfg.engine is HelpEngine.STATE else None
    signals = (read_kafka_stream(spark, settings, topics, checkpoint=checkpoint)
               .transform(kafka_to_bronze)
               .withWatermark("kafka_timestamp", delay)
               .transform(help_candidates(cfg.rules, tick_topic, relay=relay))
               .transform(parse_and_validate, (LIVENESS,) if relay else ())
               .transform(flag_filtered_users(settings.silver.filtered_users))
               .transform(help_signals(cfg.rules, tick_topic, relay=relay)))
    if cfg.engine is HelpEngine.JOIN:
        return (signals.transform(join_requests_with_evidence(cfg))
                       .transform(aggregate_evidence(extra_keys=["request_kafka_ts"])))
    return signals.transform(buffer_requests_with_evidence(cfg, relay=relay))


def relays_evidence(settings: Settings) -> bool:
    """Whether the help job relays the resolver's evidence (resolver.evidence: relay)."""
    return (settings.help.engine is HelpEngine.STATE
            and settings.resolver.evidence is ResolverEvidence.RELAY)


def _flush_horizon_ms(settings: Settings) -> int:
    """How far past a request's broker time the watermark must be before it is tagged."""
    cfg = settings.help
    if cfg.engine is HelpEngine.JOIN:  # the aggregation waits for the join's state watermark
        return int((cfg.window_before_s + cfg.evidence_slack_s) * 1000) + 1
    return int(cfg.window_after_s * 1000) + 1


@dataclass
class HelpJob:
    query: StreamingQuery
    sink: HelpTagSink
    ticker: Ticker
    until_offsets: dict[str, dict[str, int]] | None  # `--once`: read up to these, then ...
    flush_horizon_ms: int  # ... wait for the watermark to pass the newest record + this
    started: datetime = field(default_factory=lambda: datetime.now(UTC))

    def stop(self) -> None:
        """Stop the query and its ticker; close the sink's Kafka producer."""
        self.query.stop()
        self.ticker.stop()
        self.sink.close()


def start_help(spark: SparkSession, settings: Settings, *, once: bool) -> HelpJob:
    """Start the help query (and its ticker) on an existing session (CLI, bench, tests)."""
    cfg = settings.help
    ensure_topics(settings.kafka.client_options(),
                  {settings.kafka_topic(name): settings.partitions_of(name)
                   for name in (cfg.tick_topic, cfg.tags_topic, cfg.relay_topic)})
    checkpoint = settings.checkpoint_path("help")
    target = None
    if once:
        target = kafka_end_offsets(settings, [settings.kafka_topic(t) for t in HELP_TOPICS])
    sink = HelpTagSink(settings, checkpoint, relay=relays_evidence(settings))
    query = start_stateful_query(help_stream(spark, settings, checkpoint), settings, name="help",
                                 checkpoint=checkpoint, sink=sink,
                                 trigger_s=cfg.trigger_seconds,
                                 state_partitions=cfg.state_partitions)
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
    query, count = job.query, InputCount()
    read_all, newest, flush_until = False, 0, None
    printed = (0, 0.0)  # (tags, monotonic time) at the last progress line
    try:
        with stop_on_interrupt(query):
            for progress in new_progress(query, poll_s):
                seen = progress["batchId"]
                n = count.add(progress)
                # A line when tags went out, else one every 10 s (ticks make every batch busy).
                if console is not None and (job.sink.tags > printed[0]
                                            or time.monotonic() - printed[1] > 10):
                    printed = (job.sink.tags, time.monotonic())
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
    finally:
        job.ticker.stop()
        job.sink.close()
    raise_if_failed(query)
    return count.batches, count.rows


def window_state(spark: SparkSession, checkpoint: str, batch_id: int | None = None
                 ) -> tuple[int, int]:
    """(evidence rows, open requests) in the help window's state after `batch_id` (None: the
    last committed batch), read back from the checkpoint with Spark's state data source.

    Why not the query progress's `numRowsTotal`: the state is one value per bucket of
    classrooms, so that counts buckets, whatever they hold.
    """
    reader = spark.read.format("statestore").option("stateVarName", "bucket")
    if batch_id is not None:
        reader = reader.option("batchId", batch_id)
    held = [WindowBucket.loads(row.body).held
            for row in reader.load(checkpoint).select("value.body").collect()]
    return sum(e for e, _ in held), sum(r for _, r in held)


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
    _put_percentiles(out, "event", row["event"])
    _put_percentiles(out, "broker", row["broker"])
    # Split by how the tag was decided: early tags wait for batches only, window-closed ones
    # also for window_after_s and the watermark delay (their floor).
    for split in tags.groupBy(F.col(EARLY)).agg(
            F.count("*").alias("n"), F.percentile("latency_ms", pct).alias("event")).collect():
        kind = "early" if split[EARLY] else "closed"
        out[f"{kind}_tags"] = float(split["n"])
        _put_percentiles(out, kind, split["event"])
    return out


def _put_percentiles(out: dict[str, float], kind: str, values: list[float] | None) -> None:
    """`<kind>_p50_ms` ... from a `percentile(..., PERCENTILES)` result (NaN where none)."""
    for p, value in zip(PERCENTILES, values or [None] * len(PERCENTILES), strict=True):
        out[f"{kind}_p{int(p * 100)}_ms"] = float("nan") if value is None else float(value)


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
