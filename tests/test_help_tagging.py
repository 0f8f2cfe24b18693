"""Help tagging: signals, the window, the rules (inline frames), and the job against the truth."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime

import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession

from pipelines.config import HELP_TAGS, HelpConfig, HelpRulesConfig
from pipelines.io.kafka_source import KAFKA_SCHEMA
from pipelines.transforms.help import (
    EVIDENCE_COLUMNS,
    PAIR_SCHEMA,
    STATE_PAIR_SCHEMA,
    aggregate_evidence,
    apply_tag_rules,
    help_signals,
    tag_requests,
    window_pairs,
)
from pipelines.transforms.silver import flag_filtered_users
from schemas.contract import envelope_spark_schema

RULES = HelpRulesConfig()
PRIORITY = list(HELP_TAGS)
T0 = 1_790_000_000_000
REQUEST = {"help_id": "h1", "classroom_id": "c1", "lesson_id": "l1", "requester_id": "u1",
           "requester_role": "student", "category": "cannot_hear", "request_time_ms": T0,
           "request_kafka_ms": T0}


def pair(signal: str | None = None, role: str = "teacher", n: int = 0, dt_ms: int = -1000,
         **values: object) -> dict:
    """One (request, evidence) pair of REQUEST; `signal=None` is the request alone."""
    ev = dict.fromkeys(EVIDENCE_COLUMNS)
    if signal is not None:
        ev.update(event_id=f"{signal}-{role}-{n}", signal=signal, role=role,
                  event_time_ms=T0 + dt_ms, kafka_time_ms=T0 + dt_ms, **values)
    return {**REQUEST, **ev}


def pairs_df(spark: SparkSession, rows: list[dict]) -> DataFrame:
    return spark.createDataFrame(rows, PAIR_SCHEMA)


def tagged(spark: SparkSession, rows: list[dict], rules: HelpRulesConfig = RULES,
           priority: list[str] = PRIORITY) -> DataFrame:
    return (pairs_df(spark, rows).transform(aggregate_evidence())
            .transform(apply_tag_rules(rules, priority))
            .select("help_id", "tags", "primary_tag"))


def expect(spark: SparkSession, tags: list[str]) -> DataFrame:
    return spark.createDataFrame([("h1", tags, tags[0])],
                                 "help_id string, tags array<string>, primary_tag string")


def many(signal: str, k: int, role: str = "teacher", **values: object) -> list[dict]:
    return [pair(signal, role, n=i, dt_ms=-2000 * (i + 1), **values) for i in range(k)]


# ------------------------------------------------------------------------------------ rules
@pytest.mark.parametrize(("rows", "tags"), [
    ([pair()], ["NO_ISSUE_DETECTED"]),
    (many("bad_network_sample", 3, packet_loss_pct=22.0, rtt_ms=120),
     ["TEACHER_NETWORK"]),
    (many("bad_network_sample", 2, "student", packet_loss_pct=22.0), ["NO_ISSUE_DETECTED"]),
    ([pair("disconnect", "student")], ["STUDENT_NETWORK"]),
    ([pair("mic_muted", "teacher")], ["TEACHER_MIC_MUTED"]),
    ([pair("mic_muted", "student")], ["STUDENT_MIC_MUTED"]),
    ([pair("video_freeze", "student", freeze_count=3)], ["NO_ISSUE_DETECTED"]),
    (many("video_freeze", 2, "student", freeze_count=3), ["VIDEO_FREEZE"]),
    ([pair("wb_load_fail", detail="WB_HTTP_404")], ["WHITEBOARD_LOAD_FAIL"]),
    ([pair("enter_fail", "student", detail="E_AUTH_EXPIRED")], ["STUDENT_NOT_ENTERED"]),
    ([pair("enter_fail", "student", n=1), pair("enter_success", "student", n=2)],
     ["NO_ISSUE_DETECTED"]),
    ([pair("enter_fail", "teacher", n=1), pair("enter_success", "student", n=2)],
     ["TEACHER_NOT_ENTERED"]),
    ([*many("bad_network_sample", 4, "student", rtt_ms=1500), pair("mic_muted", "teacher"),
      pair("enter_fail", "teacher", n=9)],
     ["TEACHER_NOT_ENTERED", "STUDENT_NETWORK", "TEACHER_MIC_MUTED"]),
])
def test_rules_fire_on_thresholds_and_rank_by_priority(spark, rows, tags) -> None:
    assert_df_equality(tagged(spark, rows), expect(spark, tags), ignore_nullable=True)


def test_a_resent_event_counts_once(spark) -> None:
    twice = many("bad_network_sample", 2, packet_loss_pct=30.0)
    rows = [*twice, twice[0]]  # the same event_id again: still two samples, under 3
    assert_df_equality(tagged(spark, rows), expect(spark, ["NO_ISSUE_DETECTED"]),
                       ignore_nullable=True)


def test_thresholds_and_priority_come_from_conf(spark) -> None:
    rules = HelpRulesConfig(network_min_samples=2, network_disconnects=0, freeze_min_samples=1)
    rows = [*many("bad_network_sample", 2, packet_loss_pct=30.0),
            pair("video_freeze", "student", n=7, freeze_count=1),
            pair("disconnect", "student", n=8)]
    priority = HelpConfig(priority=["VIDEO_FREEZE"]).priority
    assert_df_equality(tagged(spark, rows, rules, priority),
                       expect(spark, ["VIDEO_FREEZE", "TEACHER_NETWORK"]), ignore_nullable=True)


def test_evidence_names_what_fired_each_tag(spark) -> None:
    rows = [*many("bad_network_sample", 3, packet_loss_pct=12.5, rtt_ms=900),
            pair("wb_load_fail", n=5, detail="WB_HTTP_503"),
            pair("wb_load_fail", n=6, detail="WB_CDN_TIMEOUT")]
    closed = [{**r, "early": False} for r in rows]  # cut when the window closed
    out = (spark.createDataFrame(closed, STATE_PAIR_SCHEMA).transform(tag_requests(HelpConfig()))
           .select("help_id", "tags", "evidence", "evidence_events", "request_time")).first()
    assert out.tags == ["TEACHER_NETWORK", "WHITEBOARD_LOAD_FAIL"]
    assert json.loads(out.evidence) == {
        "TEACHER_NETWORK": {"bad_samples": 3, "max_packet_loss_pct": 12.5, "max_rtt_ms": 900,
                            "disconnects": 0},
        "WHITEBOARD_LOAD_FAIL": {"load_fails": 2,
                                 "error_codes": ["WB_CDN_TIMEOUT", "WB_HTTP_503"]}}
    assert out.evidence_events == 5
    assert out.request_time == datetime.fromtimestamp(T0 / 1000, UTC).replace(tzinfo=None)


def test_priority_rejects_unknown_tags() -> None:
    with pytest.raises(ValueError, match="BOGUS"):
        HelpConfig(priority=["BOGUS"])
    assert HelpConfig(priority=["VIDEO_FREEZE"]).priority[0] == "VIDEO_FREEZE"
    assert sorted(HelpConfig(priority=["VIDEO_FREEZE"]).priority) == sorted(HELP_TAGS)


# ------------------------------------------------------------------------------------ window
def test_early_pairs_tag_only_when_their_primary_tag_may_be_decided_early(spark) -> None:
    """Pairs cut when the request arrived become a tag only for an `early_tags` primary tag;
    the window-closed pairs of a request always do."""
    cfg = HelpConfig(early_tags=["TEACHER_NETWORK"])
    network = many("bad_network_sample", 3, packet_loss_pct=30.0)
    muted = [{**r, "help_id": "h2"} for r in [pair("mic_muted", "teacher")]]
    alone = [{**pair(), "help_id": "h3"}]
    rows = [{**r, "early": early} for early in (True, False) for r in (*network, *muted, *alone)]
    got = (spark.createDataFrame(rows, STATE_PAIR_SCHEMA).transform(tag_requests(cfg))
           .select("help_id", "primary_tag", "early"))
    want = spark.createDataFrame(
        [("h1", "TEACHER_NETWORK", True), ("h1", "TEACHER_NETWORK", False),
         ("h2", "TEACHER_MIC_MUTED", False), ("h3", "NO_ISSUE_DETECTED", False)],
        "help_id string, primary_tag string, early boolean")
    assert_df_equality(got, want, ignore_row_order=True, ignore_nullable=True)
    never = HelpConfig(early_tags=[])
    assert spark.createDataFrame(rows, STATE_PAIR_SCHEMA).transform(
        tag_requests(never)).where("early").count() == 0


def test_early_tags_must_be_known() -> None:
    with pytest.raises(ValueError, match="unknown tags"):
        HelpConfig(early_tags=["TEACHER_NETWORK", "SOLAR_FLARE"])


def test_window_is_inclusive_and_a_request_alone_still_yields_a_row() -> None:
    ev = [{**dict.fromkeys(EVIDENCE_COLUMNS), "event_id": str(dt), "event_time_ms": T0 + dt}
          for dt in (-60_001, -60_000, 0, 5_000, 5_001)]
    got = [p["event_id"] for p in window_pairs(REQUEST, ev, 60_000, 5_000)]
    assert got == ["-60000", "0", "5000"]
    alone = list(window_pairs(REQUEST, ev[:1], 60_000, 5_000))
    assert len(alone) == 1 and alone[0]["event_id"] is None and alone[0]["help_id"] == "h1"


def test_join_variant_pairs_the_same_window(spark) -> None:
    from pipelines.transforms.help import join_requests_with_evidence

    ts = datetime.fromtimestamp(T0 / 1000, UTC)
    schema = ("classroom_id string, kafka_timestamp timestamp, kafka_time_ms long, "
              "event_time_ms long, event_id string, role string, lesson_id string, "
              "user_id string, help_id string, category string, packet_loss_pct double, "
              "rtt_ms long, freeze_count long, detail string, signal string")

    def row(classroom: str, event_id: str, dt_ms: int, signal: str, help_id: str | None = None
            ) -> tuple:
        return (classroom, ts, T0, T0 + dt_ms, event_id, "teacher", "l1", "u1", help_id,
                "other" if help_id else None, None, None, None, None, signal)

    signals = spark.createDataFrame([
        row("c1", "r1", 0, "request", "h1"), row("c2", "r2", 0, "request", "h2"),
        row("c1", "in", -60_000, "mic_muted"), row("c1", "late", 5_000, "mic_muted"),
        row("c1", "old", -60_001, "mic_muted"), row("c1", "after", 5_001, "mic_muted"),
        row("c2", "too-old", -90_000, "disconnect")], schema)
    got = (signals.transform(join_requests_with_evidence(HelpConfig()))
           .select("help_id", "event_id"))
    expected = spark.createDataFrame([("h1", "in"), ("h1", "late"), ("h2", None)],
                                     "help_id string, event_id string")
    assert_df_equality(got, expected, ignore_nullable=True, ignore_row_order=True)


# ------------------------------------------------------------------------------------ signals
def validated(spark: SparkSession, rows: list[dict]) -> DataFrame:
    """Frames shaped like parse_and_validate's output (the columns help_signals reads)."""
    envelope = envelope_spark_schema()
    schema = ("reject_reason string, reject_rule string, kafka_timestamp timestamp, "
              "event_time_ms long, event_id string, event_type string, classroom_id string, "
              "lesson_id string, user_id string, role string, "
              f"payload {envelope['payload'].dataType.simpleString()}")
    ts = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    base = {"reject_reason": None, "reject_rule": None, "kafka_timestamp": ts,
            "event_time_ms": T0, "lesson_id": "l1", "classroom_id": "c1", "user_id": "u1",
            "role": "teacher"}
    full = [{**base, **r} for r in rows]
    return spark.createDataFrame(full, schema)


