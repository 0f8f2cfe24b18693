"""Silver transforms after contract validation: clock sanity, filters, lateness, routing.

Pure `DataFrame -> DataFrame` functions parametrised by closures (and `quality_counts`, which
counts the outcomes the sink already holds, in Arrow). A record is rejected by
the first check that fires; the order is the contract checks (validate.py), then
`unnatural_timestamp`, then `filtered` (test accounts, then topics without a silver table),
then (per micro-batch) `late`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

Transform = Callable[[DataFrame], DataFrame]

# event type -> silver table; the five streams of the contract.
SILVER_TABLES: dict[str, str] = {
    "classroom.av": "silver.av_quality",
    "classroom.signal": "silver.signal",
    "classroom.whiteboard": "silver.whiteboard",
    "classroom.enter": "silver.enter_flow",
    "classroom.help": "silver.help_requests",
}
REJECTS_TABLE = "silver.rejects"


def _reject_when(condition: Column, reason: str, rule: Column | str) -> Transform:
    """Set reason/rule where `condition` holds on a not-yet-rejected row."""
    rule_col = F.lit(rule) if isinstance(rule, str) else rule

    def apply(df: DataFrame) -> DataFrame:
        fire = F.col("reject_reason").isNull() & condition
        return (df.withColumn("reject_rule", F.when(fire, rule_col).otherwise(F.col("reject_rule")))
                  .withColumn("reject_reason",
                              F.when(fire, F.lit(reason)).otherwise(F.col("reject_reason"))))

    return apply


def flag_unnatural_timestamps(max_ahead_s: float, max_behind_s: float) -> Transform:
    """Client clocks far ahead of, or far behind, the broker's receive time are not believable."""
    ahead = F.col("event_time") > F.col("kafka_timestamp") + F.expr(
        f"make_dt_interval(0, 0, 0, {max_ahead_s})")
    behind = F.col("event_time") < F.col("kafka_timestamp") - F.expr(
        f"make_dt_interval(0, 0, 0, {max_behind_s})")

    def apply(df: DataFrame) -> DataFrame:
        return (df.transform(_reject_when(ahead, "unnatural_timestamp",
                                          "event_time:ahead_of_broker"))
                  .transform(_reject_when(behind, "unnatural_timestamp",
                                          "event_time:too_far_behind_broker")))

    return apply


def flag_filtered_users(test_accounts: Sequence[str]) -> Transform:
    """Test accounts and internal users never reach silver; the ledger says why."""
    accounts = list(test_accounts)

    def apply(df: DataFrame) -> DataFrame:
        if not accounts:
            return df
        return df.transform(_reject_when(F.col("user_id").isin(accounts), "filtered",
                                         "user_id:test_account"))

    return apply


def flag_unrouted_topics(topics: Sequence[str]) -> Transform:
    """A record from a topic that has no silver table (bronze may ingest more topics than the
    five streams) is `filtered`: the ledger keeps it, where an accepted row would go nowhere."""
    known = list(topics)

    def apply(df: DataFrame) -> DataFrame:
        return df.transform(_reject_when(~F.col("topic").isin(known), "filtered",
                                         "topic:no_silver_table"))

    return apply


def with_dedup_key(df: DataFrame) -> DataFrame:
    """Key and clock for the dedup operator.

    Accepted rows dedupe by event_id; every rejected row keeps a key of its own. The clock
    (`dedup_time`) is the event time capped at the broker time, so a client clock running ahead
    cannot push the watermark; rejected rows use the broker time, so however odd their client
    clock, the dedup operator never drops them as late.
    """
    valid = F.col("reject_reason").isNull()
    own = F.concat_ws(":", F.lit("reject"), F.col("topic"), F.col("partition").cast("string"),
                      F.col("offset").cast("string"))
    return (df.withColumn("dedup_key", F.when(valid, F.col("event_id")).otherwise(own))
              .withColumn("dedup_time",
                          F.when(valid, F.least("event_time", "kafka_timestamp"))
                          .otherwise(F.col("kafka_timestamp"))))


def flag_late(watermark_ms: int | None) -> Transform:
    """Rows whose event time is behind the batch's event-time watermark are `late`.

    The watermark is stamped on every row so the ledger records what it was.
    """

    def apply(df: DataFrame) -> DataFrame:
        if watermark_ms is None:
            return df.withColumn("watermark", F.lit(None).cast("timestamp"))
        stamped = df.withColumn("watermark", F.timestamp_millis(F.lit(watermark_ms)))
        return stamped.transform(_reject_when(F.col("event_time") < F.col("watermark"), "late",
                                              "event_time:behind_watermark"))

    return apply


ENVELOPE_COLUMNS = ("event_id", "event_type", "schema_version", "team", "classroom_id",
                    "lesson_id", "user_id", "role", "platform", "app_version", "event_time")


ROUTE_COLUMN = "_table"
_COORDINATES = ("topic", "partition", "offset", "kafka_timestamp")


def accepted_columns(payload_fields: Sequence[str], extra_columns: Sequence[str] = ()
                     ) -> list[str]:
    """The columns of one stream's silver table, in order."""
    return [*ENVELOPE_COLUMNS, *payload_fields, *extra_columns, *_COORDINATES, "event_date"]


# The ledger's columns and types, one list: silver routes its rejects into these columns, and
# other writers (the resolver's unreadable tags and relay messages) build rows with these
# types; tests/test_resolver_job.py holds silver's routed rejects to them.
REJECT_FIELDS = (("topic", "string"), ("partition", "int"), ("offset", "bigint"),
                 ("kafka_timestamp", "timestamp"), ("key", "string"), ("value", "string"),
                 ("value_raw", "binary"), ("reject_reason", "string"), ("reject_rule", "string"),
                 ("watermark", "timestamp"), ("batch_id", "bigint"), ("team", "string"),
                 ("event_type", "string"), ("event_id", "string"), ("event_time", "timestamp"),
                 ("rejected_at", "timestamp"), ("reject_date", "date"))
