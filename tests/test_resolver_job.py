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


# ------------------------------------------------------------------------------ input rows
def test_rows_keep_tags_fired_signals_heartbeats_and_diagnostics(spark: SparkSession) -> None:
    """Heartbeats and page turns skip the contract: their envelope proves the role sends, a
    broken payload does not change that; without a classroom or a known role they give
    nothing. Signals still need a record the contract accepts."""
    from pipelines.config import HelpRulesConfig
    from pipelines.transforms.bronze import kafka_to_bronze
    from pipelines.transforms.resolver import resolver_inputs

    now = int(time.time() * 1000)
    values = [("classroom.av", av("c1", "teacher", now, muted=True)),
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
              ("tags", tag_message("c2", "h2", "VIDEO_FREEZE", now))]
    ts = datetime.fromtimestamp(now / 1000, UTC)
    raw = spark.createDataFrame(
        [(None, v, t, 0, i, ts, 0) for i, (t, v) in enumerate(values)],
        "key binary, value binary, topic string, partition int, offset long, "
        "timestamp timestamp, timestampType int")
    got = (raw.transform(kafka_to_bronze).transform(resolver_inputs(HelpRulesConfig(), "tags"))
           .select("classroom_id", "kind", "signal", "role", "help_id", "finding").collect())
    assert sorted(tuple(r) for r in got) == sorted([
        ("c1", "mic_muted", "mic_muted", "teacher", None, None),
        ("c1", "alive", None, "student", None, None),
        ("c1", "diagnostics", None, "teacher", "h1", "TEACHER_MIC_MUTED"),
        ("c3", "alive", None, "teacher", None, None),
        ("c3", "page_turn", "page_turn", "student", None, None),
        ("c2", "tag", None, None, "h2", None)])


@pytest.mark.e2e
def test_resolver_closes_the_loop(spark: SparkSession, broker, loop_settings) -> None:
    from pipelines.jobs.resolver import start_resolver

    settings, _ = loop_settings
    rooms = scenario()
    job = start_resolver(spark, settings, once=False)
    live = LiveClassrooms(settings, rooms)
    try:  # a running resolver first: the first micro-batch's planning is not the loop's time
        wait_for(lambda: job.query.lastProgress is not None, 300, "the first batch")
        live.start()
        time.sleep(5)  # some history: c-self's freeze ended before its request
        produce_tags(live, rooms, int(time.time() * 1000) - REQUEST_AGE_MS)
        started = time.monotonic()
        wait_for(lambda: len(job.sink.last_state) == len(rooms) and not job.sink.open_cases,
                 240, "every case final")
        elapsed = time.monotonic() - started
    finally:
        job.query.stop()
        job.sink.close()
        live.stop()
    rows = gold(settings)
    check_outcomes(rows, live)
    assert Counter(a["action_id"] for a in live.received).most_common(1)[0][1] == 1
    escalations = consume_all(settings, settings.resolver.escalations_topic)
    assert sorted(json.loads(v)["help_id"] for v in escalations) == ["help-c-mute",
                                                                      "help-c-silent"]
    print(f"loop: every case final {elapsed:.0f} s after the tags")