def test_signals_keep_requests_and_fired_evidence_only(spark) -> None:
    av = {"event_type": "av.quality"}
    rows = [
        {**av, "event_id": "healthy", "payload": {"direction": "up", "media": "audio",
                                                  "packet_loss_pct": 1.0, "rtt_ms": 80,
                                                  "freeze_count": 0, "mic_muted": False}},
        {**av, "event_id": "lossy-muted", "payload": {"direction": "up", "media": "audio",
                                                      "packet_loss_pct": 10.0, "rtt_ms": 80,
                                                      "freeze_count": 0, "mic_muted": True}},
        {**av, "event_id": "frozen", "payload": {"direction": "down", "media": "video",
                                                 "packet_loss_pct": 0.0, "rtt_ms": 800,
                                                 "freeze_count": 2}},
        {"event_type": "enter.step", "event_id": "fail",
         "payload": {"step": "enter_fail", "error_code": "E_JOIN_TIMEOUT"}},
        {"event_type": "enter.step", "event_id": "auth", "payload": {"step": "auth"}},
        {"event_type": "help.request", "event_id": "req",
         "payload": {"help_id": "h9", "category": "other"}},
        {"event_type": "wb.load_fail", "event_id": "rejected", "reject_reason": "missing_field",
         "payload": {"error_code": "X"}},
    ]
    out = validated(spark, rows).transform(help_signals(RULES)).select(
        "event_id", "signal", "help_id", "detail")
    expected = spark.createDataFrame([
        ("lossy-muted", "bad_network_sample", None, None), ("lossy-muted", "mic_muted", None, None),
        ("frozen", "bad_network_sample", None, None), ("frozen", "video_freeze", None, None),
        ("fail", "enter_fail", None, "E_JOIN_TIMEOUT"), ("req", "request", "h9", None),
    ], "event_id string, signal string, help_id string, detail string")
    assert_df_equality(out, expected, ignore_nullable=True, ignore_row_order=True)


