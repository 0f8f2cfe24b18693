"""`lakehouse run resolver`: run each tagged Help request's playbook until it is resolved or
escalated (DESIGN.md "Automatic resolution").

One query:

    Kafka (classroom.help.tags + the evidence, one source)
      -> kafka_to_bronze -> resolver_inputs (evidence: topics, the default: the five
                            classroom topics; candidates, the shared validation, rows)
                          | relay_inputs (evidence: relay: the help job's
                            classroom.help.relay, rows as they are)
      -> run_playbooks: per bucket of classrooms, transformWithState + processing-time timers
      -> foreachBatch: Kafka classroom.help.actions / .escalations -> gold.help_resolutions

Why transformWithState: the playbook is timer-driven (confirm timeouts, retries, the total
timeout), and each case sets its own wake-up; applyInPandasWithState has one timeout per group.
Rows, not the pandas flavour: the pandas framing per group is the cost Spark's guide warns of
for many keys (measured for the help window, docs/BENCHMARKS.md). Groups are buckets of
classrooms, each one state value (pipelines/transforms/resolver.py says why and what it
costs). Processing time, not the watermark: a playbook's deadlines are promises
to people in a lesson, and must fire while the streams are quiet.

Why a relay option: the help job reads and filters the five topics anyway, and the resolver
uses a fifth of what it reads of them again. The relay saves that second read (a third of
the JVM executors' CPU at 10,000 lessons), at the price of a help micro-batch on every piece
of evidence (docs/RESOLVER.md, "Inputs"). The relay of a help micro-batch is published before
its tags, so a tag never arrives ahead of the evidence that was read with it.

Delivery (Kafka, then Delta, exactly once there): pipelines/jobs/resolver_sink.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.streaming import StreamingQuery
from rich.console import Console

from pipelines.config import ResolverEvidence, Settings
from pipelines.io.kafka import caught_up, kafka_end_offsets, read_kafka_stream
from pipelines.io.kafka_admin import ensure_topics
from pipelines.jobs.resolver_sink import HELP_RESOLUTIONS_TABLE, ResolverSink
from pipelines.jobs.runner import (
    InputCount,
    new_progress,
    raise_if_failed,
    start_stateful_query,
    stop_on_interrupt,
)
from pipelines.transforms.bronze import kafka_to_bronze
from pipelines.transforms.help import HELP_TOPICS
from pipelines.transforms.resolver import relay_inputs, resolver_inputs, run_playbooks


def resolver_stream(spark: SparkSession, settings: Settings, checkpoint: str) -> DataFrame:
    """The streaming part: Kafka -> one row per case transition."""
    cfg = settings.resolver
    tags_topic = settings.kafka_topic(settings.help.tags_topic)
    relay = cfg.evidence is ResolverEvidence.RELAY
    evidence = [settings.help.relay_topic] if relay else list(HELP_TOPICS)
    topics = [*(settings.kafka_topic(t) for t in evidence), tags_topic]
    if cfg.max_records_per_trigger is not None:
        kafka = settings.kafka.model_copy(
            update={"max_records_per_trigger": cfg.max_records_per_trigger})
        settings = settings.model_copy(update={"kafka": kafka})
    inputs = (relay_inputs(tags_topic) if relay
              else resolver_inputs(settings.help.rules, tags_topic,
                                   settings.silver.filtered_users))
    return (read_kafka_stream(spark, settings, topics, checkpoint=checkpoint)
            .transform(kafka_to_bronze)
            .transform(inputs)
            .transform(run_playbooks(cfg)))


@dataclass
class ResolverJob:
    query: StreamingQuery
    sink: ResolverSink
    until_offsets: dict[str, dict[str, int]] | None  # `--once`: the tags there at the start

    def stop(self) -> None:
        """Stop the query; close the sink's Kafka producer."""
        self.query.stop()
        self.sink.close()


