"""Silver's record-level transforms on small inline frames: filters, lateness and routing.

The end-to-end runs (test_silver.py) show every simulated kind lands with its reason; these
pin each transform's own rule, including inputs the simulator does not make (a topic bronze
ingests without a silver table).
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.transforms.silver import (
    QUALITY_METRICS_SCHEMA,
    REJECTS_TABLE,
    ROUTE_COLUMN,
    flag_filtered_users,
    flag_late,
    flag_unrouted_topics,
    quality_counts,
    routed_rows,
)

T0 = dt.datetime(2026, 11, 26, 12, 0, 0)
SCHEMA = ("topic string, offset long, user_id string, event_time timestamp,"
          " kafka_timestamp timestamp, key binary, value string, value_raw binary,"
          " payload struct<rtt_ms: bigint, page: bigint>,"
          " reject_reason string, reject_rule string")


def rows(spark: SparkSession, *records: tuple) -> DataFrame:
    """(topic, offset, user_id, seconds after T0, reject_reason) -> a validated-batch frame."""
    data = [(topic, offset, user, T0 + dt.timedelta(seconds=s), T0, b"k", "{}", b"{}",
             {"rtt_ms": offset, "page": None}, reason, reason and "some:rule")
            for topic, offset, user, s, reason in records]
    return spark.createDataFrame(data, SCHEMA)


def assert_verdicts(df: DataFrame, *expected: tuple) -> None:
    """(offset, reject_reason, reject_rule) of every row, in offset order."""
    want = df.sparkSession.createDataFrame(
        list(expected), "offset long, reject_reason string, reject_rule string")
    got = df.select("offset", "reject_reason", "reject_rule").orderBy("offset")
    assert_df_equality(got, want, ignore_nullable=True)


@pytest.mark.parametrize("transform, records, expected", [
    pytest.param(  # test accounts are filtered; an earlier reject keeps its reason
        flag_filtered_users(["qa-bot", "test-user-0001"]),
        [("classroom.av", 0, "u-1"), ("classroom.av", 1, "qa-bot"),
         ("classroom.av", 2, "qa-bot", "bad_type")],
        [(0, None, None), (1, "filtered", "user_id:test_account"), (2, "bad_type", "some:rule")],
        id="test-account"),
    pytest.param(  # a topic without a silver table goes to the ledger, not nowhere
        flag_unrouted_topics(["classroom.av", "classroom.help"]),
        [("classroom.av", 0, "u-1"), ("classroom.chat", 1, "u-1"),
         ("classroom.chat", 2, "u-1", "malformed_json")],
        [(0, None, None), (1, "filtered", "topic:no_silver_table"),
         (2, "malformed_json", "some:rule")],
        id="unrouted-topic"),
])
def test_filters_set_reason_and_rule(spark, transform, records, expected) -> None:
    batch = rows(spark, *[(topic, offset, user, 0, reason[0] if reason else None)
                          for topic, offset, user, *reason in records])
    assert_verdicts(batch.transform(transform), *expected)


@pytest.mark.parametrize("watermark_s, late_offsets", [(None, []), (-1, []), (5, [0, 1])])
def test_rows_behind_the_watermark_are_late(spark, watermark_s, late_offsets) -> None:
    batch = rows(spark, ("classroom.av", 0, "u-1", 0, None), ("classroom.av", 1, "u-1", 4, None),
                 ("classroom.av", 2, "u-1", 5, None), ("classroom.av", 3, "u-1", 0, "bad_type"))
    watermark_ms = (None if watermark_s is None
                    else int((T0.replace(tzinfo=dt.UTC).timestamp() + watermark_s) * 1000))
    out = batch.transform(flag_late(watermark_ms)).collect()
    assert sorted(r.offset for r in out if r.reject_reason == "late") == late_offsets
    assert next(r for r in out if r.offset == 3).reject_reason == "bad_type"
    stamped = {r.watermark for r in out}
    assert len(stamped) == 1 and (stamped.pop() is None) == (watermark_s is None)


def test_routing_sends_accepted_rows_to_their_table_and_rejects_to_the_ledger(spark) -> None:
    batch = rows(spark, ("classroom.av", 0, "u-1", 0, None),
                 ("classroom.help", 1, "u-1", 0, None),
                 ("classroom.av", 2, "u-1", 0, "bad_type"))
    tables = {"classroom.av": "silver.av_quality", "classroom.help": "silver.help_requests"}
    out = {r.offset: r for r in
           batch.transform(routed_rows(tables, ["rtt_ms", "page"])).collect()}
    assert [out[i][ROUTE_COLUMN] for i in range(3)] == [
        "silver.av_quality", "silver.help_requests", REJECTS_TABLE]
    assert out[0].rtt_ms == 0 and out[1].rtt_ms == 1 and out[0].page is None
    # The raw record is carried on rejected rows only.
    assert [(out[i].key, out[i].value) for i in range(3)] == [
        (None, None), (None, None), (bytearray(b"k"), "{}")]
    # The per-batch stamps are not in the plan (the sink adds them after the collect).
    assert not {"batch_id", "rejected_at"} & set(out[0].asDict())
    assert out[2].reject_date == T0.date() and out[0].event_date == T0.date()


def test_quality_counts_count_each_team_and_outcome_as_spark_would(spark) -> None:
    """The Arrow counts of the sink equal a Spark group-by of the same outcomes: a row without a
    team counts as `unknown`, a row without a reason as `accepted`, a null time is skipped."""
    t = [dt.datetime(2026, 11, 26, 12, 0, s, tzinfo=dt.UTC) for s in range(4)]
    outcomes = pa.table({
        "team": ["av", "av", None, "av", "help", "av"],
        "reject_reason": [None, None, "malformed_json", "late", None, None],
        "dedup_time": pa.array([t[0], t[2], t[1], t[3], None, t[1]], pa.timestamp("us", tz="UTC")),
    })
    got = quality_counts(outcomes, batch_id=4, query_id="q-1", recorded_at=t[0])
    assert got.schema == QUALITY_METRICS_SCHEMA
    expected = (spark.createDataFrame(outcomes)
                .groupBy(F.coalesce("team", F.lit("unknown")).alias("team"),
                         F.coalesce("reject_reason", F.lit("accepted")).alias("outcome"))
                .agg(F.count("*").alias("rows"), F.max("dedup_time").alias("max_event_time"))
                .select("*", F.lit(4).cast("long").alias("batch_id"),
                        F.lit("q-1").alias("query_id"),
                        F.lit(t[0]).cast("timestamp").alias("recorded_at")))
    assert_df_equality(spark.createDataFrame(got), expected, ignore_row_order=True,
                       ignore_nullable=True)
    by_key = {(r["team"], r["outcome"]): r for r in got.to_pylist()}
    assert by_key[("av", "accepted")]["rows"] == 3
    assert by_key[("av", "accepted")]["max_event_time"] == t[2]
    assert by_key[("unknown", "malformed_json")]["rows"] == 1
    assert by_key[("help", "accepted")]["max_event_time"] is None