def test_test_accounts_give_no_signal_and_no_request(spark) -> None:
    """The help job flags test accounts as silver does (`flag_filtered_users`), so neither
    their fired evidence nor their Help presses reach the window."""
    lossy = {"direction": "up", "media": "audio", "packet_loss_pct": 50.0, "rtt_ms": 80,
             "freeze_count": 0, "mic_muted": False}
    rows = [{"event_type": "av.quality", "event_id": "real", "payload": lossy},
            {"event_type": "av.quality", "event_id": "qa", "user_id": "qa-bot", "payload": lossy},
            {"event_type": "help.request", "event_id": "qa-req", "user_id": "qa-bot",
             "payload": {"help_id": "h-qa", "category": "other"}}]
    out = (validated(spark, rows).transform(flag_filtered_users(["qa-bot"]))
           .transform(help_signals(RULES)).select("event_id", "signal"))
    expected = spark.createDataFrame([("real", "bad_network_sample")],
                                     "event_id string, signal string")
    assert_df_equality(out, expected, ignore_nullable=True)


def test_candidates_keep_every_record_that_yields_a_signal(spark) -> None:
    """The pre-validation filter only skips records that could not matter: on a simulated
    class with faults and every kind of bad input, signals are the same with and without it."""
    from pipelines.config import BadInputShares, SimulatorConfig
    from pipelines.simulator import generate_events
    from pipelines.transforms.bronze import kafka_to_bronze
    from pipelines.transforms.help import help_candidates
    from pipelines.transforms.validate import parse_and_validate

    shares = BadInputShares(malformed_json=0.01, missing_field=0.01, wrong_type=0.01,
                            unknown_event_type=0.01, unknown_schema_version=0.01,
                            unnatural_timestamp=0.01, late=0.01, duplicate=0.01)
    config = SimulatorConfig(help_share=0.8, bad_input=shares)
    ts = datetime.now(UTC)
    records = [(e.key, e.value, e.topic, 0, i, ts, 0)
               for i, e in enumerate(generate_events(config, 12, 90, seed=5, start_ms=T0))]
    bronze = spark.createDataFrame(records, KAFKA_SCHEMA).transform(kafka_to_bronze).cache()

    def signals(df: DataFrame) -> DataFrame:
        return (df.transform(parse_and_validate).transform(help_signals(RULES))
                .select("event_id", "signal", "help_id"))

    candidates = bronze.transform(help_candidates(RULES)).cache()
    assert candidates.count() < bronze.count() / 5
    assert_df_equality(signals(candidates), signals(bronze), ignore_row_order=True)
    assert signals(bronze).where("signal = 'request'").count() >= 6


