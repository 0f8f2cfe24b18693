"""Help resolver: the playbook state machine (pure functions, no Spark) and the playbooks'
configuration."""

from __future__ import annotations

import json
import os

import pytest

from pipelines.config import NO_ISSUE_TAG, ResolverConfig
from pipelines.transforms.playbook import (
    ACT,
    CONFIRM,
    ESCALATED,
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


def test_a_proof_that_arrives_after_the_retry_still_confirms_the_first_action() -> None:
    """The first resend fixed it, but its enter_success reached the resolver only after the
    confirm timeout had sent a second one (a slow micro-batch, or the help job's relay): the
    case ends RESOLVED_AUTO, not ESCALATED once the second window runs out."""
    ev = Evidence()
    ev.see("enter_fail", "student", T0)
    case, _ = open_case(tag("STUDENT_NOT_ENTERED"), T0 + 1000, CFG)
    assert run(case, ev, T0 + 1000) == [VALIDATE, ACT, CONFIRM]
    assert run(case, ev, T0 + 2000) == []  # the next batch opens the 8 s window
    assert run(case, ev, T0 + 10_000) == [ACT, CONFIRM]  # nothing seen by then: again
    assert case["action_id"] == "h1:2:resend_enter_link"
    ev.see("enter_success", "student", T0 + 5000)  # after the first resend + grace
    assert run(case, ev, T0 + 11_000) == [RESOLVED_AUTO]


def test_a_proof_from_before_the_first_action_does_not_confirm_it() -> None:
    ev = Evidence()
    ev.see("enter_fail", "student", T0)
    case, _ = open_case(tag("STUDENT_NOT_ENTERED"), T0 + 1000, CFG)
    assert run(case, ev, T0 + 1000) == [VALIDATE, ACT, CONFIRM]
    assert run(case, ev, T0 + 10_000) == []
    ev.see("enter_success", "student", T0 + 1500)  # within the grace after the action
    assert RESOLVED_AUTO not in run(case, ev, T0 + 10_500)


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


def test_a_role_without_evidence_is_awaited_before_acting() -> None:
    """A classroom that only ever looked healthy leaves the resolver no evidence: VALIDATE
    waits (evidence_wait_s) for the role's next record instead of acting on nothing."""
    ev = Evidence()
    case, _ = open_case(tag("VIDEO_FREEZE"), T0 + 7000, CFG)
    assert run(case, ev, T0 + 7000) == [VALIDATE]
    assert wake_at(case) == T0 + 10_000
    ev.see(None, "student", T0 + 7500)  # its next heartbeat, well after the request
    assert run(case, ev, T0 + 8000) == [RESOLVED_SELF]

    # Nothing from the role by the end of the wait: silence is not health, act.
    ev2 = Evidence()
    ev2.see(None, "teacher", T0 + 7500)  # the other role says nothing of the student
    case2, _ = open_case(tag("VIDEO_FREEZE", help_id="h2"), T0 + 7000, CFG)
    assert run(case2, ev2, T0 + 7000) == [VALIDATE]
    assert run(case2, ev2, T0 + 9000) == []
    assert run(case2, ev2, T0 + 10_000) == [ACT, CONFIRM]

    # A bad signal of the role is evidence: act at once; so does a wait of 0.
    ev3 = Evidence()
    ev3.see("video_freeze", "student", T0 + 6000)
    case3, _ = open_case(tag("VIDEO_FREEZE", help_id="h3"), T0 + 7000, CFG)
    assert run(case3, ev3, T0 + 7000) == [VALIDATE, ACT, CONFIRM]
    no_wait = ResolverConfig(evidence_wait_s=0)
    case4, _ = open_case(tag("VIDEO_FREEZE", help_id="h4"), T0 + 7000, no_wait)
    assert run(case4, Evidence(), T0 + 7000, no_wait) == [VALIDATE, ACT, CONFIRM]


def test_whiteboard_failure_never_resolves_itself() -> None:
    ev = Evidence()
    ev.see("wb_load_fail", "student", T0 - 10_000)
    alive(ev, "student", T0 - 9000, T0 + 6000)
    case, _ = open_case(tag("WHITEBOARD_LOAD_FAIL"), T0 + 7000, CFG)
    assert run(case, ev, T0 + 7000) == [VALIDATE, ACT, CONFIRM]


def test_whiteboard_confirms_by_a_rendered_page_only() -> None:
    """Silence after a reload proves nothing (the failure was a few events): only a page turn
    of the requester after the action and after its last load failure confirms it."""
    ev = Evidence()
    ev.see("wb_load_fail", "student", T0 - 10_000)
    ev.see("page_turn", "student", T0 - 20_000)  # before the failure: not a proof
    case, _ = open_case(tag("WHITEBOARD_LOAD_FAIL"), T0 + 7000, CFG)
    assert run(case, ev, T0 + 7000) == [VALIDATE, ACT, CONFIRM]
    alive(ev, "student", T0 + 8000, T0 + 14_000)  # quiet and alive for 6 s
    assert run(case, ev, T0 + 14_000) == []
    ev.see("page_turn", "student", T0 + 14_500)
    assert run(case, ev, T0 + 15_000) == [RESOLVED_AUTO]


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


def test_an_enter_before_the_action_took_effect_resolves_self() -> None:
    """An early tag reaches the resolver before the window closed: the role may get in on its
    own after the request, before the action could act. That is RESOLVED_SELF, not a
    case left waiting for a second enter_success (and then ESCALATED)."""
    ev = Evidence()
    ev.see("enter_fail", "teacher", T0 - 2000)
    case, _ = open_case(tag("TEACHER_NOT_ENTERED"), T0 + 1500, CFG)
    assert run(case, ev, T0 + 1500) == [VALIDATE, ACT, CONFIRM]
    ev.see("enter_success", "teacher", T0 + 2000)  # before action + grace (T0 + 2500)
    rows = advance(case, ev, T0 + 3000, CFG)
    assert [r["state"] for r in rows] == [RESOLVED_SELF]
    assert "before the first action" in rows[0]["detail"]
    # At or after action + grace, the same proof is the action's doing.
    later = Evidence()
    later.see("enter_fail", "teacher", T0 - 2000)
    case, _ = open_case(tag("TEACHER_NOT_ENTERED"), T0 + 1500, CFG)
    assert run(case, later, T0 + 1500) == [VALIDATE, ACT, CONFIRM]
    later.see("enter_success", "teacher", T0 + 2500)
    assert run(case, later, T0 + 3000) == [RESOLVED_AUTO]


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
