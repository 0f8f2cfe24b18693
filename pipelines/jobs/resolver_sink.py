"""The resolver's foreachBatch sink: actions and escalations to Kafka, then gold.help_resolutions.

Delivery, per micro-batch of transitions:
1. skip ACT rows whose action_id, and ESCALATED rows whose help_id, gold.help_resolutions
   already holds (a batch replayed after its Delta commit publishes nothing again);
2. produce the rest (actions keyed by classroom_id, escalations by help_id) and wait for acks;
3. append the batch to gold.help_resolutions with the streaming transaction (query id,
   batch id): a replayed batch is never written twice.

A tag or relay message the resolver cannot read (not JSON, no help_id or classroom_id) comes
out of the processor as a REJECTED row and goes to the reject ledger (silver.rejects, with the
streaming transaction too), never to gold.help_resolutions.

The window left: a crash after 2 and before 3 replays the batch, which derives the same
transitions (same input offsets, same state version, same batch timestamp), and publishes the
same actions again, with the same action_id "<help_id>:<attempt>:<action>". That is why the
action_id is the idempotency key: consumers (the simulator, real clients) apply an action_id
once. Escalations repeat the same way, keyed by help_id.
"""

from __future__ import annotations

import base64
import os
import signal
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession

from pipelines.config import Settings
from pipelines.io.delta import DeltaRsWriter, delta_writer, streaming_query_id
from pipelines.io.kafka import produce_and_flush
from pipelines.transforms.playbook import ACT, ESCALATED, FINAL_STATES
from pipelines.transforms.resolver import REJECTED
from pipelines.transforms.silver import REJECT_COLUMNS, REJECT_SCHEMA, REJECTS_TABLE

HELP_RESOLUTIONS_TABLE = "gold.help_resolutions"
ACTION_FIELDS = ("action_id", "help_id", "classroom_id", "lesson_id", "target_role", "action",
                 "primary_tag", "attempt")


def action_message(row: dict[str, Any]) -> bytes:
    """The classroom.help.actions value (DESIGN.md "Automatic resolution")."""
    return orjson.dumps({**{k: row[k] for k in ACTION_FIELDS},
                         "issued_at_ms": row["transition_ms"]})


