"""The closed loop: simulated clients react to the resolver's corrective actions.

The resolver publishes actions on `classroom.help.actions` (key classroom_id, JSON value, see
`Action`). A paced simulation reads them between windows (`ActionFeed`, partitions assigned at
their end offsets: no consumer group, whose join costs ~23 s on the embedded broker) and hands
them to the `Reactor`, which applies each action_id at most once, after a seeded reaction delay:

- `request_client_diagnostics`: the requester's client answers with a `help.diagnostics` event
  on classroom.help naming the fault if it is still active (with `diagnostics_accuracy`), else
  NO_ISSUE_DETECTED. A request with no fault always gets NO_ISSUE_DETECTED.
- the cause's fix action (conf `simulator.fault_model.fixes`), aimed at the faulted client
  (`target_role` null or its role): if the fault was drawn fixable it ends at the reaction time
  (network, mic, freeze: healthy samples from then on; whiteboard: the page renders, a
  `wb.page_turn`; not entered: a successful enter flow, then the client is in the room). If not
  fixable, the evidence goes on: the whiteboard fails to load from then on (a `wb.load_fail`
  about every 2 s until the lesson ends), the enter attempt fails again (a failed enter flow),
  the other faults keep their samples until their natural end (`fault_persist_s`).
- any other action, or one aimed at the wrong client, changes nothing.

No action, no change: without actions the events are byte-identical to a run without the loop.
Every random draw here comes from an rng seeded by (classroom, action_id), never the lesson's.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from pipelines.config import DIAGNOSTICS_ACTION, NO_ISSUE_TAG, FaultModelConfig, Settings
from pipelines.simulator.faults import ENTER_ERRORS, WB_ERRORS
from pipelines.simulator.generator import EventGenerator
from pipelines.simulator.lesson import Lesson, Participant
from pipelines.simulator.model import NORMAL_STEPS, Cause, HelpTruth, SimEvent

ACTIONS_TOPIC = "classroom.help.actions"
MAX_AHEAD_MS = 60_000  # an action issued this far ahead of the simulated clock: a bad clock
_NETWORK = (Cause.TEACHER_NETWORK, Cause.STUDENT_NETWORK)
_MIC = (Cause.TEACHER_MIC_MUTED, Cause.STUDENT_MIC_MUTED)
_NOT_ENTERED = (Cause.TEACHER_NOT_ENTERED, Cause.STUDENT_NOT_ENTERED)


class ActionFeedError(RuntimeError):
    """The actions topic cannot be read (missing, or the broker does not answer)."""


@dataclass(frozen=True, slots=True)
class Action:
    """One corrective action as the resolver publishes it; `action_id` is the idempotency key
    `<help_id>:<attempt>:<action>`."""

    action_id: str
    help_id: str
    classroom_id: str
    action: str
    issued_at_ms: int
    lesson_id: str | None = None
    target_role: str | None = None
    primary_tag: str | None = None
    attempt: int | None = None

    @classmethod
    def parse(cls, value: bytes | None) -> Action | None:
        """The action in a record value, or None when it is not one (never raises)."""
        try:
            obj = orjson.loads(value or b"")
        except orjson.JSONDecodeError:
            return None
        if not isinstance(obj, dict):
            return None
        strings = ("action_id", "help_id", "classroom_id", "action")
        issued = obj.get("issued_at_ms")
        if not all(isinstance(obj.get(k), str) and obj[k] for k in strings) or not (
                isinstance(issued, int) and not isinstance(issued, bool)):
            return None
        def text(key: str) -> str | None:
            value = obj.get(key)
            return value if isinstance(value, str) else None

        attempt = obj.get("attempt")
        return cls(action_id=obj["action_id"], help_id=obj["help_id"],
                   classroom_id=obj["classroom_id"], action=obj["action"], issued_at_ms=issued,
                   lesson_id=text("lesson_id"), target_role=text("target_role"),
                   primary_tag=text("primary_tag"),
                   attempt=attempt if isinstance(attempt, int) else None)


class Effect(StrEnum):
    """What applying one action did."""

    FIXED = "fixed"  # the fault ended at the reaction time
    NOT_FIXED = "not_fixed"  # the cause's fix action, but this fault cannot be fixed
    NO_EFFECT = "no_effect"  # a wrong action, the wrong client, or nothing to fix
    ALREADY_FIXED = "already_fixed"
    FAULT_OVER = "fault_over"  # the fault had ended on its own by the reaction time
    LESSON_OVER = "lesson_over"  # the reaction would come after the simulated lesson
    DIAGNOSED = "diagnosed"  # a help.diagnostics reply was sent


@dataclass
class HelpOutcome:
    """What the loop did to one Help request, for the ground-truth file."""

    fixed_at_ms: int | None = None
    fixed_by_action_id: str | None = None
    actions: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"fixed_at_ms": self.fixed_at_ms, "fixed_by_action_id": self.fixed_by_action_id,
                "actions": self.actions}


class Reactor:
    """Applies actions to the generator's lessons between windows, each action_id once."""

    def __init__(self, gen: EventGenerator, model: FaultModelConfig,
                 not_before_ms: int = 0) -> None:
        self.gen = gen
        self.model = model
        self.not_before_ms = not_before_ms  # older actions are a previous run's
        self.seen: set[str] = set()
        self.outcomes: dict[str, HelpOutcome] = {}
        self.counts: Counter[str] = Counter()
        self._failing: set[str] = set()  # whiteboards failing on every load since a reload

    def receive(self, action: Action) -> Effect | None:
        """Apply `action` now (the generator is at `horizon`); None when it is ignored."""
        gen = self.gen
        if action.action_id in self.seen:
            self.counts["duplicate"] += 1
            return None
        lesson = gen.lesson(action.classroom_id)
        truth = lesson.truth if lesson is not None else None
        if (lesson is None or truth is None or truth.help_id != action.help_id
                or truth.event_time - gen.start_ms >= gen.horizon  # not asked yet
                or action.issued_at_ms < self.not_before_ms):
            self.counts["ignored"] += 1
            return None
        self.seen.add(action.action_id)
        rng = random.Random(f"{lesson.classroom_id}:{action.action_id}")
        delay = self.model.reaction_delay_s
        delay_ms = int(1000 * (delay.min + (delay.max - delay.min) * rng.random()))
        # Received when issued, on the simulated clock (event times): it was read at most a
        # window later. Not earlier than that window, and a clock far ahead is not believed.
        received = max(action.issued_at_ms - gen.start_ms, gen.horizon - gen.window_ms)
        if received > gen.horizon + MAX_AHEAD_MS:
            received = gen.horizon
        t = max(received + delay_ms, gen.horizon)
        finding: str | None = None
        if t >= gen.duration_ms:
            effect = Effect.LESSON_OVER
        elif action.action == DIAGNOSTICS_ACTION:
            effect, finding = Effect.DIAGNOSED, self._diagnose(lesson, truth, t, rng)
        else:
            effect = self._fix(lesson, truth, action, t, rng)
        outcome = self.outcomes.setdefault(truth.help_id, HelpOutcome())
        if effect is Effect.FIXED:
            outcome.fixed_at_ms, outcome.fixed_by_action_id = gen.start_ms + t, action.action_id
        outcome.actions.append({"action_id": action.action_id, "action": action.action,
                                "issued_at_ms": action.issued_at_ms,
                                "applied_at_ms": gen.start_ms + t, "effect": effect.value,
                                **({"finding": finding} if finding is not None else {})})
        self.counts[effect.value] += 1
        return effect

    # ------------------------------------------------------------------ the fault model
    def active(self, lesson: Lesson, truth: HelpTruth, t: int) -> bool:
        """Is the request's fault still there at simulated ms `t`?"""
        v, cause = lesson.victim, truth.cause
        if v is None:
            return False
        if cause in _NETWORK:
            return v.net0 <= t < v.net1
        if cause in _MIC:
            return v.mute0 <= t < v.mute1
        if cause is Cause.VIDEO_FREEZE:
            return v.frz0 <= t < v.frz1
        if cause in _NOT_ENTERED:
            return v.active > t
        outcome = self.outcomes.get(truth.help_id)  # whiteboard: broken until reloaded
        return outcome is None or outcome.fixed_at_ms is None

    def _diagnose(self, lesson: Lesson, truth: HelpTruth, t: int, rng: random.Random) -> str:
        seen = self.active(lesson, truth, t) and rng.random() < self.model.diagnostics_accuracy
        finding = truth.cause.value if seen else NO_ISSUE_TAG
        p = lesson.requester
        assert p is not None
        self._emit(lesson, p, "help.diagnostics", p.team, t,
                   {"help_id": truth.help_id, "finding": finding})
        return finding

    def _fix(self, lesson: Lesson, truth: HelpTruth, action: Action, t: int,
             rng: random.Random) -> Effect:
        v, cause = lesson.victim, truth.cause
        if (v is None or action.action != self.model.fixes.for_cause(cause).action
                or action.target_role not in (None, v.role)):
            return Effect.NO_EFFECT
        outcome = self.outcomes.get(truth.help_id)
        if outcome is not None and outcome.fixed_at_ms is not None:
            return Effect.ALREADY_FIXED
        if not self.active(lesson, truth, t):
            return Effect.FAULT_OVER
        fixed = truth.fixable
        if cause in _NETWORK or cause in _MIC or cause is Cause.VIDEO_FREEZE:
            if fixed:  # healthy samples from `t` on; else they stay faulted
                if cause in _NETWORK:
                    v.net1 = t
                elif cause in _MIC:
                    v.mute1 = t
                else:
                    v.frz1 = t
        elif cause is Cause.WHITEBOARD_LOAD_FAIL:
            page = {"courseware_id": lesson.courseware_id, "page": lesson.page}
            if fixed:  # the page renders
                v.wb1 = t
                self._emit(lesson, v, "wb.page_turn", "whiteboard", t, page)
            elif truth.help_id not in self._failing:  # the reload fails, and so does every
                self._failing.add(truth.help_id)      # load after it, about every 2 s
                n0 = len(lesson.oneoffs)
                while t < self.gen.duration_ms:
                    lesson.oneoff(v, "wb.load_fail", "whiteboard", t, {
                        **page, "error_code": WB_ERRORS[rng.randrange(len(WB_ERRORS))]}, True)
                    t += 1500 + rng.randrange(1000)
                self._schedule(lesson, n0)
        else:  # not entered: the client follows the link again
            steps = [(name, lo + rng.randrange(hi - lo)) for name, lo, hi in NORMAL_STEPS]
            error = None if fixed else ENTER_ERRORS[rng.randrange(len(ENTER_ERRORS))]
            if error is not None:
                steps = steps[:1 + rng.randrange(len(steps) - 1)]
            n0 = len(lesson.oneoffs)
            end = lesson.enter_flow(v, t, steps, error)
            self._schedule(lesson, n0)
            if fixed:
                v.active = end  # in the room: samples and whiteboard from here on
        return Effect.FIXED if fixed else Effect.NOT_FIXED

    def _emit(self, lesson: Lesson, p: Participant, event_type: str, team: str, t: int,
              payload: dict[str, Any]) -> None:
        n0 = len(lesson.oneoffs)
        lesson.oneoff(p, event_type, team, t, payload, True)
        self._schedule(lesson, n0)

    def _schedule(self, lesson: Lesson, n0: int) -> None:
        """Move the lesson's events built since `n0` into the generator, protected from bad
        input (a corrupted reaction would make the ground truth a lie)."""
        new: list[SimEvent] = [ev._replace(protected=True) for ev in lesson.oneoffs[n0:]]
        del lesson.oneoffs[n0:]
        self.gen.schedule(new)