# ------------------------------------------------------------------------------------ sink
def test_tag_times_and_kafka_message() -> None:
    import pyarrow as pa

    from pipelines.jobs.help_sink import tag_message, with_tag_times

    t = datetime.fromtimestamp(T0 / 1000, UTC)
    table = pa.table({"help_id": ["h1"], "tags": [["VIDEO_FREEZE"]], "evidence": ['{"a":1}'],
                      "request_time": pa.array([t], pa.timestamp("us", tz="UTC")),
                      "request_broker_time": pa.array([t], pa.timestamp("us", tz="UTC")),
                      "request_date": [t.date()]})
    out = with_tag_times(table, T0 + 6_500, "q", 7).to_pylist()[0]
    assert (out["latency_ms"], out["broker_latency_ms"], out["batch_id"]) == (6500, 6500, 7)
    message = json.loads(tag_message(out))
    assert message["evidence"] == {"a": 1} and message["tagged_at_ms"] == T0 + 6_500
    assert message["request_time_ms"] == T0 and message["tags"] == ["VIDEO_FREEZE"]


# ------------------------------------------------------------------------------------ e2e
def _consume_all(settings, topic: str) -> list[tuple[bytes, bytes]]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**settings.kafka.client_options(), "group.id": "test-help-tags",
                         "enable.auto.commit": False})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in parts}
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        out: list[tuple[bytes, bytes]] = []
        done = {p for p, end in ends.items() if end == 0}
        # tansu reports the newest record batch's first offset + 1 as the end, so read on
        # until the topic has been quiet for a while past it.
        while True:
            msg = consumer.poll(2 if len(done) == len(parts) else 10)
            if msg is None:
                assert len(done) == len(parts), "tags topic ended early"
                return out
            if msg.error() is None:
                out.append((msg.key(), msg.value()))
                if msg.offset() + 1 >= ends[msg.partition()]:
                    done.add(msg.partition())
    finally:
        consumer.close()


