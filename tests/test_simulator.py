"""The pure generator: determinism, contract conformance, bad-input shares, Help ground truth.

No broker needed: these run `generate_events` only.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from functools import cache
from typing import Any

import orjson
import pytest

from pipelines.config import BadInputShares, SimulatorConfig
from pipelines.simulator import GOOD, BadKind, Cause, HelpTruth, SimEvent, generate_events
from schemas import Reason, validate_raw

START_MS = 1_750_000_000_000
MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
BIG_SHARES = BadInputShares(malformed_json=0.02, missing_field=0.02, wrong_type=0.02,
                            unknown_event_type=0.01, unknown_schema_version=0.01,
                            unnatural_timestamp=0.01, late=0.02, duplicate=0.03,
                            test_account=0.01)
TEST_ACCOUNTS = ["test-user-0001", "qa-bot"]


@cache
def run(classrooms: int, duration_s: float, seed: int, start_ms: int = START_MS,
        shares: BadInputShares = BIG_SHARES, help_share: float = 0.1,
        sample_interval_s: float = 2.0) -> tuple[list[SimEvent], dict[str, HelpTruth]]:
    config = SimulatorConfig(help_share=help_share, bad_input=shares,
                             test_accounts=TEST_ACCOUNTS, sample_interval_s=sample_interval_s)
    truths: dict[str, HelpTruth] = {}
    events = list(generate_events(config, classrooms, duration_s, seed, start_ms, truths))
    return events, truths


def parsed(ev: SimEvent) -> dict[str, Any]:
    return orjson.loads(ev.value)


# ------------------------------------------------------------------------------ (a) determinism
def test_same_seed_and_start_give_identical_bytes() -> None:
    config = SimulatorConfig(bad_input=BIG_SHARES, test_accounts=TEST_ACCOUNTS)
    first = list(generate_events(config, 40, 40, seed=11, start_ms=START_MS))
    second = list(generate_events(config, 40, 40, seed=11, start_ms=START_MS))
    assert first == second
    assert len(first) > 8000


def test_different_seed_or_start_gives_different_events() -> None:
    config = SimulatorConfig(bad_input=BIG_SHARES, test_accounts=TEST_ACCOUNTS)
    base = [ev.value for ev in generate_events(config, 20, 20, seed=11, start_ms=START_MS)]
    other_seed = [ev.value for ev in generate_events(config, 20, 20, seed=12, start_ms=START_MS)]
    later = [ev.value for ev in generate_events(config, 20, 20, seed=11, start_ms=START_MS + 1)]
    assert base != other_seed
    assert base != later
    good = [ev.value for ev in generate_events(config, 20, 20, seed=12, start_ms=START_MS)
            if ev.kind == GOOD]
    assert not set(base) & set(good)


def test_events_are_in_simulated_time_order_with_unique_ids() -> None:
    events, _ = run(60, 90, 3)
    sim = [ev.sim_ms for ev in events]
    assert sim == sorted(sim)
    good = [ev for ev in events if ev.kind == GOOD]
    assert all(ev.event_time == START_MS + ev.sim_ms for ev in good)
    ids = [parsed(ev)["event_id"] for ev in good]
    assert len(ids) == len(set(ids))
    assert all(ev.key == parsed(ev)["classroom_id"].encode() for ev in good)


@pytest.mark.parametrize(("interval_s", "low", "high"), [(2.0, 5.2, 5.6), (4.0, 2.6, 2.8)])
def test_cadence_per_lesson(interval_s: float, low: float, high: float) -> None:
    """2 x (4 AV + 1 heartbeat) + 1 whiteboard per tick: 5.5/s at DESIGN.md's 2 s cadence,
    2.75/s at 4 s (DESIGN.md's stated average of about 2.5)."""
    events, _ = run(60, 90, 3, sample_interval_s=interval_s)
    good = Counter(ev.topic for ev in events if ev.kind == GOOD)
    steady = [ev for ev in events
              if ev.kind != BadKind.DUPLICATE and 20_000 <= ev.sim_ms < 80_000]
    per_lesson_s = len(steady) / 60 / 60
    assert low < per_lesson_s < high
    assert set(good) == {"classroom.av", "classroom.signal", "classroom.whiteboard",
                         "classroom.enter", "classroom.help"}


# ------------------------------------------------------------------------------ (b) contract
def test_good_events_conform_and_bad_ones_break_it_as_labelled() -> None:
    events, _ = run(60, 90, 3)
    expected = {BadKind.MALFORMED_JSON: Reason.MALFORMED_JSON,
                BadKind.MISSING_FIELD: Reason.MISSING_FIELD,
                BadKind.WRONG_TYPE: Reason.BAD_TYPE,
                BadKind.UNKNOWN_EVENT_TYPE: Reason.UNKNOWN_EVENT_TYPE,
                BadKind.UNKNOWN_SCHEMA_VERSION: Reason.UNKNOWN_SCHEMA_VERSION}
    seen: Counter[str] = Counter()
    for ev in events:
        violations = validate_raw(ev.value)
        seen[ev.kind] += 1
        if ev.kind in expected:
            assert violations, ev
            assert violations[0].reason is expected[ev.kind], (ev, violations)
        else:  # good, late, unnatural, duplicate, test account: valid JSON, valid contract
            assert violations == [], (ev, violations)
        if ev.kind != BadKind.MALFORMED_JSON:
            from_test_account = parsed(ev).get("user_id") in TEST_ACCOUNTS
            assert from_test_account == (ev.kind == BadKind.TEST_ACCOUNT), ev
    assert set(seen) == {GOOD, *BadKind}
    malformed = [ev.value for ev in events if ev.kind == BadKind.MALFORMED_JSON]
    assert any(not _is_utf8(value) for value in malformed)


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode()
    except UnicodeDecodeError:
        return False
    return True


def test_both_av_quality_versions_are_produced() -> None:
    events, _ = run(60, 90, 3)
    versions = Counter((d["schema_version"], "codec" in d["payload"])
                       for ev in events if ev.kind == GOOD and ev.topic == "classroom.av"
                       for d in [parsed(ev)])
    assert set(versions) == {(1, False), (2, True)}


def test_late_unnatural_and_duplicate_relate_to_their_neighbours() -> None:
    events, _ = run(60, 90, 3)
    sent: dict[bytes, int] = {}
    for i, ev in enumerate(events):
        neighbours = [e.event_time for e in events[max(0, i - 50): i + 50] if e.kind == GOOD]
        typical = statistics.median(neighbours)
        if ev.kind == BadKind.LATE:
            assert 2 * MINUTE_MS - 3000 <= typical - ev.event_time <= 3 * MINUTE_MS + 3000
        elif ev.kind == BadKind.UNNATURAL_TIMESTAMP:
            assert abs(ev.event_time - typical) >= 2 * HOUR_MS - 3000
            assert ev.event_time == parsed(ev)["event_time"]
        elif ev.kind == BadKind.DUPLICATE:
            assert ev.value in sent  # the very same bytes (so the same event_id) went out before
            assert i - sent[ev.value] < 200_000
        else:
            if ev.kind == GOOD:
                assert abs(ev.event_time - typical) <= 4000
            sent.setdefault(ev.value, i)


# ------------------------------------------------------------------------------ (c) shares
@pytest.mark.parametrize("shares", [BIG_SHARES, SimulatorConfig().bad_input,
                                    BadInputShares(late=0.1, duplicate=0.05)])
def test_bad_input_shares_match_config(shares: BadInputShares) -> None:
    events, _ = run(150, 120, 5, shares=shares)
    kinds = Counter(ev.kind for ev in events)
    generated = len(events) - kinds[BadKind.DUPLICATE]  # duplicates are extra copies
    for kind in BadKind:
        share = getattr(shares, kind.value)
        expected = share * generated
        if expected == 0:
            assert kinds[kind] == 0
            continue
        # within 5 sigma of a binomial count (or 5% of it)
        sigma = (expected * (1 - share)) ** 0.5
        assert abs(kinds[kind] - expected) <= max(5 * sigma, 0.05 * expected), (kind, kinds)


def test_no_bad_input_when_all_shares_are_zero() -> None:
    events, _ = run(20, 30, 5, shares=BadInputShares())
    assert {ev.kind for ev in events} == {GOOD}


# ------------------------------------------------------------------------------ (d) Help truth
def tags_of(window: list[dict[str, Any]]) -> set[str]:
    """A reference implementation of DESIGN.md's Help tagging rules (default thresholds)."""
    tags: set[str] = set()
    for role in ("teacher", "student"):
        mine = [e for e in window if e["role"] == role]
        bad_net = [e for e in mine if e["event_type"] == "av.quality"
                   and (e["payload"]["packet_loss_pct"] >= 10 or e["payload"]["rtt_ms"] >= 800)]
        if len(bad_net) >= 3 or any(e["event_type"] == "signal.disconnect" for e in mine):
            tags.add(f"{role.upper()}_NETWORK")
        if any(e["event_type"] == "av.quality" and e["payload"].get("mic_muted")
               for e in mine):
            tags.add(f"{role.upper()}_MIC_MUTED")
        steps = {e["payload"]["step"] for e in mine if e["event_type"] == "enter.step"}
        if "enter_fail" in steps and "enter_success" not in steps:
            tags.add(f"{role.upper()}_NOT_ENTERED")
    frozen = [e for e in window if e["event_type"] == "av.quality"
              and e["payload"]["direction"] == "down" and e["payload"]["media"] == "video"
              and e["payload"]["freeze_count"] > 0]
    if len(frozen) >= 2:
        tags.add("VIDEO_FREEZE")
    if any(e["event_type"] == "wb.load_fail" for e in window):
        tags.add("WHITEBOARD_LOAD_FAIL")
    return tags or {"NO_ISSUE_DETECTED"}


@pytest.mark.parametrize("interval_s", [2.0, 4.0])
def test_every_help_request_has_ground_truth_and_visible_evidence(interval_s: float) -> None:
    events, truths = run(180, 150, 9, help_share=1.0, sample_interval_s=interval_s)
    by_classroom: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for ev in events:
        if ev.kind in (GOOD, BadKind.DUPLICATE):
            by_classroom[ev.key.decode()].append(parsed(ev))
    requests = [e for evs in by_classroom.values() for e in evs
                if e["event_type"] == "help.request"]
    assert len(requests) == len(truths) > 150
    assert {e["payload"]["help_id"] for e in requests} == set(truths)
    assert set(Counter(t.cause for t in truths.values())) == set(Cause)
    for request in requests:
        truth = truths[request["payload"]["help_id"]]
        assert (truth.classroom_id, truth.lesson_id, truth.event_time, truth.role,
                truth.category) == (request["classroom_id"], request["lesson_id"],
                                    request["event_time"], request["role"],
                                    request["payload"]["category"])
        t = truth.event_time
        lesson = by_classroom[truth.classroom_id]
        window = [e for e in lesson if t - 60_000 <= e["event_time"] <= t + 5000]
        assert tags_of(window) == {truth.cause.value}, truth
        if truth.cause in (Cause.TEACHER_NOT_ENTERED, Cause.STUDENT_NOT_ENTERED):
            role = truth.role  # the one who could not enter asks, and sends nothing else
            assert {e["event_type"] for e in lesson if e["role"] == role} == {
                "enter.step", "help.request"}


def test_help_requests_come_after_the_first_20_seconds() -> None:
    _, truths = run(180, 150, 9, help_share=1.0)
    assert all(t.event_time >= START_MS + 20_000 for t in truths.values())
    share = len(run(300, 90, 4, help_share=0.1)[1]) / 300
    assert 0.05 < share < 0.15


def test_ground_truth_json_shape() -> None:
    _, truths = run(180, 150, 9, help_share=1.0)
    entry = next(iter(truths.values())).to_json()
    assert {"cause", "classroom_id", "lesson_id", "event_time", "role"} <= set(entry)
    assert orjson.loads(orjson.dumps(entry)) == entry
