"""Help resolver: the playbook state machine (pure), the input rows (inline frames), the job
against the embedded broker with a tiny reacting classroom, and kill -9 of the CLI."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from pyspark.sql import SparkSession

from pipelines.config import NO_ISSUE_TAG, ResolverConfig, Settings
from pipelines.transforms.playbook import (
    ACT,
    CONFIRM,
    ESCALATED,
    FINAL_STATES,
    NEW,
    RESOLVED_AUTO,
    RESOLVED_SELF,
    VALIDATE,
    Evidence,
    advance,
    open_case,
    wake_at,
)

CFG = ResolverConfig()
T0 = 1_790_000_000_000


def tag(primary: str, role: str = "student", help_id: str = "h1", request_ms: int = T0) -> dict:
    return {"help_id": help_id, "classroom_id": "c1", "lesson_id": "l1",
            "requester_role": role, "tags": [primary], "primary_tag": primary,
            "request_time_ms": request_ms, "request_broker_time_ms": request_ms}


def run(case: dict, ev: Evidence, now: int, cfg: ResolverConfig = CFG) -> list[str]:
    return [r["state"] for r in advance(case, ev, now, cfg)]


def alive(ev: Evidence, role: str, start: int, end: int, step: int = 1000) -> None:
    for t in range(start, end + 1, step):
        ev.see(None, role, t)


# ------------------------------------------------------------------------------ state machine
def test_healthy_after_the_action_resolves_auto() -> None:
    ev = Evidence()
    for t in range(T0 - 20_000, T0 + 7_001, 2000):
        ev.see("bad_network_sample", "teacher", t)
    case, new = open_case(tag("TEACHER_NETWORK"), T0 + 7000, CFG)
    assert new["state"] == NEW
    assert run(case, ev, T0 + 7000) == [VALIDATE, ACT, CONFIRM]
    assert case["action_id"] == "h1:1:switch_media_line" and case["target_role"] == "teacher"
    assert run(case, ev, T0 + 9000) == []  # nothing new yet
    alive(ev, "teacher", T0 + 8000, T0 + 10_000)  # healthy, but only 2 s past action + grace
    assert run(case, ev, T0 + 11_000) == []
    alive(ev, "teacher", T0 + 11_000, T0 + 11_000)  # 3 s of health after action + grace
    assert run(case, ev, T0 + 12_000) == [RESOLVED_AUTO]
    assert wake_at(case) is None


def test_silence_is_not_health_and_retries_end_escalated() -> None:
    ev = Evidence()
    ev.see("mic_muted", "teacher", T0)
    case, _ = open_case(tag("TEACHER_MIC_MUTED"), T0 + 7000, CFG)
    assert run(case, ev, T0 + 7000) == [VALIDATE, ACT, CONFIRM]
    assert wake_at(case) == T0 + 7001  # the next batch, which opens the confirm window ...
    assert run(case, ev, T0 + 8000) == []
    assert wake_at(case) == T0 + 16_000  # ... once the action surely went out
    ev.see(None, "student", T0 + 14_000)  # the other role is alive; the teacher is silent
    assert run(case, ev, T0 + 16_000) == [ACT, CONFIRM]
    assert case["action_id"] == "h1:2:prompt_unmute"
    assert run(case, ev, T0 + 17_000) == []
    alive(ev, "teacher", T0 + 17_000, T0 + 25_000)
    ev.see("mic_muted", "teacher", T0 + 25_000)  # still muted after the second prompt
    rows = advance(case, ev, T0 + 25_000, CFG)
    assert [r["state"] for r in rows] == [ESCALATED]
    message = json.loads(rows[0]["message"])
    assert [a["action_id"] for a in message["tried"]] == ["h1:1:prompt_unmute",
                                                          "h1:2:prompt_unmute"]
    assert message["reason"].startswith("not confirmed after 2 attempts")


def test_health_seen_but_not_for_the_whole_span_gets_one_extension() -> None:
    ev = Evidence()
    ev.see("mic_muted", "student", T0 + 6000)
    case, _ = open_case(tag("STUDENT_MIC_MUTED"), T0 + 7000, CFG)
    run(case, ev, T0 + 7000)
    run(case, ev, T0 + 8000)
    ev.see("mic_muted", "student", T0 + 15_500)  # the client reacted late
    alive(ev, "student", T0 + 16_000, T0 + 16_000)
    assert run(case, ev, T0 + 16_000) == []  # recovering: wait span + grace more
    assert wake_at(case) == T0 + 20_000
    alive(ev, "student", T0 + 17_000, T0 + 19_000)
    assert run(case, ev, T0 + 20_000) == [RESOLVED_AUTO]


def test_problem_gone_before_validation_resolves_self() -> None:
    ev = Evidence()
    ev.see("video_freeze", "student", T0 - 3000)
    alive(ev, "student", T0, T0 + 6000)
    case, _ = open_case(tag("VIDEO_FREEZE"), T0 + 7000, CFG)
    assert run(case, ev, T0 + 7000) == [VALIDATE, RESOLVED_SELF]
    ev2 = Evidence()
    ev2.see("video_freeze", "student", T0 + 5000)  # still freezing after the request
    alive(ev2, "student", T0, T0 + 6000)
    case2, _ = open_case(tag("VIDEO_FREEZE"), T0 + 7000, CFG)
    assert run(case2, ev2, T0 + 7000) == [VALIDATE, ACT, CONFIRM]


def test_whiteboard_failure_never_resolves_itself() -> None:
    ev = Evidence()
    ev.see("wb_load_fail", "student", T0 - 10_000)
    alive(ev, "student", T0 - 9000, T0 + 6000)
    case, _ = open_case(tag("WHITEBOARD_LOAD_FAIL"), T0 + 7000, CFG)
    assert run(case, ev, T0 + 7000) == [VALIDATE, ACT, CONFIRM]


def test_not_entered_confirms_by_an_enter_success_only() -> None:
    ev = Evidence()
    ev.see("enter_fail", "teacher", T0 - 2000)
    case, _ = open_case(tag("TEACHER_NOT_ENTERED"), T0 + 7000, CFG)
    assert run(case, ev, T0 + 7000) == [VALIDATE, ACT, CONFIRM]
    assert case["action"] == "resend_enter_link"
    alive(ev, "teacher", T0 + 8000, T0 + 12_000)
    assert run(case, ev, T0 + 12_000) == []
    ev.see("enter_success", "teacher", T0 + 12_500)
    assert run(case, ev, T0 + 13_000) == [RESOLVED_AUTO]


def test_diagnostics_retag_restarts_the_playbook_and_no_issue_escalates() -> None:
    ev = Evidence()
    case, _ = open_case(tag(NO_ISSUE_TAG, role="student"), T0 + 7000, CFG)
    assert run(case, ev, T0 + 7000) == [VALIDATE, ACT, CONFIRM]
    assert case["action_id"] == "h1:1:request_client_diagnostics"
    ev.findings["h1"] = ["TEACHER_MIC_MUTED", T0 + 8000]
    ev.see("mic_muted", "teacher", T0 + 8000)
    rows = advance(case, ev, T0 + 9000, CFG)
    assert [r["state"] for r in rows] == [VALIDATE, ACT, CONFIRM]
    assert rows[0]["primary_tag"] == "TEACHER_MIC_MUTED"
    assert case["action_id"] == "h1:2:prompt_unmute" and case["target_role"] == "teacher"
    alive(ev, "teacher", T0 + 10_000, T0 + 14_000)
    assert run(case, ev, T0 + 14_000) == [RESOLVED_AUTO]

    case2, _ = open_case(tag(NO_ISSUE_TAG, help_id="h2"), T0 + 7000, CFG)
    run(case2, ev, T0 + 7000)
    ev.findings["h2"] = [NO_ISSUE_TAG, T0 + 8000]
    assert run(case2, ev, T0 + 9000) == [ESCALATED]


def test_total_timeout_escalates_whatever_the_state() -> None:
    cfg = ResolverConfig(total_timeout_s=12)
    ev = Evidence()
    ev.see("mic_muted", "student", T0 + 6000)
    case, _ = open_case(tag("STUDENT_MIC_MUTED"), T0 + 7000, cfg)
    run(case, ev, T0 + 7000, cfg)
    run(case, ev, T0 + 8000, cfg)
    assert wake_at(case) == T0 + 12_000  # the deadline comes before the confirm timeout
    rows = advance(case, ev, T0 + 12_000, cfg)
    assert [r["state"] for r in rows] == [ESCALATED]
    assert "total timeout" in rows[0]["detail"]
    late, _ = open_case(tag("STUDENT_MIC_MUTED", help_id="h9"), T0 + 40_000, cfg)
    assert run(late, ev, T0 + 40_000, cfg) == [ESCALATED]  # tagged after its deadline


def test_playbooks_come_from_conf_with_env_overrides() -> None:
    from pipelines.config import load_settings

    env = {**os.environ, "LAKEHOUSE__RESOLVER__PLAYBOOKS__VIDEO_FREEZE__RETRIES": "3",
           "LAKEHOUSE__RESOLVER__TOTAL_TIMEOUT_S": "45"}
    s = load_settings("local", environ=env)
    assert s.resolver.playbook("VIDEO_FREEZE").retries == 3
    assert s.resolver.playbook("VIDEO_FREEZE").action.value == "restart_video"
    assert s.resolver.total_timeout_s == 45
    assert s.resolver.playbook(NO_ISSUE_TAG).action.value == "request_client_diagnostics"
    with pytest.raises(ValueError, match="BOGUS"):
        ResolverConfig(playbooks={"BOGUS": {"retries": 1}})


# ------------------------------------------------------------------------------ input rows
def test_rows_keep_tags_fired_signals_heartbeats_and_diagnostics(spark: SparkSession) -> None:
    from pipelines.config import HelpRulesConfig
    from pipelines.transforms.bronze import kafka_to_bronze
    from pipelines.transforms.resolver import resolver_inputs

    now = int(time.time() * 1000)
    values = [("classroom.av", av("c1", "teacher", now, muted=True)),
              ("classroom.av", av("c1", "teacher", now)),  # healthy sample: dropped
              ("classroom.signal", heartbeat("c1", "student", now)),
              ("classroom.help", diagnostics("c1", "h1", "TEACHER_MIC_MUTED", now)),
              ("classroom.signal", b"{not json"),
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
        ("c2", "tag", None, None, "h2", None)])


# ------------------------------------------------------------------------------ events
def envelope(event_type: str, classroom: str, role: str, at_ms: int, payload: dict) -> bytes:
    obj = {"event_id": str(uuid.uuid4()), "event_type": event_type, "schema_version": 1,
           "team": "client-web", "classroom_id": classroom, "lesson_id": f"L-{classroom}",
           "user_id": f"{role}-{classroom}", "role": role, "platform": "web",
           "app_version": "1.0.0", "event_time": at_ms, "payload": payload}
    return orjson.dumps(obj)


def av(classroom: str, role: str, at_ms: int, *, muted: bool = False, loss: float = 0.5,
       freeze: int = 0, direction: str = "up", media: str = "audio") -> bytes:
    payload = {"direction": direction, "media": media, "bitrate_kbps": 32,
               "packet_loss_pct": loss, "jitter_ms": 5.0, "rtt_ms": 80, "freeze_count": freeze}
    if direction == "up" and media == "audio":
        payload["mic_muted"] = muted
    if direction == "up" and media == "video":
        payload["camera_on"] = True
    return envelope("av.quality", classroom, role, at_ms, payload)


def heartbeat(classroom: str, role: str, at_ms: int) -> bytes:
    return envelope("signal.heartbeat", classroom, role, at_ms,
                    {"network_type": "wifi", "rtt_ms": 80})


def diagnostics(classroom: str, help_id: str, finding: str, at_ms: int,
                role: str = "teacher") -> bytes:
    return envelope("help.diagnostics", classroom, role, at_ms,
                    {"help_id": help_id, "finding": finding})


def tag_message(classroom: str, help_id: str, primary: str, request_ms: int,
                role: str = "student") -> bytes:
    return orjson.dumps({
        "help_id": help_id, "classroom_id": classroom, "lesson_id": f"L-{classroom}",
        "requester_id": f"{role}-{classroom}", "requester_role": role, "category": "other",
        "tags": [primary], "primary_tag": primary, "evidence": {}, "evidence_events": 0,
        "request_time_ms": request_ms, "request_broker_time_ms": request_ms,
        "tagged_at_ms": request_ms + 5000, "latency_ms": 5000, "broker_latency_ms": 5000})


class Classroom:
    """A faulted classroom for the loop: which fault, whether an action fixes it."""

    def __init__(self, cid: str, primary: str, fault: str | None, role: str | None,
                 fixed_by: str | None, silent: bool = False, finding: str | None = None,
                 requester: str = "student") -> None:
        self.cid, self.primary, self.fault, self.role = cid, primary, fault, role
        self.fixed_by, self.silent, self.finding = fixed_by, silent, finding
        self.requester = requester
        self.help_id = f"help-{cid}"


def fault_events(c: Classroom, now: int) -> list[tuple[str, bytes]]:
    """What the classroom sends in one second: heartbeats, a healthy or faulted sample."""
    if c.silent:
        return []
    out: list[tuple[str, bytes]] = []
    for role in ("teacher", "student"):
        out.append(("classroom.signal", heartbeat(c.cid, role, now)))
        faulted = c.fault is not None and role == c.role
        out.append(("classroom.av", av(c.cid, role, now, muted=faulted and c.fault == "mic")))
        if faulted and c.fault == "net":
            out.append(("classroom.av", av(c.cid, role, now, loss=30.0, direction="down",
                                           media="video")))
    return out


class LiveClassrooms:
    """Sends the classrooms' events every second and reacts to classroom.help.actions like
    the simulator will: a fixing action clears the fault, a diagnostics request is answered.
    Records every action message it receives."""

    def __init__(self, settings: Settings, rooms: list[Classroom]) -> None:
        from confluent_kafka import Consumer, Producer

        self.settings, self.rooms = settings, {r.cid: r for r in rooms}
        self.producer = Producer({**settings.kafka.client_options(), "linger.ms": 5})
        self.consumer = Consumer({**settings.kafka.client_options(),
                                  "group.id": f"test-{uuid.uuid4().hex[:6]}",
                                  "auto.offset.reset": "earliest"})
        self.consumer.subscribe([settings.kafka_topic(settings.resolver.actions_topic)])
        self.received: list[dict] = []
        self.applied: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def send(self, topic: str, value: bytes, key: str) -> None:
        self.producer.produce(self.settings.kafka_topic(topic), key=key.encode(), value=value)

    def _react(self, action: dict) -> None:
        self.received.append(action)
        if action["action_id"] in self.applied:
            return  # the idempotency key: an action is applied once
        self.applied.add(action["action_id"])
        room = self.rooms[action["classroom_id"]]
        if action["action"] == "request_client_diagnostics" and room.finding:
            self.send("classroom.help", diagnostics(room.cid, room.help_id, room.finding,
                                                    int(time.time() * 1000)), room.cid)
        elif action["action"] == room.fixed_by:
            room.fault = None

    def _run(self) -> None:
        next_tick = 0.0
        while not self._stop.is_set():
            msg = self.consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                self._react(orjson.loads(msg.value()))
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + 1.0
                now = int(time.time() * 1000)
                for room in self.rooms.values():
                    for topic, value in fault_events(room, now):
                        self.send(topic, value, room.cid)
                self.producer.poll(0)

    def start(self) -> LiveClassrooms:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.producer.flush(10)
        self.consumer.close()


def scenario() -> list[Classroom]:
    return [
        Classroom("c-net", "STUDENT_NETWORK", "net", "student", "switch_media_line",
                  requester="teacher"),
        Classroom("c-mute", "TEACHER_MIC_MUTED", "mic", "teacher", None),  # not fixable
        Classroom("c-self", "VIDEO_FREEZE", None, None, None),  # the freeze already ended
        Classroom("c-diag", NO_ISSUE_TAG, "mic", "teacher", "prompt_unmute",
                  finding="TEACHER_MIC_MUTED"),
        Classroom("c-silent", "TEACHER_NETWORK", None, "teacher", None, silent=True),
    ]


EXPECTED = {"c-net": RESOLVED_AUTO, "c-mute": ESCALATED, "c-self": RESOLVED_SELF,
            "c-diag": RESOLVED_AUTO, "c-silent": ESCALATED}
TEST_ENV = {"LAKEHOUSE__RESOLVER__TOTAL_TIMEOUT_S": "400",  # slow batches on a busy host
            "LAKEHOUSE__RESOLVER__TRIGGER_SECONDS": "0.5"}


def produce_tags(live: LiveClassrooms, rooms: list[Classroom], request_ms: int) -> None:
    for room in rooms:
        value = tag_message(room.cid, room.help_id, room.primary, request_ms, room.requester)
        live.send("classroom.help.tags", value, room.help_id)
    live.send("classroom.help.tags", tag_message("c-net", "help-c-net", "STUDENT_NETWORK",
                                                 request_ms, "teacher"), "help-c-net")  # again
    live.producer.flush(10)


@pytest.fixture
def loop_settings(broker_settings, tmp_path: Path) -> Iterator[tuple[Settings, dict]]:
    from kafka_helpers import topic_prefix_env

    env = {**topic_prefix_env(), **TEST_ENV, "LAKEHOUSE_ROOT": str(tmp_path)}
    settings = broker_settings(extra_env=env)
    from pipelines.io.kafka_admin import ensure_topics

    ensure_topics(settings.kafka.client_options(), settings.kafka_topic_configs())
    yield settings, env


def gold(settings: Settings) -> list[dict]:
    from deltalake import DeltaTable

    from pipelines.jobs.resolver_sink import HELP_RESOLUTIONS_TABLE

    return DeltaTable(settings.table_path(HELP_RESOLUTIONS_TABLE)).to_pyarrow_table().to_pylist()


def check_outcomes(rows: list[dict], live: LiveClassrooms) -> None:
    finals = [r for r in rows if r["state"] in FINAL_STATES]
    per_help = Counter(r["help_id"] for r in finals)
    assert all(n == 1 for n in per_help.values()), per_help
    got = {r["classroom_id"]: r["state"] for r in finals}
    assert got == EXPECTED, [(r["help_id"], r["state"], r["detail"]) for r in rows]
    assert len({(r["help_id"], r["seq"]) for r in rows}) == len(rows)  # each transition once
    action_ids = [r["action_id"] for r in rows if r["state"] == ACT]
    assert len(action_ids) == len(set(action_ids))
    assert set(action_ids) == {a["action_id"] for a in live.received}
    acts = {c: [r["action"] for r in sorted(rows, key=lambda r: r["seq"])
                if r["classroom_id"] == c and r["state"] == ACT] for c in EXPECTED}
    # Unfixable: 1 + retries actions. Fixable: the fix, maybe once more when a slow micro-batch
    # (a loaded host) published the first one too late for its confirm window.
    assert acts["c-mute"] == ["prompt_unmute"] * 2
    assert acts["c-silent"] == ["switch_media_line"] * 2
    assert acts["c-self"] == []
    assert acts["c-net"] in (["switch_media_line"], ["switch_media_line"] * 2)
    # The diagnostics request may be retried once when the reply missed its confirm window.
    asked = 1 + (acts["c-diag"][1:2] == ["request_client_diagnostics"])
    assert acts["c-diag"][:asked] == ["request_client_diagnostics"] * asked
    assert acts["c-diag"][asked:] in (["prompt_unmute"], ["prompt_unmute"] * 2)
    diag = [r for r in rows if r["classroom_id"] == "c-diag" and r["state"] == RESOLVED_AUTO]
    assert diag[0]["primary_tag"] == "TEACHER_MIC_MUTED"


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


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
        produce_tags(live, rooms, int(time.time() * 1000) - 4000)
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


def consume_all(settings: Settings, topic: str, timeout_s: float = 5) -> list[bytes]:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({**settings.kafka.client_options(), "group.id": uuid.uuid4().hex,
                         "enable.auto.commit": False})
    name = settings.kafka_topic(topic)
    partitions = consumer.list_topics(name, timeout=10).topics[name].partitions
    consumer.assign([TopicPartition(name, p, OFFSET_BEGINNING) for p in partitions])
    out, quiet_until = [], time.monotonic() + timeout_s
    while time.monotonic() < quiet_until:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            out.append(msg.value())
            quiet_until = time.monotonic() + 2
    consumer.close()
    return out


@pytest.mark.e2e
@pytest.mark.fault
def test_kill_9_mid_run_and_restart_end_each_case_once(broker, loop_settings) -> None:
    """SIGKILL in the documented window (actions on Kafka, batch not in Delta), restart: every
    help_id ends in exactly one final state and gold holds each action_id once; Kafka holds a
    repeat only of that batch's actions, byte-identical, which consumers drop by action_id."""
    from kafka_helpers import lakehouse_cli

    settings, env = loop_settings
    env = {**env, "LAKEHOUSE__BROKER__PORT": str(broker.settings.broker.port)}
    rooms = scenario()
    live = LiveClassrooms(settings, rooms).start()
    try:
        time.sleep(5)
        produce_tags(live, rooms, int(time.time() * 1000) - 4000)
        killed = lakehouse_cli(["run", "resolver", "--once"],
                               {**env, "LAKEHOUSE__RESOLVER__KILL_AFTER_PUBLISH_BATCH": "0"},
                               timeout=400)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        published_before_restart = {a["action_id"] for a in live.received}
        assert published_before_restart, "the kill should come after some actions went out"
        done = lakehouse_cli(["run", "resolver", "--once"], env, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        live.stop()
    rows = gold(settings)
    finals = Counter(r["help_id"] for r in rows if r["state"] in FINAL_STATES)
    assert sorted(finals) == sorted(r.help_id for r in rooms) and set(finals.values()) == {1}
    check_outcomes(rows, live)
    messages: dict[str, list[bytes]] = {}
    for value in consume_all(settings, settings.resolver.actions_topic):
        messages.setdefault(json.loads(value)["action_id"], []).append(value)
    repeated = {a for a, vs in messages.items() if len(vs) > 1}
    # The killed batch's actions, and only those, went out twice (its replay), unchanged.
    assert repeated == published_before_restart
    assert all(len(set(messages[a])) == 1 for a in repeated)  # the same message again
    assert set(messages) == {r["action_id"] for r in rows if r["state"] == ACT}