def _remove_for_good(spark, path: str, quiet_s: float = 3, attempts: int = 5) -> None:
    """Delete a stopped query's checkpoint. Spark's state store maintenance (every 60 s by
    default) may still upload the stopped query's RocksDB snapshot (the file-system checkpoint
    manager recreates missing directories): on a slow host it did so after 3 quiet seconds,
    and the next run found state on batch 0. So first unload every state store of the session
    (no query runs here), then delete until the path stays gone."""
    import shutil
    import time
    from pathlib import Path

    state = spark._jvm.org.apache.spark.sql.execution.streaming.state
    getattr(state, "StateStore$").__getattr__("MODULE$").stop()
    for _ in range(attempts):
        shutil.rmtree(path, ignore_errors=True)
        time.sleep(quiet_s)
        if not Path(path).exists():
            return
    raise AssertionError(f"{path} keeps coming back")


def precision_recall(truth: dict[str, str], got: dict[str, str]) -> dict[str, tuple[float, float]]:
    out = {}
    for tag in set(truth.values()) | set(got.values()):
        tp = sum(1 for h, t in truth.items() if t == tag and got.get(h) == tag)
        predicted = sum(1 for t in got.values() if t == tag)
        actual = sum(1 for t in truth.values() if t == tag)
        out[tag] = (tp / predicted if predicted else 1.0, tp / actual if actual else 1.0)
    return out