class ActionFeed:
    """`classroom.help.actions` from its end offsets at start, polled without blocking."""

    def __init__(self, settings: Settings, timeout_s: float = 10) -> None:
        from confluent_kafka import Consumer, KafkaException, TopicPartition

        self.topic = settings.kafka_topic(ACTIONS_TOPIC)
        self.malformed = 0
        self._consumer = Consumer({
            **settings.kafka.client_options(), "group.id": "lakehouse-simulator",
            "enable.auto.commit": False, "enable.partition.eof": False,
            "fetch.wait.max.ms": 100})
        try:
            meta = self._consumer.list_topics(timeout=timeout_s).topics.get(self.topic)
            if meta is None or meta.error is not None or not meta.partitions:
                raise ActionFeedError(f"topic {self.topic} does not exist")
            assignment = []
            for pid in sorted(meta.partitions):
                tp = TopicPartition(self.topic, pid)
                _, high = self._consumer.get_watermark_offsets(tp, timeout=timeout_s,
                                                               cached=False)
                assignment.append(TopicPartition(self.topic, pid, high))
            self._consumer.assign(assignment)
        except KafkaException as exc:
            self._consumer.close()
            raise ActionFeedError(f"cannot read {self.topic}: {exc}") from exc
        except ActionFeedError:
            self._consumer.close()
            raise

    def poll(self) -> list[Action]:
        """The actions that arrived since the last call (those already fetched; no waiting)."""
        out: list[Action] = []
        while msgs := self._consumer.consume(num_messages=1000, timeout=0):
            for msg in msgs:
                if msg.error() is not None:
                    continue
                action = Action.parse(msg.value())
                if action is None:
                    self.malformed += 1
                else:
                    out.append(action)
            if len(msgs) < 1000:
                break
        return out

    def close(self) -> None:
        self._consumer.close()
