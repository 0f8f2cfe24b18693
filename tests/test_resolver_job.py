"""Help resolver: its input rows (inline frames) and the job against the embedded broker with
a tiny reacting classroom."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime

import pytest
from pyspark.sql import SparkSession
from resolver_loop import (
    REQUEST_AGE_MS,
    LiveClassrooms,
    av,
    check_outcomes,
    consume_all,
    diagnostics,
    envelope,
    gold,
    heartbeat,
    produce_tags,
    scenario,
    tag_message,
    wait_for,
)


def _began_after(progress: dict | None, at_s: float) -> bool:
    """Whether a query progress is of a micro-batch that began after `at_s` (epoch s)."""
    if not progress:
        return False
    began = datetime.fromisoformat(progress["timestamp"].replace("Z", "+00:00"))
    return began.timestamp() > at_s


# ------------------------------------------------------------------------------ input rows
TEST_ACCOUNTS = ["qa-bot"]  # silver.filtered_users: no evidence from them, either way


def input_records(now: int) -> list[tuple[str, bytes]]:
    """(topic, value) of every kind the resolver reads, good and bad."""
    return [("classroom.av", av("c1", "teacher", now, muted=True)),
            ("classroom.av", av("c1", "teacher", now)),  # healthy sample: dropped
            ("classroom.signal", heartbeat("c1", "student", now)),
            ("classroom.help", diagnostics("c1", "h1", "TEACHER_MIC_MUTED", now)),
            ("classroom.signal", b"{not json"),
            ("classroom.signal", heartbeat("c3", "teacher", now).replace(
                b'"rtt_ms":80', b'"rtt_ms":"slow"')),  # the contract rejects it
            ("classroom.signal", heartbeat("c3", "admin", now)),  # no such role: nothing
            ("classroom.signal", heartbeat("", "teacher", now)),  # no classroom: nothing
            ("classroom.whiteboard", envelope("wb.page_turn", "c3", "student", now,
                                              {"page": 2})),
            ("classroom.av", av("c3", "student", now, muted=True).replace(
                b'"bitrate_kbps":32', b'"bitrate_kbps":"x"')),  # rejected: no signal
            ("classroom.av", av("c4", "teacher", now, muted=True).replace(
                b'"user_id":"teacher-c4"', b'"user_id":"qa-bot"')),  # a test account: nothing
            ("tags", tag_message("c2", "h2", "VIDEO_FREEZE", now))]


def kafka_frame(spark: SparkSession, records: list[tuple[str, bytes]], now: int):
    """The Kafka source's rows for (topic, value) pairs, all at broker time `now`."""
    from pipelines.io.kafka_source import KAFKA_SCHEMA

    ts = datetime.fromtimestamp(now / 1000, UTC)
    return spark.createDataFrame(
        [(None, v, t, 0, i, ts, 0) for i, (t, v) in enumerate(records)], KAFKA_SCHEMA)


def test_rows_keep_tags_fired_signals_heartbeats_and_diagnostics(spark: SparkSession) -> None:
    """Heartbeats and page turns skip the contract: their envelope proves the role sends, a
    broken payload does not change that; without a classroom or a known role they give
    nothing. Signals still need a record the contract accepts."""
    from pipelines.config import HelpRulesConfig
    from pipelines.transforms.bronze import kafka_to_bronze
    from pipelines.transforms.resolver import resolver_inputs

    now = int(time.time() * 1000)
    raw = kafka_frame(spark, input_records(now), now)
    got = (raw.transform(kafka_to_bronze)
           .transform(resolver_inputs(HelpRulesConfig(), "tags", TEST_ACCOUNTS))
           .select("classroom_id", "kind", "signal", "role", "help_id", "finding").collect())
    assert sorted(tuple(r) for r in got) == sorted([
        ("c1", "mic_muted", "mic_muted", "teacher", None, None),
        ("c1", "alive", None, "student", None, None),
        ("c1", "diagnostics", None, "teacher", "h1", "TEACHER_MIC_MUTED"),
        ("c3", "alive", None, "teacher", None, None),
        ("c3", "page_turn", "page_turn", "student", None, None),
        ("c2", "tag", None, None, "h2", None)])


