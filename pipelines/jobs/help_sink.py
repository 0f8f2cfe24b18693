"""The help job's I/O: the tick producer and the foreachBatch sink (Kafka, then Delta).

The relay (resolver.evidence: relay): the window processor's relay rows, one per bucket of
classrooms and micro-batch, go to `help.relay_topic` before the batch's tags; at least once
(the resolver's evidence takes a repeated row as the same fact).

Delivery: Kafka first, then Delta. Delta gets each batch once (the streaming transaction), and
help_ids already in gold.help_tags are never written or published again; a batch replayed after
a crash between the two writes publishes its tags to Kafka a second time (at least once, same
help_id key), so Kafka consumers dedupe by help_id.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from datetime import date

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.config import HelpEngine, Settings
from pipelines.io.delta import DeltaRsWriter, delta_writer, streaming_query_id
from pipelines.io.kafka import produce_and_flush
from pipelines.transforms.help import (
    EARLY,
    RELAY,
    apply_tag_rules,
    tag_records,
    tag_requests,
)

HELP_TAGS_TABLE = "gold.help_tags"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Ticker:
    """Produces a tick to the job's tick topic every `interval_s` (a daemon thread)."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import Producer

        self.topic = settings.kafka_topic(settings.help.tick_topic)
        self.interval_s = settings.help.tick_interval_s
        self.producer: Producer | None = Producer(
            {**settings.kafka.client_options(), "linger.ms": 0, "acks": "all"})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="help-ticker", daemon=True)

    def tick(self) -> None:
        if self.producer is None:
            raise RuntimeError("the ticker was stopped")
        self.producer.produce(self.topic, orjson.dumps({"tick_ms": now_ms()}))
        self.producer.poll(0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.tick()

    def start(self) -> Ticker:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop ticking and let the producer go (a live one logs every broker disconnect)."""
        self._stop.set()
        self._thread.join(timeout=5)
        if self.producer is not None and not self._thread.is_alive():
            self.producer.flush(5)
            self.producer = None


class HelpTagSink:
    """foreachBatch: rules -> guard -> Kafka (key help_id, JSON) -> gold.help_tags (once)."""

    def __init__(self, settings: Settings, checkpoint: str, *, relay: bool = False) -> None:
        cfg = settings.help
        self.settings = settings
        self.checkpoint = checkpoint
        self.writer = delta_writer(settings)
        self.path = settings.table_path(HELP_TAGS_TABLE)
        self.topic = settings.kafka_topic(cfg.tags_topic)
        self.relay_topic = settings.kafka_topic(cfg.relay_topic) if relay else None
        self.relayed = 0  # relay messages published
        if cfg.engine is HelpEngine.JOIN:
            rules = apply_tag_rules(cfg.rules, cfg.priority)
            self.records = lambda df: (df.transform(rules).withColumn(EARLY, F.lit(False))
                                         .transform(tag_records))
        else:
            self.records = tag_requests(cfg)
        self.app_id: str | None = None
        self.producer = None
        self.known: dict[date, set[str]] = {}
        self.tags = 0
        self.skipped_ids: set[str] = set()  # help_ids whose repeat tag was held back
        self.timings: dict[int, dict[str, float]] = {}  # batch id -> phase -> seconds

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        spark = batch.sparkSession
        if self.app_id is None:
            self.app_id = streaming_query_id(spark, self.checkpoint)
        clock = _Phases(self.timings.setdefault(batch_id, {}))
        if self.relay_topic is None:
            table = batch.transform(self.records).toArrow()
            clock.lap("compute")
        else:
            table = self._relay_then_pairs(batch, clock)
        if table.num_rows == 0:
            return
        # A window-closed tag wins over an early one of the same help_id in one batch.
        table = self._new_only(spark, table.sort_by([("early", "ascending")]))
        if table.num_rows == 0:
            return
        table = with_tag_times(table, now_ms(), self.app_id, batch_id)
        self._publish(table)
        clock.lap("kafka")
        self.writer.append_arrow(spark, table, self.path, partition_by=["request_date"],
                                 app_id=self.app_id, version=batch_id)
        clock.lap("delta")
        for day, help_id in zip(table["request_date"].to_pylist(),
                                table["help_id"].to_pylist(), strict=True):
            self.known.setdefault(day, set()).add(help_id)
        self.tags += table.num_rows

    def _relay_then_pairs(self, batch: DataFrame, clock: _Phases) -> pa.Table:
        """Publish the batch's relay rows; return its tag records. The batch is cached so that
        the two reads of it run the stateful operator once."""
        batch = batch.persist()
        try:
            relay = batch.where(F.col(RELAY).isNotNull()).select(RELAY).toArrow()
            clock.lap("compute")
            if relay.num_rows:  # before the tags are computed: the evidence is waited for
                self._produce([(self.relay_topic, None, v.encode())
                               for v in relay[RELAY].to_pylist()], self.relay_topic)
                self.relayed += relay.num_rows
            clock.lap("relay")
            table = (batch.where(F.col(RELAY).isNull()).drop(RELAY).transform(self.records)
                     .toArrow())
            clock.lap("tags")
        finally:
            batch.unpersist()
        return table

    @property
    def skipped(self) -> int:
        """Distinct help_ids whose tag was held back as a repeat: tagged by an earlier run, or
        tagged early and then reached again by their closed window."""
        return len(self.skipped_ids)

    @property
    def tagged_ids(self) -> int:
        """help_ids known to be in gold.help_tags (read per request date as batches touch
        it): a request tagged early and then window-closed counts once."""
        return sum(len(ids) for ids in self.known.values())

    def close(self) -> None:
        """Deliver what is queued and let the producer go (call once the query stopped)."""
        if self.producer is not None:
            self.producer.flush(10)
            self.producer = None

    def _new_only(self, spark: SparkSession, table: pa.Table) -> pa.Table:
        """Drop help_ids tagged before (in gold.help_tags) and repeats within the batch."""
        keep, seen = [], set()
        for i, (day, help_id) in enumerate(zip(table["request_date"].to_pylist(),
                                               table["help_id"].to_pylist(), strict=True)):
            if help_id in seen or help_id in self._known_on(spark, day):
                self.skipped_ids.add(help_id)
                continue
            seen.add(help_id)
            keep.append(i)
        return table.take(pa.array(keep, pa.int64()))

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
        self._produce(((self.topic, row["help_id"].encode(), tag_message(row))
                       for row in table.to_pylist()), self.topic)

    def _produce(self, messages: Iterable[tuple[str, bytes | None, bytes]], what: str) -> None:
        from confluent_kafka import Producer

        if self.producer is None:
            self.producer = Producer({**self.settings.kafka.client_options(), "linger.ms": 5,
                                      "acks": "all"})
        produce_and_flush(self.producer, messages,
                          timeout_s=self.settings.kafka.read_timeout_seconds, what=what)


class _Phases:
    """Wall seconds of each phase of a batch, into `out` (for the bench and the logs)."""

    def __init__(self, out: dict[str, float]) -> None:
        self.out, self.t = out, time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.out[name] = now - self.t
        self.t = now


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