def lone_request(help_id: str, classroom_id: str, event_time_ms: int) -> bytes:
    """A valid help.request of a classroom that sends nothing else."""
    return json.dumps({
        "event_id": f"00000000-0000-4000-8000-{abs(hash(help_id)) % 10**12:012d}",
        "event_type": "help.request", "schema_version": 1, "team": "client-web",
        "classroom_id": classroom_id, "lesson_id": f"lesson-{classroom_id}",
        "user_id": "stu-lonely", "role": "student", "platform": "web", "app_version": "5.9.0",
        "event_time": event_time_ms, "payload": {"help_id": help_id, "category": "other"},
    }).encode()


@pytest.mark.e2e
def test_help_job_tags_every_request_once_and_matches_ground_truth(spark, broker,
                                                                     tmp_path) -> None:
    import time

    from deltalake import DeltaTable
    from kafka_helpers import produce, topic_prefix_env

    from pipelines.io.kafka_admin import ensure_topics
    from pipelines.jobs.help import HELP_TAGS_TABLE, run_help, window_state
    from pipelines.simulator.run import run_simulation

    settings = broker.make_settings(tmp_path, {**topic_prefix_env(),
                                               "LAKEHOUSE__SIMULATOR__HELP_SHARE": "0.5"})
    ensure_topics(settings.kafka.client_options(), settings.kafka_topic_configs())
    truth_path = tmp_path / "truth.json"
    run_simulation(settings, classrooms=40, duration_s=120, seed=2026, progress=False,
                   ground_truth_path=truth_path)
    truth = {h: t["cause"] for h, t in json.loads(truth_path.read_text()).items()}
    assert len(truth) >= 12
    # A classroom that sends nothing but its request, and a request whose client clock is ten
    # minutes behind: both are tagged (with no evidence), neither is dropped.
    now = int(time.time() * 1000)
    help_topic = settings.kafka_topic("classroom.help")
    produce(settings, [(help_topic, b"cr-lonely", lone_request("h-lonely", "cr-lonely", now)),
                       (help_topic, b"cr-late", lone_request("h-late", "cr-late", now - 600_000))])
    truth.update({"h-lonely": "NO_ISSUE_DETECTED", "h-late": "NO_ISSUE_DETECTED"})

    result = run_help(spark, settings, once=True)

    rows = DeltaTable(settings.table_path(HELP_TAGS_TABLE)).to_pyarrow_table().to_pylist()
    per_help = Counter(r["help_id"] for r in rows)
    assert set(per_help) == set(truth) and max(per_help.values()) == 1
    assert result.tags == len(truth)
    # The latency split covers every tag: decided early or when the window closed.
    assert result.latency["early_tags"] + result.latency["closed_tags"] == len(truth), (
        result.latency)
    got = {r["help_id"]: r["primary_tag"] for r in rows}
    # Requests whose look-back already decided an early tag went out at once, failed entries
    # among them (their enter_fail precedes the press; where it reached the job only in a
    # later micro-batch than the request, the closed window tags it instead, as rightly).
    # NO_ISSUE_DETECTED always waits for its window to close.
    early = {r["help_id"] for r in rows if r["early"]}
    assert early and all(got[h] in settings.help.early_tags for h in early)
    not_entered = {h for h, t in truth.items() if t.endswith("_NOT_ENTERED")}
    assert not_entered & early, (not_entered, early)
    assert not any(got[h] == "NO_ISSUE_DETECTED" for h in early)
    accuracy = sum(got[h] == t for h, t in truth.items()) / len(truth)
    assert accuracy >= 0.95, Counter((t, got[h]) for h, t in truth.items())
    for tag, (precision, recall) in precision_recall(truth, got).items():
        assert precision >= 0.9 and recall >= 0.9, (tag, precision, recall)

    # Read back from the checkpoint: every request left the window state once tagged; the
    # last minute's evidence stays until the watermark leaves it behind.
    evidence, open_requests = window_state(spark, settings.checkpoint_path("help"))
    assert open_requests == 0 and evidence > 0

    messages = _consume_all(settings, settings.kafka_topic(settings.help.tags_topic))
    keys = Counter(key.decode() for key, _ in messages)
    assert set(keys) == set(truth) and max(keys.values()) == 1
    by_id = {json.loads(v)["help_id"]: json.loads(v) for _, v in messages}
    assert all(by_id[h]["primary_tag"] == got[h] for h in truth)

    # Lose the checkpoint and run again over the same topics: every request is found already
    # tagged in gold.help_tags, so nothing new reaches Delta or Kafka.
    _remove_for_good(spark, settings.checkpoint_path("help"))
    again = run_help(spark, settings, once=True)
    assert (again.tags, again.skipped) == (0, len(truth))
    assert DeltaTable(settings.table_path(HELP_TAGS_TABLE)).to_pyarrow_table().num_rows == len(
        rows)
    assert len(_consume_all(settings, settings.kafka_topic(settings.help.tags_topic))) == len(
        messages)