class ResolverSink:
    """foreachBatch: guard -> Kafka (actions, escalations) -> gold.help_resolutions (once).

    Also follows every help_id's newest state, so `--once` knows when all cases are final.
    """

    def __init__(self, settings: Settings, checkpoint: str) -> None:
        cfg = settings.resolver
        self.settings = settings
        self.checkpoint = checkpoint
        self.writer = delta_writer(settings)
        self.path = settings.table_path(HELP_RESOLUTIONS_TABLE)
        self.actions_topic = settings.kafka_topic(cfg.actions_topic)
        self.escalations_topic = settings.kafka_topic(cfg.escalations_topic)
        self.app_id: str | None = None
        self.producer: Any = None
        self.known_actions: set[str] = set()
        self.known_escalated: set[str] = set()
        self.last_state: dict[str, str] = {}  # help_id -> newest state written
        self.seeded = False
        self.actions = self.escalations = self.transitions = self.skipped = self.rejected = 0

    @property
    def open_cases(self) -> list[str]:
        return [h for h, s in self.last_state.items() if s not in FINAL_STATES]

    def outcomes(self) -> dict[str, int]:
        """Cases per newest state written (final states, and the open ones by their state)."""
        return dict(Counter(self.last_state.values()))

    def seed(self, spark: SparkSession) -> None:
        """What gold.help_resolutions holds: published action_ids, escalations, open cases."""
        if self.seeded:
            return
        self.seeded = True
        if not self.writer.exists(self.path):
            return
        columns = ["help_id", "state", "seq", "action_id"]
        if isinstance(self.writer, DeltaRsWriter):
            from deltalake import DeltaTable

            rows = DeltaTable(self.path).to_pyarrow_table(columns=columns).to_pylist()
        else:
            rows = [r.asDict() for r in self.writer.read(spark, self.path)
                    .select(*columns).collect()]
        self._remember(sorted(rows, key=lambda r: r["seq"]))

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        spark = batch.sparkSession
        if self.app_id is None:
            self.app_id = streaming_query_id(spark, self.checkpoint)
        self.seed(spark)
        table = batch.toArrow()
        if table.num_rows == 0:
            return
        unreadable = pc.equal(table["state"], REJECTED)
        rejected = table.filter(unreadable).to_pylist()
        if rejected:
            self._ledger(spark, rejected, batch_id)
            table = table.filter(pc.invert(unreadable))
        rows = sorted(table.to_pylist(), key=lambda r: (r["help_id"], r["seq"]))
        actions = [r for r in rows if r["state"] == ACT
                   and r["action_id"] not in self.known_actions]
        escalations = [r for r in rows if r["state"] == ESCALATED
                       and r["help_id"] not in self.known_escalated]
        self.skipped += sum(r["state"] in (ACT, ESCALATED) for r in rows) - len(actions) \
            - len(escalations)
        self._publish(actions, escalations)
        kill_from = self.settings.resolver.kill_after_publish_batch
        if kill_from is not None and batch_id >= kill_from and actions:
            os.kill(os.getpid(), signal.SIGKILL)  # tests: the documented crash window
        self.writer.append_arrow(spark, gold_rows(table, batch_id), self.path,
                                 partition_by=["transition_date"], app_id=self.app_id,
                                 version=batch_id)
        if self.settings.faults.kill_after_delta_commit_batch == batch_id:
            os.kill(os.getpid(), signal.SIGKILL)  # tests: replay after the Delta commit
        self._remember(rows)
        self.actions += len(actions)
        self.escalations += len(escalations)
        self.transitions += len(rows)

    def _ledger(self, spark: SparkSession, rejected: list[dict[str, Any]], batch_id: int
                ) -> None:
        """Unreadable tags and relay messages -> the reject ledger (silver.rejects, the
        streaming transaction makes a replay write them once), so that nothing read is lost
        without a row saying why; `lakehouse rejects replay` can send them again."""
        records = [_ledger_row(r, batch_id) for r in rejected]
        self.rejected += len(records)
        self.writer.append(spark.createDataFrame(records, REJECT_SCHEMA),
                           self.settings.table_path(REJECTS_TABLE), partition_by=["reject_date"],
                           app_id=self.app_id or "", version=batch_id)

    def _remember(self, rows: list[dict[str, Any]]) -> None:
        for r in rows:
            if r["action_id"] is not None:
                self.known_actions.add(r["action_id"])
            if r["state"] == ESCALATED:
                self.known_escalated.add(r["help_id"])
            self.last_state[r["help_id"]] = r["state"]

    def _publish(self, actions: list[dict[str, Any]], escalations: list[dict[str, Any]]
                 ) -> None:
        if not actions and not escalations:
            return
        from confluent_kafka import Producer

        if self.producer is None:
            self.producer = Producer({**self.settings.kafka.client_options(), "linger.ms": 2,
                                      "acks": "all"})
        messages = [*((self.actions_topic, r["classroom_id"].encode(), action_message(r))
                      for r in actions),
                    *((self.escalations_topic, r["help_id"].encode(), r["message"].encode())
                      for r in escalations)]
        produce_and_flush(self.producer, messages,
                          timeout_s=self.settings.kafka.read_timeout_seconds, what="resolver")

    def close(self) -> None:
        if self.producer is not None:
            self.producer.flush(10)
            self.producer = None


def _ledger_row(row: dict[str, Any], batch_id: int) -> tuple:
    """A REJECTED processor row (`message`: the record, `_rejected_record`) -> a ledger row
    in REJECT_COLUMNS' order; the envelope columns stay null (the record has none)."""
    record = orjson.loads(row["message"])
    stamp = datetime.fromtimestamp(record["kafka_timestamp_us"] / 1e6, UTC)
    raw = record.get("value_raw")
    values = {"topic": record["topic"], "partition": record["partition"],
              "offset": record["offset"], "kafka_timestamp": stamp, "key": record.get("key"),
              "value": record.get("value"), "value_raw": base64.b64decode(raw) if raw else None,
              "reject_reason": record["reject_reason"], "reject_rule": record.get("reject_rule"),
              "batch_id": batch_id,
              "rejected_at": datetime.fromtimestamp(row["transition_ms"] / 1000, UTC),
              "reject_date": stamp.date()}
    return tuple(values.get(name) for name in REJECT_COLUMNS)


def gold_rows(table: pa.Table, batch_id: int) -> pa.Table:
    """Processor output -> gold.help_resolutions columns (times as timestamps, batch id)."""
    def ts(column: str) -> pa.Array:
        return pc.cast(pc.multiply(pc.cast(table[column], pa.int64()), 1000),
                       pa.timestamp("us", tz="UTC"))

    transition = ts("transition_ms")
    out = table.drop_columns(["transition_ms", "request_ms", "message"])
    return (out.append_column("escalation", table["message"])
               .append_column("transition_time", transition)
               .append_column("request_time", ts("request_ms"))
               .append_column("transition_date", pc.cast(transition, pa.date32()))
               .append_column("batch_id", pa.array([batch_id] * table.num_rows, pa.int64())))
