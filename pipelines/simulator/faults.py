"""Root-cause faults injected before Help requests, and the faulted samples they produce.

A Help request's cause is chosen uniformly among the Help tags; its evidence is placed in the
`fault_lead_s` before the request and, for ongoing faults, lasts `fault_persist_s` after it.
Only the faulted participant's evidence changes, so exactly one tag is true for each request.
Whether an action can clear the fault (the closed loop's fault model) is drawn here too, from an
rng of its own, so the fault model never changes the events.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import orjson

from pipelines.config import CauseFixes, SimulatorConfig
from pipelines.simulator.model import (
    AV_COMBOS,
    EVENT_FMT,
    GOOD,
    NEVER,
    NORMAL_STEPS,
    Cause,
    HelpTruth,
    SimEvent,
    new_uuid,
)
from schemas.contract import TOPIC_OF_EVENT_TYPE

if TYPE_CHECKING:
    from pipelines.simulator.lesson import Lesson, Participant

AV_TOPIC = TOPIC_OF_EVENT_TYPE["av.quality"]
SIGNAL_TOPIC = TOPIC_OF_EVENT_TYPE["signal.heartbeat"]
_CAUSES = tuple(Cause)
ENTER_ERRORS = ("E_AUTH_EXPIRED", "E_LESSON_NOT_FOUND", "E_DEVICE_BLOCKED", "E_JOIN_TIMEOUT")
WB_ERRORS = ("WB_CDN_TIMEOUT", "WB_DECODE_ERROR", "WB_HTTP_404", "WB_HTTP_503")
_dumps = orjson.dumps


def plan_help(lesson: Lesson, cfg: SimulatorConfig, duration_ms: int) -> Participant | None:
    """Maybe schedule a Help request and inject its root cause.

    Returns the participant that will never enter, for the NOT_ENTERED causes (its normal enter
    flow must then not be scheduled).
    """
    rng, teacher, student = lesson.rng, lesson.teacher, lesson.student
    if rng.random() >= cfg.help_share:
        return None
    cause = _CAUSES[rng.randrange(len(_CAUSES))]
    failed = {Cause.TEACHER_NOT_ENTERED: teacher, Cause.STUDENT_NOT_ENTERED: student}.get(cause)
    ready = max(p.active for p in (teacher, student) if p is not failed)
    lo = max(int(cfg.help_min_offset_s * 1000), ready + 10_000)
    hi = duration_ms - int(cfg.help_latest_before_end_s * 1000)
    if lo >= hi:
        return None  # too short a run for this lesson to ask for help
    help_t = lo + rng.randrange(hi - lo)
    f0 = max(0, help_t - int(cfg.fault_lead_s * 1000 * (0.7 + 0.3 * rng.random())))
    f1 = help_t + int(cfg.fault_persist_s * 1000)
    other = {id(teacher): student, id(student): teacher}
    either = (teacher, student)[rng.randrange(2)]
    fault: tuple[int | None, int | None] = (f0, f1)
    victim: Participant | None
    if cause in (Cause.TEACHER_NETWORK, Cause.STUDENT_NETWORK):
        victim = teacher if cause is Cause.TEACHER_NETWORK else student
        victim.net0, victim.net1 = f0, f1
        requester = other[id(victim)]
        category = ("cannot_hear", "cannot_see")[rng.randrange(2)]
        begin = max(f0, victim.active + 1000)
        if help_t - begin >= 15_000 and rng.random() < 0.5:
            _disconnect(lesson, victim, begin + rng.randrange(help_t - begin - 10_000))
    elif cause in (Cause.TEACHER_MIC_MUTED, Cause.STUDENT_MIC_MUTED):
        victim = teacher if cause is Cause.TEACHER_MIC_MUTED else student
        victim.mute0, victim.mute1 = f0, f1
        requester, category = other[id(victim)], "cannot_hear"
    elif cause is Cause.VIDEO_FREEZE:  # the viewer's downlink freezes; the viewer asks
        requester = victim = either
        category = "cannot_see"
        requester.frz0, requester.frz1 = f0, f1
    elif cause is Cause.WHITEBOARD_LOAD_FAIL:
        requester = victim = either
        category = "whiteboard"
        begin = max(f0, requester.active + 500)
        times = sorted(begin + rng.randrange(help_t - begin) for _ in range(1 + rng.randrange(3)))
        for t in times:
            lesson.oneoff(requester, "wb.load_fail", "whiteboard", t,
                          {"courseware_id": lesson.courseware_id, "page": 1 + rng.randrange(20),
                           "error_code": WB_ERRORS[rng.randrange(len(WB_ERRORS))]}, True)
        fault = (times[0], times[-1])
        # The whiteboard keeps failing (no page turns) until an action fixes it.
        requester.wb0, requester.wb1 = times[0], duration_ms
    elif failed is not None:  # the one who cannot get in asks, from the enter screen
        requester = victim = failed
        category = "cannot_enter"
        failed.active = NEVER  # never in the room: sends nothing but the failed attempts
        fault = (_failed_entry(lesson, failed, help_t), None)
    else:  # NO_ISSUE_DETECTED
        requester, category = either, ("cannot_hear", "cannot_see", "other")[rng.randrange(3)]
        fault, victim = (None, None), None
    help_id = new_uuid(rng.getrandbits)
    lesson.oneoff(requester, "help.request", requester.team, help_t,
                  {"help_id": help_id, "category": category}, True)
    start, end = fault
    lesson.requester, lesson.victim = requester, victim
    # Its own rng: the fault model never shifts the lesson's event stream.
    fixable, fix_action = decide_fix(cause, cfg.fault_model.fixes,
                                     random.Random(f"{lesson.classroom_id}:fix"))
    lesson.truth = HelpTruth(
        help_id=help_id, cause=cause, classroom_id=lesson.classroom_id,
        lesson_id=lesson.lesson_id, event_time=lesson.start_ms + help_t, role=requester.role,
        category=category,
        fault_start_time=None if start is None else lesson.start_ms + start,
        fault_end_time=None if end is None else lesson.start_ms + end,
        fixable=fixable, fix_action=fix_action)
    return failed


def decide_fix(cause: Cause, fixes: CauseFixes, rng: random.Random) -> tuple[bool, str | None]:
    """(fixable, the action that fixes it): one draw against the cause's fix probability."""
    if cause is Cause.NO_ISSUE_DETECTED:
        return False, None
    rule = fixes.for_cause(cause)
    return (True, rule.action) if rng.random() < rule.probability else (False, None)