def test_ticker_stop_lets_its_producer_go(broker_settings) -> None:
    """A stopped ticker holds no producer (a live one logs every disconnect of the broker)."""
    from pipelines.jobs.help_sink import Ticker

    ticker = Ticker(broker_settings()).start()
    ticker.tick()
    ticker.stop()
    assert ticker.producer is None
    with pytest.raises(RuntimeError, match="stopped"):
        ticker.tick()
    ticker.stop()  # a second stop is harmless


def test_ticks_close_windows_in_the_batch_that_read_them(spark) -> None:
    """A request's window closes in the batch whose newest tick is the watermark delay past its
    due time (help_window.py, "In-batch close"), with its classroom's evidence; not sooner. One
    static batch: no watermark moves here, so nothing else can close it."""
    from pipelines.transforms.help_window import buffer_requests_with_evidence

    cfg = HelpConfig()  # window_after_s 5, watermark_delay_s 2
    after_ms, delay_ms = int(cfg.window_after_s * 1000), int(cfg.watermark_delay_s * 1000)
    columns = ("classroom_id string, kafka_timestamp timestamp, kafka_time_ms long, "
               "event_time_ms long, event_id string, role string, lesson_id string, "
               "user_id string, help_id string, category string, packet_loss_pct double, "
               "rtt_ms long, freeze_count long, detail string, signal string")

    def row(signal: str, kafka_ms: int, classroom: str | None = None,
            help_id: str | None = None) -> dict:
        return {"classroom_id": classroom, "kafka_timestamp": datetime.fromtimestamp(
                    kafka_ms / 1000, UTC), "kafka_time_ms": kafka_ms, "event_time_ms": kafka_ms,
                "event_id": f"e-{signal}-{kafka_ms}", "role": "student", "help_id": help_id,
                "signal": signal}

    def closed(ticks: list[int]) -> dict[str, list]:
        rows = [row("mic_muted", T0 - 2000, "c1"), row("request", T0, "c1", "h1"),
                row("request", T0 + 3000, "c2", "h2"), *(row("tick", t) for t in ticks)]
        pairs = (spark.createDataFrame(rows, columns)
                 .transform(buffer_requests_with_evidence(cfg)).where("NOT early").collect())
        out: dict[str, list] = {}
        for p in pairs:
            out.setdefault(p["help_id"], []).append(p["signal"])
        return out

    due_h1 = T0 + after_ms + delay_ms
    assert closed([T0 + 1000]) == {}
    assert closed([T0 + 1000, due_h1 - 1]) == {}
    assert closed([due_h1 - 1, due_h1]) == {"h1": ["mic_muted"]}
    assert closed([due_h1 + 3000]) == {"h1": ["mic_muted"], "h2": [None]}
