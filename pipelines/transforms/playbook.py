"""The Help playbook as a pure state machine: a case, a classroom's evidence, a clock -> steps.

No Spark here: ResolverProcessor (pipelines/transforms/resolver.py) keeps cases and evidence in
its state store and calls `open_case` / `advance`; the tests call them directly.

    NEW -> VALIDATE --(problem gone in the newest evidence)--> RESOLVED_SELF
               |  (no evidence of the role yet: wait up to evidence_wait_s for its next record)
               |
               v
              ACT (publish an action, attempt n) -> CONFIRM --(healthy)--> RESOLVED_AUTO
               ^                                      |
               +------(confirm timeout, retry left)---+--(no retry left, total timeout)--> ESCALATED

A proof playbook (enter_success, page_rendered) whose proof lands between the request and its
first action's effect ends RESOLVED_SELF from CONFIRM too (`proven_before_acting`).

NO_ISSUE_DETECTED's action asks the client for diagnostics; its reply (`help.diagnostics`) with
a tag re-tags the case and restarts VALIDATE with that tag's playbook; NO_ISSUE_DETECTED again
escalates.

Times: evidence is compared in broker time only (each record's Kafka timestamp, which the
producer stamps when it sends), timeouts in processing time (the micro-batch's timestamp, which
Spark keeps in the offset log, so a replayed batch decides the same). The action's time is the
batch time; on one host (or NTP-synced ones) the two clocks agree to well under `grace_s`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from pipelines.config import NO_ISSUE_TAG, ActionTarget, ConfirmBy, PlaybookConfig, ResolverConfig

NEW, VALIDATE, ACT, CONFIRM = "NEW", "VALIDATE", "ACT", "CONFIRM"
RESOLVED_SELF, RESOLVED_AUTO, ESCALATED = "RESOLVED_SELF", "RESOLVED_AUTO", "ESCALATED"
FINAL_STATES = frozenset({RESOLVED_SELF, RESOLVED_AUTO, ESCALATED})
ROLES = ("teacher", "student")
ENTER_SUCCESS = "enter_success"
PAGE_TURN = "page_turn"  # a wb.page_turn (resolver_rows gives it this kind)
# Positive confirms: the signal that proves the action worked.
_PROOF = {ConfirmBy.ENTER_SUCCESS: ENTER_SUCCESS, ConfirmBy.PAGE_RENDERED: PAGE_TURN}


@dataclass
class Evidence:
    """A classroom's evidence, reduced to what the playbooks ask (bounded: kinds x roles).

    fired: "<signal>|<role>" -> newest broker ms of that fired signal; alive: role -> newest
    broker ms of any valid record of that role; findings: help_id -> [finding, broker ms].
    """

    fired: dict[str, int] = field(default_factory=dict)
    alive: dict[str, int] = field(default_factory=dict)
    findings: dict[str, list[Any]] = field(default_factory=dict)

    def see(self, signal: str | None, role: str | None, at_ms: int) -> None:
        """One evidence row: a fired signal (or None for a liveness row) of `role` at `at_ms`."""
        if role in ROLES:
            self.alive[role] = max(self.alive.get(role, at_ms), at_ms)
        if signal:
            key = f"{signal}|{role}"
            self.fired[key] = max(self.fired.get(key, at_ms), at_ms)

    def last(self, signals: list[str], role: str | None) -> int | None:
        """Newest time of any of `signals` by `role` (any role when None)."""
        roles = ROLES if role is None else (role,)
        times = [self.fired[f"{s}|{r}"] for s in signals for r in roles if f"{s}|{r}" in self.fired]
        return max(times) if times else None

    def alive_at(self, role: str | None) -> int | None:
        roles = ROLES if role is None else (role,)
        times = [self.alive[r] for r in roles if r in self.alive]
        return max(times) if times else None


def target_role(book: PlaybookConfig, requester_role: str | None) -> str | None:
    if book.target is ActionTarget.REQUESTER:
        return requester_role if requester_role in ROLES else None
    if book.target is ActionTarget.CLASSROOM:
        return None
    return book.target.value


def healthy_since(ev: Evidence, book: PlaybookConfig, role: str | None, start_ms: int,
                  span_ms: int) -> bool:
    """Whether the evidence shows the problem gone since `start_ms` (broker time).

    quiet: the role kept sending for `span_ms` after both `start_ms` and its last bad signal
    of the playbook's kinds (silence is not health: a dropped client sends nothing);
    enter_success / page_rendered: the role entered (a page rendered) after `start_ms` and
    after its last failure.
    """
    if book.confirm in _PROOF:
        proof = ev.last([_PROOF[book.confirm]], role)
        failed = ev.last(book.signals, role)
        return proof is not None and proof >= start_ms and (failed is None or proof > failed)
    if book.confirm is ConfirmBy.DIAGNOSTICS:
        return False
    last_bad = ev.last(book.signals, role)
    begin = start_ms if last_bad is None else max(start_ms, last_bad + 1)
    alive = ev.alive_at(role)
    return alive is not None and alive - begin >= span_ms


def first_action_ms(case: dict[str, Any]) -> int:
    """When the current playbook first acted (its attempts since the last re-tag).

    CONFIRM counts health from there, not from the newest retry: a fix that landed, but whose
    proof reached the resolver only after the confirm timeout sent a retry (evidence that went
    through a busy micro-batch, or the help job's relay), still confirms the case instead of
    escalating it when the one proof (an enter_success, a page turn) came before the retry.
    For quiet playbooks this is no laxer: the span still counts from the last bad signal, and
    while a fault is on, no gap between two bad samples is as long as the span (the settings
    see to that).
    """
    return int(case["tried"][-case["book_attempts"]]["issued_at_ms"])


def proven_before_acting(ev: Evidence, book: PlaybookConfig, role: str | None,
                         case: dict[str, Any], grace_ms: int) -> bool:
    """A proof playbook's proof (enter_success, a rendered page) came after the request but
    before this playbook's first action could take effect: the problem went away on its own.

    Why: an early tag (help.early_tags) reaches the resolver before the request's window has
    closed, so VALIDATE may act before the evidence of a role that got in by itself arrives;
    no later proof will come, and without this the case would end ESCALATED.
    """
    if not (book.self_resolve and book.confirm in _PROOF) or not case["book_attempts"]:
        return False
    first_ms = first_action_ms(case)
    # A proof playbook ignores the span: healthy since t means a proof at or after t.
    return (healthy_since(ev, book, role, case["request_broker_ms"], 0)
            and not healthy_since(ev, book, role, first_ms + grace_ms, 0))


def recovering(ev: Evidence, book: PlaybookConfig, role: str | None, start_ms: int) -> bool:
    """The newest evidence of the role after `start_ms` is healthy, the span not yet complete
    (quiet playbooks only: an enter_success or a diagnostics reply is there or not)."""
    if book.confirm is not ConfirmBy.QUIET:
        return False
    alive, last_bad = ev.alive_at(role), ev.last(book.signals, role)
    return alive is not None and alive > start_ms and (last_bad is None or last_bad < alive)


def unseen(ev: Evidence, book: PlaybookConfig, role: str | None) -> bool:
    """The evidence says nothing of the role either way (quiet playbooks): no record of it, no
    bad signal. A classroom that only ever looked healthy leaves no evidence behind, so a
    role the evidence does not know is not yet a sign of trouble."""
    return (book.confirm is ConfirmBy.QUIET and ev.alive_at(role) is None
            and ev.last(book.signals, role) is None)


def open_case(tag: dict[str, Any], now_ms: int, cfg: ResolverConfig
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """A new case from a tag record (classroom.help.tags JSON), and its NEW transition."""
    request_ms = int(tag.get("request_broker_time_ms") or tag.get("request_time_ms") or now_ms)
    case = {
        "help_id": tag["help_id"], "classroom_id": tag["classroom_id"],
        "lesson_id": tag.get("lesson_id"), "requester_role": tag.get("requester_role"),
        "tags": list(tag.get("tags") or [tag.get("primary_tag") or NO_ISSUE_TAG]),
        "primary_tag": tag.get("primary_tag") or NO_ISSUE_TAG,
        "request_time_ms": int(tag.get("request_time_ms") or request_ms),
        "request_broker_ms": request_ms,
        "deadline_ms": request_ms + int(cfg.total_timeout_s * 1000),
        "validate_until_ms": now_ms + int(cfg.evidence_wait_s * 1000),
        "state": NEW, "seq": 0, "attempt": 0, "book_attempts": 0, "action": None,
        "action_id": None, "action_ms": None, "target_role": None, "due_ms": None,
        "tried": [],
    }
    return case, _row(case, NEW, now_ms, f"tagged {case['primary_tag']} "
                                         f"(tags {','.join(case['tags'])})")


def _row(case: dict[str, Any], state: str, now_ms: int, detail: str,
         escalation: str | None = None) -> dict[str, Any]:
    case["state"] = state
    case["seq"] += 1
    acting = state in (ACT, CONFIRM)
    return {"help_id": case["help_id"], "classroom_id": case["classroom_id"],
            "lesson_id": case["lesson_id"], "primary_tag": case["primary_tag"],
            "tags": list(case["tags"]), "state": state, "seq": case["seq"],
            "action": case["action"] if acting or state == RESOLVED_AUTO else None,
            "action_id": case["action_id"] if state == ACT else None,
            "attempt": case["attempt"] if state == ACT else None,
            "target_role": case["target_role"] if acting else None,
            "detail": detail, "transition_ms": now_ms,
            "request_ms": case["request_time_ms"], "message": escalation}


def _escalate(case: dict[str, Any], now_ms: int, reason: str) -> dict[str, Any]:
    message = orjson.dumps({
        "help_id": case["help_id"], "classroom_id": case["classroom_id"],
        "lesson_id": case["lesson_id"], "primary_tag": case["primary_tag"],
        "tags": case["tags"], "tried": case["tried"], "reason": reason,
        "request_time_ms": case["request_time_ms"], "escalated_at_ms": now_ms}).decode()
    return _row(case, ESCALATED, now_ms, reason, message)


def _act(case: dict[str, Any], book: PlaybookConfig, now_ms: int) -> list[dict[str, Any]]:
    case["attempt"] += 1
    case["book_attempts"] += 1
    case["action"] = book.action.value
    case["action_id"] = f"{case['help_id']}:{case['attempt']}:{book.action.value}"
    case["action_ms"] = now_ms
    case["target_role"] = target_role(book, case["requester_role"])
    # The confirm window opens in the next micro-batch: this one publishes the action only
    # at its end, which on a busy host can eat most of the window (see `advance`).
    case["due_ms"] = None
    case["extended"] = False
    case["tried"].append({"action": case["action"], "action_id": case["action_id"],
                          "attempt": case["attempt"], "target_role": case["target_role"],
                          "primary_tag": case["primary_tag"], "issued_at_ms": now_ms})
    detail = f"attempt {case['book_attempts']} of {1 + book.retries}"
    return [_row(case, ACT, now_ms, detail),
            _row(case, CONFIRM, now_ms, f"{book.confirm_timeout_s:g} s from the next batch")]


def advance(case: dict[str, Any], ev: Evidence, now_ms: int, cfg: ResolverConfig
            ) -> list[dict[str, Any]]:
    """Run the case as far as the evidence and the clock allow; the transitions, in order.

    `case` is updated in place; it is final when its state is in FINAL_STATES.
    """
    rows: list[dict[str, Any]] = []
    span_ms, grace_ms = int(cfg.healthy_span_s * 1000), int(cfg.grace_s * 1000)
    for _ in range(16):  # a case moves at most a few steps per call; bounded on principle
        state, book = case["state"], cfg.playbook(case["primary_tag"])
        role = target_role(book, case["requester_role"])
        if state in FINAL_STATES:
            break
        if now_ms >= case["deadline_ms"]:
            rows.append(_escalate(case, now_ms, f"total timeout ({cfg.total_timeout_s:g} s "
                                                f"after the request) in {state}"))
        elif state == NEW:
            rows.append(_row(case, VALIDATE, now_ms, f"playbook {case['primary_tag']}"))
        elif state == VALIDATE:
            if book.self_resolve and healthy_since(ev, book, role, case["request_broker_ms"],
                                                   span_ms):
                rows.append(_row(case, RESOLVED_SELF, now_ms,
                                 "problem no longer visible in the newest evidence"))
            elif book.self_resolve and unseen(ev, book, role) and now_ms < case.get(
                    "validate_until_ms", 0):
                break  # no evidence of the role yet: wait for its next record (see wake_at)
            else:
                rows.extend(_act(case, book, now_ms))
        elif state == CONFIRM:
            if case["due_ms"] is None and now_ms > case["action_ms"]:
                # A later batch: the one that issued the action has published it by now.
                case["due_ms"] = now_ms + int(book.confirm_timeout_s * 1000)
            if book.confirm is ConfirmBy.DIAGNOSTICS:
                found = ev.findings.get(case["help_id"])
                if found is not None and found[1] >= case["action_ms"] - grace_ms:
                    finding = str(found[0])
                    if finding == NO_ISSUE_TAG or finding not in cfg.playbooks:
                        rows.append(_escalate(case, now_ms,
                                              f"diagnostics found {finding}: no playbook"))
                    else:
                        case["primary_tag"] = finding
                        case["tags"] = [finding, *[t for t in case["tags"] if t != finding
                                                   and t != NO_ISSUE_TAG]]
                        case["book_attempts"] = 0
                        rows.append(_row(case, VALIDATE, now_ms,
                                         f"re-tagged {finding} by client diagnostics"))
                    continue
            elif healthy_since(ev, book, role, first_action_ms(case) + grace_ms, span_ms):
                rows.append(_row(case, RESOLVED_AUTO, now_ms,
                                 f"healthy after {case['action_id']}"))
                continue
            elif proven_before_acting(ev, book, role, case, grace_ms):
                rows.append(_row(case, RESOLVED_SELF, now_ms,
                                 "problem gone before the first action could take effect"))
                continue
            if case["due_ms"] is None or now_ms < case["due_ms"]:
                break
            if not case.get("extended") and recovering(ev, book, role,
                                                       case["action_ms"] + grace_ms):
                # Healthy since the action but not yet for the whole span: the client may
                # have got the action late (a slow batch publishes it at its end). Once more.
                case["extended"] = True
                case["due_ms"] = now_ms + span_ms + grace_ms
                break
            if case["book_attempts"] <= book.retries:
                rows.extend(_act(case, book, now_ms))
            else:
                rows.append(_escalate(case, now_ms, f"not confirmed after "
                                                    f"{case['book_attempts']} attempts"))
        else:  # an unknown state from an older version: hand it to a human
            rows.append(_escalate(case, now_ms, f"unknown state {state}"))
    return rows


def wake_at(case: dict[str, Any]) -> int | None:
    """When the case must be looked at again without new input (processing time)."""
    if case["state"] in FINAL_STATES:
        return None
    due = None
    if case["state"] == VALIDATE:  # waiting for a first record of the role (see advance)
        due = case.get("validate_until_ms")
    if case["state"] == CONFIRM:  # the next batch opens the confirm window (see _act)
        due = case["action_ms"] + 1 if case["due_ms"] is None else case["due_ms"]
    return min(t for t in (due, case["deadline_ms"]) if t is not None)