REJECT_COLUMNS = tuple(name for name, _ in REJECT_FIELDS)
REJECT_SCHEMA = ", ".join(f"{name} {kind}" for name, kind in REJECT_FIELDS)
_RAW_RECORD = ("key", "value", "value_raw")


# Ledger columns with one value per micro-batch, which the sink adds on the driver after the
# collect (`ledger_stamps`, `DeltaWriter.append_routed(constants=...)`). As literals in the
# Spark plan they would change every batch, and Spark inlines literals into generated code: the
# batch's main stage would compile a fresh class and JIT-warm it every batch
# (docs/BENCHMARKS.md, 2026-11-28).
LEDGER_STAMPS = ("batch_id", "rejected_at")
UTC_MICROS = pa.timestamp("us", tz="UTC")  # Spark's timestamp in Arrow (session zone UTC)


def ledger_stamps(batch_id: int, at: dt.datetime) -> dict[str, pa.Scalar]:
    """The `LEDGER_STAMPS` of one micro-batch, typed as `REJECT_FIELDS` says."""
    return {"batch_id": pa.scalar(batch_id, pa.int64()),
            "rejected_at": pa.scalar(at, UTC_MICROS)}


def routed_rows(tables: Mapping[str, str], payload_fields: Sequence[str]) -> Transform:
    """Every row of a micro-batch in one frame, with the table it goes to in `ROUTE_COLUMN`.

    An accepted row goes to its stream's silver table (topic -> table in `tables`; every
    topic has one after `flag_unrouted_topics`): payload flattened to typed columns (the
    union of the streams' fields) and `event_date`. A rejected row goes to `REJECTS_TABLE`
    with what the ledger keeps (`REJECT_COLUMNS` but the `LEDGER_STAMPS`): the raw record,
    coordinates, reason, rule, watermark and `reject_date`. One frame, so a micro-batch is
    computed by one Spark job (no cache, no second pass over the stateful plan) and split by
    the writer; the raw record is carried on rejected rows only.
    """

    def apply(df: DataFrame) -> DataFrame:
        rejected = F.col("reject_reason").isNotNull()
        route = F.lit(None).cast("string")
        for topic, table in tables.items():
            route = F.when(F.col("topic") == topic, F.lit(table)).otherwise(route)
        route = F.when(rejected, F.lit(REJECTS_TABLE)).otherwise(route)
        kept = [F.when(rejected, F.col(c)).alias(c) if c in _RAW_RECORD else F.col(c)
                for c in df.columns if c != "payload"]
        payload = [F.col(f"payload.{name}").alias(name) for name in payload_fields]
        return df.select(*kept, *payload,
                         F.to_date("event_time").alias("event_date"),
                         F.to_date("kafka_timestamp").alias("reject_date"),
                         route.alias(ROUTE_COLUMN))

    return apply


# What `quality_counts` reads of a micro-batch's rows.
OUTCOME_COLUMNS = ("team", "reject_reason", "dedup_time")
# The columns and types of `ops.quality_metrics`, in order.
QUALITY_METRICS_SCHEMA = pa.schema([
    pa.field("team", pa.string(), nullable=False),
    pa.field("outcome", pa.string(), nullable=False),
    pa.field("rows", pa.int64(), nullable=False),
    pa.field("max_event_time", UTC_MICROS),
    pa.field("batch_id", pa.int64(), nullable=False),
    pa.field("query_id", pa.string(), nullable=False),
    pa.field("recorded_at", UTC_MICROS, nullable=False),
])


def quality_counts(outcomes: pa.Table, *, batch_id: int, query_id: str,
                   recorded_at: dt.datetime) -> pa.Table:
    """Per team and outcome (accepted or a reject reason): a micro-batch's rows and their
    newest `dedup_time`, as `ops.quality_metrics` rows.

    Arrow, not Spark: the sink already holds the batch's `OUTCOME_COLUMNS` on the driver, and
    handing 300,000 rows back to Spark for a group-by cost more than the rest of the sink
    (the optimizer walks a local relation of every row; docs/BENCHMARKS.md, 2026-11-28).
    """
    team = pc.coalesce(outcomes["team"], pa.scalar("unknown"))
    outcome = pc.coalesce(outcomes["reject_reason"], pa.scalar("accepted"))
    keyed = pa.table({"team": team, "outcome": outcome, "dedup_time": outcomes["dedup_time"]})
    counts = keyed.group_by(["team", "outcome"], use_threads=False).aggregate(
        [([], "count_all"), ("dedup_time", "max")])
    n = counts.num_rows
    return pa.table({
        "team": counts["team"], "outcome": counts["outcome"], "rows": counts["count_all"],
        "max_event_time": counts["dedup_time_max"],
        "batch_id": pa.repeat(pa.scalar(batch_id, pa.int64()), n),
        "query_id": pa.repeat(pa.scalar(query_id), n),
        "recorded_at": pa.repeat(pa.scalar(recorded_at, UTC_MICROS), n),
    }).cast(QUALITY_METRICS_SCHEMA)


@dataclass(frozen=True)
class EventTimeWatermark:
    """Spark's rule: the newest accepted event time (capped at broker time, as `dedup_time`)
    of *earlier* batches minus a delay.

    Lagging one batch keeps a large (backfill) batch from judging its own rows late.
    """

    delay_ms: int

    def for_batch(self, max_before_ms: int | None) -> int | None:
        return None if max_before_ms is None else max_before_ms - self.delay_ms