def _disconnect(lesson: Lesson, p: Participant, t: int) -> None:
    """Drop `p`'s link for 3-8 s: a disconnect, no samples in between, then a reconnect."""
    rng = lesson.rng
    reason = ("timeout", "network_lost")[rng.randrange(2)]
    p.disc0, p.disc1 = t, t + 3000 + rng.randrange(5000)
    lesson.oneoff(p, "signal.disconnect", p.team, t,
                  {"reason": reason, "network_type": p.net_type}, True)
    lesson.oneoff(p, "signal.reconnect", p.team, p.disc1,
                  {"network_type": p.net_type, "rtt_ms": 900 + rng.randrange(600),
                   "reason": reason}, True)


def _failed_entry(lesson: Lesson, p: Participant, help_t: int) -> int:
    """One or two enter attempts shortly before the request, each ending in enter_fail."""
    rng = lesson.rng
    t = first = max(0, help_t - 8000 - rng.randrange(17_000))
    for _attempt in range(1 + rng.randrange(2)):
        if t >= help_t - 1000:
            break
        steps = [(n, lo + rng.randrange(hi - lo)) for n, lo, hi in NORMAL_STEPS]
        failing = 1 + rng.randrange(len(steps) - 1)  # fails after launch .. device_check
        error = ENTER_ERRORS[rng.randrange(len(ENTER_ERRORS))]
        t = lesson.enter_flow(p, t, steps[:failing], error) + 2000 + rng.randrange(2000)
    return first


def faulted_samples(lesson: Lesson, p: Participant, t: int, out: list[SimEvent]) -> None:
    """The slow path of `Lesson.samples`: AV samples and a heartbeat while `p` is faulted."""
    rnd = lesson.rng.random
    et, key = lesson.start_ms + t, lesson.key
    net = p.net0 <= t < p.net1
    muted = p.mute0 <= t < p.mute1
    frozen = p.frz0 <= t < p.frz1
    for k, (direction, media) in enumerate(AV_COMBOS):
        if not net:
            loss, rtt, jitter = round(rnd() * 2.5, 2), 40 + int(rnd() * 220), 1 + int(rnd() * 25)
        elif rnd() < 0.85:  # clearly over a threshold: loss >= 10 or rtt >= 800
            if rnd() < 0.5:
                loss, rtt = round(10 + rnd() * 25, 2), 100 + int(rnd() * 300)
            else:
                loss, rtt = round(rnd() * 8, 2), 800 + int(rnd() * 1200)
            jitter = 30 + int(rnd() * 150)
        else:  # degraded but under the thresholds
            loss, rtt = round(3 + rnd() * 5, 2), 300 + int(rnd() * 400)
            jitter = 20 + int(rnd() * 60)
        audio = media == "audio"
        payload: dict[str, Any] = {
            "direction": direction, "media": media,
            "bitrate_kbps": 24 + int(rnd() * 40) if audio else 300 + int(rnd() * 1200),
            "packet_loss_pct": loss, "jitter_ms": jitter, "rtt_ms": rtt, "freeze_count": 0}
        if k == 0:
            payload["mic_muted"] = muted
            if muted:
                payload["bitrate_kbps"] = int(rnd() * 3)
        elif k == 1:
            payload["camera_on"] = True
        elif k == 3 and frozen:
            payload["freeze_count"] = 1 + int(rnd() * 4)
        if p.v2:
            payload["codec"] = p.codec_a if audio else p.codec_v
        value = EVENT_FMT % (p.id_prefix, p.next_id(), p.mid_av, et, _dumps(payload))
        out.append(SimEvent(AV_TOPIC, key, value, et, GOOD, t, True))
    rtt = 800 + int(rnd() * 1700) if net and rnd() < 0.7 else 40 + int(rnd() * 220)
    value = EVENT_FMT % (p.id_prefix, p.next_id(), p.mid_hb, et,
                         _dumps({"network_type": p.net_type, "rtt_ms": rtt}))
    out.append(SimEvent(SIGNAL_TOPIC, key, value, et, GOOD, t, True))
