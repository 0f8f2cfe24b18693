"""The closed loop: the simulator applies classroom.help.actions by its seeded fault model.

Pure tests drive `EventGenerator` + `Reactor` directly (exact timing, no broker); one test runs
a paced simulation on the embedded broker and answers its Help requests from Kafka, as the
resolver does. Both check the same things on the events produced: a fixed fault's evidence
stops after the reaction delay, a wrong action or an unfixable fault changes nothing, a repeated
action_id is applied once, diagnostics replies name the fault, and the ground truth says so.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipelines.config import (
    BadInputShares,
    CauseFixes,
    DelayRange,
    FaultModelConfig,
    FixRule,
    SimulatorConfig,
)
from pipelines.simulator import (
    GOOD,
    Action,
    Cause,
    EventGenerator,
    HelpTruth,
    Reactor,
    SimEvent,
    generate_events,
    planned_help,
)
from pipelines.simulator.faults import decide_fix
from pipelines.simulator.model import WINDOW_MS
from pipelines.simulator.react import HelpOutcome
from schemas import validate_raw

pytestmark = pytest.mark.timeout(180)

START_MS = 1_750_000_000_000
NETWORK = (Cause.TEACHER_NETWORK, Cause.STUDENT_NETWORK)
MIC = (Cause.TEACHER_MIC_MUTED, Cause.STUDENT_MIC_MUTED)
NOT_ENTERED = (Cause.TEACHER_NOT_ENTERED, Cause.STUDENT_NOT_ENTERED)
DELAY_MIN_MS, DELAY_MAX_MS = 1000, 2000
SHARES = BadInputShares(malformed_json=0.01, wrong_type=0.01, late=0.01, duplicate=0.02)
# Freeze and whiteboard faults unfixable, everything else fixable: each case is certain.
FIXES = CauseFixes(video_freeze=FixRule(action="restart_video", probability=0),
                   whiteboard_load_fail=FixRule(action="reload_courseware", probability=0),
                   **{c: FixRule(action=a, probability=1) for c, a in (
                       ("teacher_network", "switch_media_line"),
                       ("student_network", "switch_media_line"),
                       ("teacher_mic_muted", "prompt_unmute"),
                       ("student_mic_muted", "prompt_unmute"),
                       ("teacher_not_entered", "resend_enter_link"),
                       ("student_not_entered", "resend_enter_link"))})
MODEL = FaultModelConfig(reaction_delay_s=DelayRange(min=DELAY_MIN_MS / 1000,
                                                     max=DELAY_MAX_MS / 1000),
                         diagnostics_accuracy=1.0, fixes=FIXES)
CONFIG = SimulatorConfig(help_share=1.0, help_min_offset_s=0, bad_input=SHARES, fault_model=MODEL)


# ------------------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class Step:
    """Send `action` this long after the request is seen; `same_id_as` repeats an action_id."""

    after_ms: int
    action: str
    target: str | None = "victim"  # victim | other | None (null target_role)
    tag: str = ""  # distinguishes action ids


@dataclass(frozen=True)
class Case:
    name: str
    causes: tuple[Cause, ...]
    steps: tuple[Step, ...]
    expect: str  # fixed | persists | diagnosed
    fixable: bool


CASES = (
    Case("network fixed", NETWORK, (Step(1000, "switch_media_line"),), "fixed", True),
    Case("mic, wrong action", MIC, (Step(1000, "restart_video"),), "persists", True),
    Case("freeze unfixable", (Cause.VIDEO_FREEZE,), (Step(1000, "restart_video"),), "persists",
         False),
    Case("whiteboard unfixable", (Cause.WHITEBOARD_LOAD_FAIL,),
         (Step(1000, "reload_courseware"),), "persists", False),
    # The same action_id twice (a redelivery), then a second attempt once fixed.
    Case("not entered, repeated", NOT_ENTERED,
         (Step(1000, "resend_enter_link", tag="a"), Step(1500, "resend_enter_link", tag="a"),
          Step(5000, "resend_enter_link", tag="b")), "fixed", True),
    Case("no issue, diagnostics", (Cause.NO_ISSUE_DETECTED,),
         (Step(1000, "request_client_diagnostics", target=None),), "diagnosed", False),
)
PURE_CASES = (
    *CASES,
    # Diagnostics see the mute; an unmute prompt to the wrong client does nothing; then it works.
    Case("mic diagnosed then fixed", MIC,
         (Step(1000, "request_client_diagnostics", target=None),
          Step(1200, "prompt_unmute", target="other"), Step(4000, "prompt_unmute", target=None)),
         "fixed", True),
)


def victim_role(truth: HelpTruth) -> str:
    """Whose client carries the fault: the other participant for network and mic faults."""
    if truth.cause in NETWORK or truth.cause in MIC:
        return "student" if truth.cause.value.startswith("STUDENT") else "teacher"
    return truth.role


def pick(truths: dict[str, HelpTruth], cases: tuple[Case, ...], latest_ms: int
         ) -> dict[str, Case]:
    """One Help request per case, early enough to watch what follows its actions."""
    chosen: dict[str, Case] = {}
    ordered = sorted(truths.values(), key=lambda t: t.event_time)
    for case in cases:
        truth = next((t for t in ordered if t.cause in case.causes and t.help_id not in chosen
                      and t.event_time <= latest_ms), None)
        assert truth is not None, f"the seed gives no early request for {case.name}"
        chosen[truth.help_id] = case
    return chosen


def actions_for(truth: HelpTruth, case: Case, seen_ms: int) -> list[tuple[int, Action]]:
    """(due ms, action) for a request seen at `seen_ms`; issued_at_ms is set when sent."""
    out = []
    victim = victim_role(truth)
    for attempt, step in enumerate(case.steps, 1):
        role = {"victim": victim, "other": "teacher" if victim == "student" else "student",
                None: None}[step.target]
        action_id = f"{truth.help_id}:{step.tag or attempt}:{step.action}"
        out.append((seen_ms + step.after_ms, Action(
            action_id=action_id, help_id=truth.help_id, classroom_id=truth.classroom_id,
            lesson_id=truth.lesson_id, target_role=role, action=step.action,
            primary_tag=truth.cause.value, attempt=attempt, issued_at_ms=0)))
    return out


# ------------------------------------------------------------------------------ the checks
def is_bad(e: dict[str, Any], cause: Cause, role: str) -> bool:
    """Does `e` show the fault (DESIGN.md's tag evidence, for that client)?"""
    et, p = e["event_type"], e["payload"]
    if e["role"] != role:
        return False
    if cause in NETWORK:
        return et == "signal.disconnect" or (et == "av.quality" and (
            p["packet_loss_pct"] >= 10 or p["rtt_ms"] >= 800))
    if cause in MIC:
        return et == "av.quality" and p.get("mic_muted") is True
    if cause is Cause.VIDEO_FREEZE:
        return (et == "av.quality" and p["direction"] == "down" and p["media"] == "video"
                and p["freeze_count"] > 0)
    if cause is Cause.WHITEBOARD_LOAD_FAIL:
        return et == "wb.load_fail"
    return et == "enter.step" and p["step"] == "enter_fail"


def check(truth: HelpTruth, case: Case, sent: list[Action], events: list[dict[str, Any]],
          entry: dict[str, Any], slack_ms: int) -> None:
    """The events of one classroom and its ground-truth entry agree with what the case did."""
    role, cause = victim_role(truth), truth.cause
    first = min(a.issued_at_ms for a in sent)
    ids = {a.action_id for a in sent}
    applied = entry["actions"]
    assert sorted(a["action_id"] for a in applied) == sorted(ids), "each action_id once"
    diag = [e for e in events if e["event_type"] == "help.diagnostics"]
    if any(a.action == "request_client_diagnostics" for a in sent):
        assert len(diag) == 1, diag
        d = diag[0]
        expected = "NO_ISSUE_DETECTED" if cause is Cause.NO_ISSUE_DETECTED else cause.value
        assert d["payload"] == {"help_id": truth.help_id, "finding": expected}
        assert d["role"] == truth.role and d["team"].startswith("client-")
        asked = next(a for a in sent if a.action == "request_client_diagnostics")
        assert DELAY_MIN_MS <= d["event_time"] - asked.issued_at_ms <= DELAY_MAX_MS + slack_ms
    else:
        assert not diag
    assert entry["fixable"] is case.fixable
    if case.expect != "fixed":
        assert entry["fixed_at_ms"] is None and entry["fixed_by_action_id"] is None
    if case.expect == "diagnosed":
        assert entry["fix_action"] is None
        return
    bad = [e["event_time"] for e in events if is_bad(e, cause, role)]
    assert any(t < first for t in bad), "the fault showed before the first action"
    if case.expect == "persists":  # the evidence keeps coming, to the end of the run
        later = [t for t in bad if t >= first + DELAY_MAX_MS + slack_ms]
        end = max(e["event_time"] for e in events)
        gaps = [b - a for a, b in zip(later, [*later[1:], end], strict=True)]
        assert len(later) >= 2 and max(gaps) <= 4500, (case.name, later, end)
        return
    fixed_at = entry["fixed_at_ms"]
    fixer = next(a for a in sent if a.action_id == entry["fixed_by_action_id"])
    assert entry["fix_action"] == fixer.action
    assert DELAY_MIN_MS <= fixed_at - fixer.issued_at_ms <= DELAY_MAX_MS + slack_ms
    assert not [t for t in bad if t >= fixed_at], "evidence after the fix"
    samples = [e for e in events if e["role"] == role and e["event_type"] == "av.quality"
               and e["event_time"] >= fixed_at]
    assert len(samples) >= 4, "the client keeps sending, healthy"
    if cause in NOT_ENTERED:
        successes = [e for e in events if e["role"] == role and e["event_type"] == "enter.step"
                     and e["payload"]["step"] == "enter_success"]
        assert len(successes) == 1 and successes[0]["event_time"] >= fixed_at
        assert not [e for e in events if e["role"] == role and e["event_type"] == "av.quality"
                    and e["event_time"] < fixed_at]
        assert [a["effect"] for a in applied] == ["fixed", "already_fixed"]


def by_classroom(values: list[bytes]) -> dict[str, list[dict[str, Any]]]:
    """Valid events per classroom, each event_id once (bad input and duplicates dropped)."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    seen: set[str] = set()
    for value in values:
        if validate_raw(value):
            continue
        e = orjson.loads(value)
        if e["event_id"] not in seen:
            seen.add(e["event_id"])
            out[e["classroom_id"]].append(e)
    return out


# ------------------------------------------------------------------------------ pure tests
def drive(config: SimulatorConfig, classrooms: int, duration_s: float, seed: int,
          plan: dict[str, Case]) -> tuple[list[SimEvent], dict[str, Any], Reactor,
                                          dict[str, list[Action]]]:
    """Generate, and send each planned action when the simulation reaches its due time."""
    truths: dict[str, HelpTruth] = {}
    gen = EventGenerator(config, classrooms, duration_s, seed, START_MS, truths)
    reactor = Reactor(gen, config.fault_model, not_before_ms=START_MS)
    due: list[tuple[int, Action]] = []
    sent: dict[str, list[Action]] = defaultdict(list)
    events: list[SimEvent] = []
    for window in gen.windows():
        events.extend(window)
        now = START_MS + gen.horizon
        for ev in window:
            if ev.topic == "classroom.help" and b'"help.request"' in ev.value:
                help_id = orjson.loads(ev.value)["payload"]["help_id"]
                if help_id in plan:
                    due += actions_for(truths[help_id], plan[help_id], ev.event_time)
        for _, action in sorted((d for d in due if d[0] <= now), key=lambda d: d[0]):
            action = replace(action, issued_at_ms=now)
            reactor.receive(action)
            sent[action.help_id].append(action)
        due = [d for d in due if d[0] > now]
    entries = {h: {**t.to_json(), **reactor.outcomes.get(h, HelpOutcome()).to_json()}
               for h, t in truths.items()}
    return events, entries, reactor, sent


def test_reactor_applies_the_fault_model_exactly() -> None:
    seed, duration_s = 3, 60
    truths = planned_help(CONFIG, 80, duration_s, seed, START_MS)
    plan = pick(truths, PURE_CASES, START_MS + 45_000)
    events, entries, reactor, sent = drive(CONFIG, 80, duration_s, seed, plan)
    classes = by_classroom([ev.value for ev in events if ev.kind == GOOD])
    for help_id, case in plan.items():
        truth = truths[help_id]
        check(truth, case, sent[help_id], classes[truth.classroom_id], entries[help_id],
              slack_ms=0)
    assert reactor.counts["duplicate"] == 1
    mic = next(h for h, c in plan.items() if c.name == "mic diagnosed then fixed")
    assert [a["effect"] for a in entries[mic]["actions"]] == ["diagnosed", "no_effect", "fixed"]
    assert entries[mic]["actions"][0]["finding"] == entries[mic]["cause"]
    # Reactions are never corrupted by bad input, and all of them pass the contract.
    reactive = [ev for ev in events if ev.protected and b"help.diagnostics" in ev.value]
    assert reactive and all(ev.kind == GOOD and not validate_raw(ev.value) for ev in reactive)
    untouched = [h for h in entries if h not in plan]
    assert all(entries[h].get("fixed_at_ms") is None for h in untouched)


def test_actions_that_do_not_belong_are_ignored() -> None:
    truths: dict[str, HelpTruth] = {}
    gen = EventGenerator(CONFIG, 10, 40, 5, START_MS, truths)
    reactor = Reactor(gen, MODEL, not_before_ms=START_MS + 1)
    windows = gen.windows()
    while gen.horizon < 35_000:
        next(windows)
    truth = next(iter(truths.values()))
    base = Action(action_id="x:1:restart_video", help_id=truth.help_id,
                  classroom_id=truth.classroom_id, action="restart_video",
                  issued_at_ms=START_MS + gen.horizon)
    assert reactor.receive(replace(base, help_id="nope")) is None  # not this lesson's request
    assert reactor.receive(replace(base, classroom_id="cr-0-99999")) is None
    assert reactor.receive(replace(base, issued_at_ms=START_MS)) is None  # a previous run's
    assert reactor.counts["ignored"] == 3 and not reactor.outcomes
    assert reactor.receive(base) is not None
    assert reactor.receive(base) is None and reactor.counts["duplicate"] == 1
    assert Action.parse(b'{"action_id": "a"}') is None and Action.parse(b"\xff") is None
    parsed = Action.parse(orjson.dumps({**asdict(base), "attempt": 2, "extra": 1}))
    assert parsed == replace(base, attempt=2)


def test_no_actions_no_change_and_windows_change_no_byte() -> None:
    config = SimulatorConfig(help_share=0.5, bad_input=SHARES)
    reference = list(generate_events(config, 30, 30, 9, START_MS))
    for window_ms in (2000, WINDOW_MS, 333):
        gen = EventGenerator(config, 30, 30, 9, START_MS, window_ms=window_ms)
        Reactor(gen, config.fault_model)  # present, but no action arrives
        assert [ev for w in gen.windows() for ev in w] == reference, window_ms
    # The fault model draws from its own rng: other probabilities, the same events.
    never = SimulatorConfig(help_share=0.5, bad_input=SHARES, fault_model=FaultModelConfig(
        fixes=CauseFixes(**{name: FixRule(action=rule.action, probability=0)
                            for name, rule in FIXES})))
    assert list(generate_events(never, 30, 30, 9, START_MS)) == reference


def test_fault_model_decision_is_seeded_and_follows_the_probabilities() -> None:
    fixes = CauseFixes()
    rng = random.Random("unit")
    draws = Counter(decide_fix(Cause.TEACHER_NETWORK, fixes, rng) for _ in range(4000))
    assert set(draws) == {(True, "switch_media_line"), (False, None)}
    assert 0.77 < draws[(True, "switch_media_line")] / 4000 < 0.83  # p = 0.8
    one, two = random.Random("same"), random.Random("same")
    assert [decide_fix(Cause.VIDEO_FREEZE, fixes, one) for _ in range(50)] == [
        decide_fix(Cause.VIDEO_FREEZE, fixes, two) for _ in range(50)]
    assert decide_fix(Cause.NO_ISSUE_DETECTED, fixes, rng) == (False, None)
    assert decide_fix(Cause.VIDEO_FREEZE, FIXES, rng) == (False, None)
    assert decide_fix(Cause.STUDENT_MIC_MUTED, FIXES, rng) == (True, "prompt_unmute")
    # Planned truths carry the decision, the same for the same seed.
    default = SimulatorConfig(help_share=1.0)
    first = planned_help(default, 200, 90, 4, START_MS)
    assert first == planned_help(default, 200, 90, 4, START_MS)
    faults = [t for t in first.values() if t.cause is not Cause.NO_ISSUE_DETECTED]
    share = sum(t.fixable for t in faults) / len(faults)
    assert 0.75 < share < 0.95, share
    assert all(t.fix_action == fixes.for_cause(t.cause).action
               for t in faults if t.fixable)
    assert all(t.fix_action is None for t in first.values() if not t.fixable)


# ------------------------------------------------------------------------------ on the broker
def test_paced_simulation_closes_the_loop_over_kafka(broker: Any, tmp_path: Path) -> None:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
    from kafka_helpers import topic_prefix_env

    from pipelines.io.kafka_admin import ensure_topics
    from pipelines.simulator.run import SimulationSummary, run_simulation

    classrooms, duration_s, seed = 60, 34, 4
    model = ("{reaction_delay_s: {min: 1, max: 2}, diagnostics_accuracy: 1.0, fixes: {"
             "video_freeze: {probability: 0}, whiteboard_load_fail: {probability: 0}, "
             + ", ".join(f"{c}: {{probability: 1}}" for c in (
                 "teacher_network", "student_network", "teacher_mic_muted",
                 "student_mic_muted", "teacher_not_entered", "student_not_entered")) + "}}")
    settings = broker.make_settings(tmp_path, {
        **topic_prefix_env(), "LAKEHOUSE__SIMULATOR__HELP_SHARE": "1",
        "LAKEHOUSE__SIMULATOR__HELP_MIN_OFFSET_S": "0",
        "LAKEHOUSE__SIMULATOR__FAULT_MODEL": model,
        "LAKEHOUSE__DIMENSIONS__WRITE_ON_SIMULATE": "false"})
    assert settings.simulator.fault_model.fixes.video_freeze.probability == 0  # env reaches it
    opts = settings.kafka.client_options()
    ensure_topics(opts, settings.kafka_topic_configs())
    truths = planned_help(settings.simulator, classrooms, duration_s, seed, 0)
    plan = pick(truths, CASES, (duration_s - 12) * 1000)
    truth_path = tmp_path / "truth.json"
    result: dict[str, SimulationSummary | BaseException] = {}

    def simulate() -> None:
        try:
            result["summary"] = run_simulation(
                settings, classrooms=classrooms, duration_s=duration_s, seed=seed,
                rate_multiplier=1, ground_truth_path=truth_path, progress=False, react=True)
        except BaseException as exc:
            result["error"] = exc

    help_topic = settings.kafka_topic("classroom.help")
    watcher = Consumer({**opts, "group.id": "loop-test", "enable.auto.commit": False})
    watcher.assign([TopicPartition(help_topic, 0, OFFSET_BEGINNING)])
    producer = Producer({**opts, "linger.ms": 0})
    actions_topic = settings.kafka_topic("classroom.help.actions")
    thread = threading.Thread(target=simulate, daemon=True)
    thread.start()
    due: list[tuple[float, Action]] = []
    sent: dict[str, list[Action]] = defaultdict(list)
    arrival_lag_ms: list[float] = []
    try:
        while thread.is_alive():
            for msg in watcher.consume(100, timeout=0.1):
                if msg.error() is None and b'"help.request"' in (msg.value() or b""):
                    request = orjson.loads(msg.value())
                    help_id = request["payload"]["help_id"]
                    now_ms = time.time() * 1000
                    arrival_lag_ms.append(now_ms - request["event_time"])
                    if help_id in plan:
                        due += actions_for(truths[help_id], plan[help_id], int(now_ms))
            now_ms = time.time() * 1000
            for _, action in sorted((d for d in due if d[0] <= now_ms), key=lambda d: d[0]):
                action = replace(action, issued_at_ms=int(now_ms))
                producer.produce(actions_topic, orjson.dumps(asdict(action)),
                                 action.classroom_id.encode())
                sent[action.help_id].append(action)
            producer.poll(0)
            due = [d for d in due if d[0] > now_ms]
        assert producer.flush(10) == 0
    finally:
        watcher.close()
        thread.join(30)
    assert "error" not in result, result.get("error")
    # Paced: a request reaches a consumer about when it was sent (its event time), not a
    # set-up later; and never before it.
    assert arrival_lag_ms and min(arrival_lag_ms) > -50 and max(arrival_lag_ms) < 1000, (
        min(arrival_lag_ms), max(arrival_lag_ms))
    summary = result["summary"]
    assert isinstance(summary, SimulationSummary) and summary.reactions is not None
    assert summary.reactions["duplicate"] == 1
    assert sum(len(v) for v in sent.values()) == sum(len(c.steps) for c in plan.values())

    classes = by_classroom(read_all(opts, [settings.kafka_topic(t) for t in (
        "classroom.av", "classroom.signal", "classroom.whiteboard", "classroom.enter",
        "classroom.help")], Consumer, TopicPartition))
    entries = orjson.loads(truth_path.read_bytes())
    for help_id, case in plan.items():
        truth = truths[help_id]
        check(truth, case, sent[help_id], classes[truth.classroom_id], entries[help_id],
              slack_ms=WINDOW_MS + 500)
    assert all({"fixable", "fix_action", "fixed_at_ms", "fixed_by_action_id", "cause"}
               <= set(e) for e in entries.values())


def read_all(opts: dict[str, str], topics: list[str], consumer_cls: Callable[..., Any],
             tp_cls: Callable[..., Any]) -> list[bytes]:
    """Every record of `topics`, read until the topics stay quiet for 2 s."""
    consumer = consumer_cls({**opts, "group.id": "loop-test-read", "enable.auto.commit": False})
    meta = consumer.list_topics(timeout=10)
    consumer.assign([tp_cls(t, p, -2) for t in topics for p in meta.topics[t].partitions])
    values: list[bytes] = []
    quiet_since = time.monotonic()
    try:
        while time.monotonic() - quiet_since < 2:
            msgs = consumer.consume(5000, timeout=0.2)
            if msgs:
                quiet_since = time.monotonic()
                values += [m.value() for m in msgs if m.error() is None]
    finally:
        consumer.close()
    return values