def test_the_help_jobs_relay_gives_the_resolver_the_same_rows(spark: SparkSession) -> None:
    """resolver.evidence = relay: the same records through the help job's plan (relay on) and
    its relay messages through `relay_inputs` give the resolver the rows it makes of the five
    topics itself (tags come from the tags topic either way); the relay rows stay out of the
    Help window's evidence and pairs."""
    from pipelines.config import HelpConfig
    from pipelines.transforms.bronze import kafka_to_bronze
    from pipelines.transforms.help import LIVENESS, RELAY, help_candidates, help_signals
    from pipelines.transforms.help_window import buffer_requests_with_evidence
    from pipelines.transforms.resolver import relay_inputs, resolver_inputs
    from pipelines.transforms.silver import flag_filtered_users
    from pipelines.transforms.validate import parse_and_validate
    from schemas.contract import HELP_CATEGORIES

    cfg = HelpConfig(early_tags=["TEACHER_MIC_MUTED"])  # pairs cut when the request arrives
    now = int(time.time() * 1000)
    records = input_records(now)
    columns = ["classroom_id", "kind", "signal", "role", "kafka_time_ms", "help_id", "finding"]
    direct = (kafka_frame(spark, records, now).transform(kafka_to_bronze)
              .transform(resolver_inputs(cfg.rules, "tags", TEST_ACCOUNTS))
              .select(*columns).collect())
    request = envelope("help.request", "c1", "student", now,
                       {"help_id": "h9", "category": HELP_CATEGORIES[0]})
    window = (kafka_frame(spark, [*(r for r in records if r[0] != "tags"),
                                  ("classroom.help", request)], now)
              .transform(kafka_to_bronze)
              .transform(help_candidates(cfg.rules, relay=True))
              .transform(parse_and_validate, (LIVENESS,))
              .transform(flag_filtered_users(TEST_ACCOUNTS))  # as the help job does
              .transform(help_signals(cfg.rules, relay=True))
              .transform(buffer_requests_with_evidence(cfg, relay=True)).collect())
    relay = [(RELAY, r[RELAY].encode()) for r in window if r[RELAY] is not None]
    # The request's early pairs hold c1's fired signal only: relay rows are no evidence.
    assert sorted(r["signal"] for r in window if r[RELAY] is None) == ["mic_muted"]
    relayed = (kafka_frame(spark, [*relay, *(r for r in records if r[0] == "tags")], now)
               .transform(kafka_to_bronze).transform(relay_inputs("tags"))
               .select(*columns).collect())
    assert sorted(map(tuple, relayed), key=str) == sorted(map(tuple, direct), key=str)
    assert len(direct) == 6


# Tags and relay messages that give no case and no evidence: they go to the reject ledger.
UNREADABLE_TAGS = [b"{not json", b'{"help_id":"h-lost","primary_tag":"VIDEO_FREEZE"}']
UNREADABLE_RELAY = [b"[{oops", b'[{"classroom_id":"c1","kind":"alive","role":"teacher"},'
                    b'{"kind":"alive","role":"student"}]']


def test_unreadable_tags_and_relay_messages_become_rejected_rows(spark: SparkSession) -> None:
    """Both input paths keep a record they cannot use as an UNREADABLE row with the reason,
    the field and the record with its coordinates (the ledger's), and keep a relay
    message's good items."""
    from pipelines.config import HelpRulesConfig
    from pipelines.transforms.bronze import kafka_to_bronze
    from pipelines.transforms.resolver import UNREADABLE, relay_inputs, resolver_inputs

    now = int(time.time() * 1000)
    tags = [("tags", v) for v in UNREADABLE_TAGS]
    relay = [("relay", v) for v in UNREADABLE_RELAY]
    topics = (kafka_frame(spark, tags, now).transform(kafka_to_bronze)
              .transform(resolver_inputs(HelpRulesConfig(), "tags")).collect())
    relayed = (kafka_frame(spark, [*tags, *relay], now).transform(kafka_to_bronze)
               .transform(relay_inputs("tags")).collect())
    for rows, want in ((topics, [("tags", 0, "malformed_json", None),
                                 ("tags", 1, "missing_field", "classroom_id")]),
                       (relayed, [("relay", 2, "malformed_json", None),
                                  ("relay", 3, "missing_field", "classroom_id, kind"),
                                  ("tags", 0, "malformed_json", None),
                                  ("tags", 1, "missing_field", "classroom_id")])):
        bodies = [json.loads(r.body) for r in rows if r.kind == UNREADABLE]
        assert sorted((b["topic"], b["offset"], b["reject_reason"], b.get("reject_rule"))
                      for b in bodies) == want
        assert all(b["kafka_timestamp_us"] == now * 1000 for b in bodies)
        assert {b.get("value") for b in bodies} <= {v.decode() for _, v in [*tags, *relay]}
        assert all(r.signal is None for r in rows)
    # the second relay message's good item still counts as evidence
    assert [(r.classroom_id, r.kind, r.role) for r in relayed if r.kind != UNREADABLE] == [
        ("c1", "alive", "teacher")]