def _topics_to_create(settings: Settings) -> dict[str, int]:
    wanted = [settings.help.tags_topic, settings.help.relay_topic,
              settings.resolver.actions_topic, settings.resolver.escalations_topic, *HELP_TOPICS]
    return {settings.kafka_topic(n): settings.partitions_of(n) for n in wanted}


def start_resolver(spark: SparkSession, settings: Settings, *, once: bool) -> ResolverJob:
    """Start the resolver query on an existing session (CLI, demo, tests)."""
    ensure_topics(settings.kafka.client_options(), _topics_to_create(settings))
    checkpoint = settings.checkpoint_path("resolver")
    target = None
    if once:
        target = kafka_end_offsets(settings, [settings.kafka_topic(settings.help.tags_topic)])
    sink = ResolverSink(settings, checkpoint)
    query = start_stateful_query(resolver_stream(spark, settings, checkpoint), settings,
                                 name="resolver", checkpoint=checkpoint, sink=sink,
                                 trigger_s=settings.resolver.trigger_seconds,
                                 state_partitions=settings.resolver.state_partitions)
    return ResolverJob(query, sink, target)


def await_resolver(job: ResolverJob, settings: Settings, *, console: Console | None = None,
                   poll_s: float = 0.5) -> tuple[int, int]:
    """Run until Ctrl-C, or (`--once`) until the tags there at the start are read and every
    case reached a final state (at most the total timeout later, since every case escalates
    by then). Returns (micro-batches with input, input rows); a failed query raises."""
    query, count = job.query, InputCount()
    read_all_at: float | None = None
    limit_s = settings.resolver.total_timeout_s + 30
    printed = -1

    def finished() -> bool:
        return read_all_at is not None and (
            not job.sink.open_cases or time.monotonic() - read_all_at > limit_s)

    try:
        with stop_on_interrupt(query):
            for progress in new_progress(query, poll_s, stop_when=finished):
                seen = progress["batchId"]
                n = count.add(progress)
                if console is not None and job.sink.transitions != printed:
                    printed = job.sink.transitions
                    console.print(f"[dim]resolver batch {seen}: {n:,} rows, "
                                  f"{job.sink.actions} actions, {job.sink.escalations} "
                                  f"escalations, {len(job.sink.open_cases)} open[/dim]")
                if (job.until_offsets is not None and read_all_at is None
                        and progress["sources"]
                        and caught_up(progress["sources"][0].get("endOffset"),
                                      job.until_offsets)):
                    read_all_at = time.monotonic()
    finally:
        job.sink.close()
    raise_if_failed(query)
    return count.batches, count.rows


@dataclass
class ResolverResult:
    batches: int
    rows: int
    transitions: int
    actions: int
    escalations: int
    skipped: int
    open_cases: int
    rejected: int = 0

    def __str__(self) -> str:
        return (f"resolver: {self.batches} micro-batches, {self.rows:,} input rows, "
                f"{self.transitions} transitions, {self.actions} actions and "
                f"{self.escalations} escalations published ({self.skipped} already published, "
                f"skipped), {self.open_cases} cases still open, {self.rejected} unreadable "
                f"records to the reject ledger")


def run_resolver(spark: SparkSession, settings: Settings, *, once: bool,
                 console: Console | None = None) -> ResolverResult:
    """Start, await and summarise the resolver on an existing session."""
    job = start_resolver(spark, settings, once=once)
    batches, rows = await_resolver(job, settings, console=console)
    s = job.sink
    return ResolverResult(batches, rows, s.transitions, s.actions, s.escalations, s.skipped,
                          len(s.open_cases), s.rejected)


def run_resolver_job(settings: Settings, *, once: bool, console: Console | None = None
                     ) -> ResolverResult:
    from pipelines.spark import build_spark

    spark = build_spark(settings, app_name="lakehouse-resolver")
    try:
        return run_resolver(spark, settings, once=once, console=console)
    finally:
        spark.stop()


__all__ = ["HELP_RESOLUTIONS_TABLE", "run_resolver", "run_resolver_job", "start_resolver"]