def test_the_resolvers_ledger_rows_have_silvers_ledger_types(spark: SparkSession) -> None:
    """The resolver appends to silver.rejects: its rows must have the types silver's routed
    rejects have, or one of the two writers fails on the other's table."""
    from pyspark.sql.pandas.types import from_arrow_type

    from pipelines.config import load_settings
    from pipelines.jobs.silver import SILVER_PAYLOAD_FIELDS, silver_input, silver_topic_tables
    from pipelines.transforms.bronze import kafka_to_bronze
    from pipelines.transforms.silver import (
        REJECT_COLUMNS,
        REJECT_SCHEMA,
        flag_late,
        ledger_stamps,
        routed_rows,
    )

    settings = load_settings()
    now = int(time.time() * 1000)
    stamps = ledger_stamps(1, datetime.now(UTC))  # added by the sink on the driver
    silver = (kafka_frame(spark, [("classroom.signal", b"{not json")], now)
              .transform(kafka_to_bronze).transform(silver_input(settings))
              .transform(flag_late(now))
              .transform(routed_rows(silver_topic_tables(settings), SILVER_PAYLOAD_FIELDS)))
    types = {f.name: f.dataType for f in silver.schema}
    types.update({name: from_arrow_type(value.type) for name, value in stamps.items()})
    ours = spark.createDataFrame([], REJECT_SCHEMA)
    assert [(c, types[c]) for c in REJECT_COLUMNS] == [
        (f.name, f.dataType) for f in ours.schema]


@pytest.mark.e2e
@pytest.mark.parametrize("evidence", ["topics", "relay"])
def test_resolver_closes_the_loop(spark: SparkSession, broker, loop_settings,
                                  evidence: str) -> None:
    """The resolver reads the five topics itself, or (relay) the real help job relays them;
    the tags come straight from the test either way (it sends no help.request)."""
    from pipelines.config import ResolverEvidence
    from pipelines.jobs.help import start_help
    from pipelines.jobs.resolver import start_resolver

    settings, _ = loop_settings
    settings = settings.model_copy(update={"resolver": settings.resolver.model_copy(
        update={"evidence": ResolverEvidence(evidence)})})
    rooms = scenario()
    helper = start_help(spark, settings, once=False) if evidence == "relay" else None
    job = start_resolver(spark, settings, once=False)
    live = LiveClassrooms(settings, rooms)
    try:  # a running resolver first: the first micro-batch's planning is not the loop's time
        wait_for(lambda: job.query.lastProgress is not None, 300, "the first batch")
        if helper is not None:
            wait_for(lambda: helper.query.lastProgress is not None, 300, "the help job's batch")
        live.start()
        time.sleep(5)  # some history: c-self's freeze ended before its request
        # The requests' age counts from the end of the history, not from when the tags go out:
        # waiting for the help job's relay (seconds on a busy host) must not move the
        # requests past the evidence it relays (c-self would then look unhealed and be acted
        # on).
        history_ms = int(time.time() * 1000)
        if helper is not None:
            # The help job publishes a batch's relay before that batch's tags, so a tag never
            # overtakes the evidence read with its request. These tags come from the test: let
            # a help batch that began after the history was sent relay it first.
            sent = time.time()
            wait_for(lambda: _began_after(helper.query.lastProgress, sent), 120,
                     "a help batch after the history")
        produce_tags(live, rooms, history_ms - REQUEST_AGE_MS)
        unreadable = [("classroom.help.tags", v) for v in UNREADABLE_TAGS]
        if helper is not None:
            unreadable += [(settings.help.relay_topic, v) for v in UNREADABLE_RELAY]
        for topic, value in unreadable:
            live.send(topic, value, "c-net")
        live.producer.flush(10)
        started = time.monotonic()
        wait_for(lambda: len(job.sink.last_state) == len(rooms) and not job.sink.open_cases,
                 240, "every case final")
        wait_for(lambda: job.sink.rejected == len(unreadable), 60, "the unreadable records")
        elapsed = time.monotonic() - started
    finally:
        job.query.stop()
        job.sink.close()
        if helper is not None:
            helper.stop()
        live.stop()
    rows = gold(settings)
    assert "REJECTED" not in {r["state"] for r in rows}
    from deltalake import DeltaTable

    from pipelines.transforms.silver import REJECTS_TABLE

    ledger = DeltaTable(settings.table_path(REJECTS_TABLE)).to_pyarrow_table().to_pylist()
    assert sorted((r["topic"], r["value"], r["reject_reason"]) for r in ledger) == sorted(
        (settings.kafka_topic(t), v.decode(), "malformed_json" if v.startswith((b"{n", b"[{o"))
         else "missing_field") for t, v in unreadable)
    if helper is not None:
        assert helper.sink.relayed > 0 and helper.sink.tags == 0
    check_outcomes(rows, live)
    assert Counter(a["action_id"] for a in live.received).most_common(1)[0][1] == 1
    escalations = consume_all(settings, settings.resolver.escalations_topic)
    assert sorted(json.loads(v)["help_id"] for v in escalations) == ["help-c-mute",
                                                                      "help-c-silent"]
    print(f"loop: every case final {elapsed:.0f} s after the tags")
