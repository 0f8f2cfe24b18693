"""The resolver's per-bucket state (pure: no Spark): what it keeps, what it drops, which
timers it asks for. The processor around it runs in tests/test_resolver_job.py."""

from __future__ import annotations

from pipelines.config import ResolverConfig
from pipelines.transforms.playbook import Evidence, open_case, wake_at
from pipelines.transforms.resolver import Bucket

CFG = ResolverConfig()
T0 = 1_790_000_000_000
TTL, DONE_TTL = 180_000, 3_600_000


def _case(help_id: str, classroom: str, at: int = T0) -> dict:
    case, _ = open_case({"help_id": help_id, "classroom_id": classroom,
                         "primary_tag": "TEACHER_NETWORK", "requester_role": "teacher",
                         "request_time_ms": at, "request_broker_time_ms": at}, at, CFG)
    return case


def _evidence(*, fired_at: int | None = None, alive_at: int | None = None,
              finding_at: int | None = None) -> Evidence:
    ev = Evidence()
    if alive_at is not None:
        ev.see(None, "teacher", alive_at)
    if fired_at is not None:
        ev.see("bad_network_sample", "teacher", fired_at)
    if finding_at is not None:
        ev.findings["h-old"] = ["TEACHER_NETWORK", finding_at]
    return ev


def test_a_bucket_survives_its_round_trip_through_the_state_store() -> None:
    bucket = Bucket(ev={"c1": _evidence(fired_at=T0, alive_at=T0 + 5, finding_at=T0)},
                    seen={"c1": T0}, cases={"h1": _case("h1", "c1")}, done={"h0": T0},
                    timers=[T0 + 60_000])
    again = Bucket.loads(bucket.dumps())
    assert again == bucket
    assert isinstance(again.ev["c1"], Evidence)
    assert Bucket.loads(None) == Bucket() and Bucket().empty and not bucket.empty


def test_cases_of_a_classroom() -> None:
    bucket = Bucket(cases={"h1": _case("h1", "c1"), "h2": _case("h2", "c2"),
                           "h3": _case("h3", "c1")})
    assert sorted(bucket.cases_of("c1")) == ["h1", "h3"]
    assert bucket.cases_of("c9") == {}


def test_prune_keeps_what_a_case_may_still_ask_and_drops_the_rest() -> None:
    now = T0 + 200_000
    bucket = Bucket(
        ev={"open": _evidence(fired_at=T0, alive_at=T0 + 400_000),  # a case is open: kept
            "recent": _evidence(fired_at=T0 + 150_000, alive_at=T0 + 190_000),
            "old_signal": _evidence(fired_at=T0, alive_at=T0 + 190_000),
            "quiet": _evidence(fired_at=T0 + 150_000, alive_at=T0 + 150_000),
            "healthy_only": _evidence(alive_at=T0 + 190_000),
            "finding": _evidence(alive_at=T0 + 190_000, finding_at=T0 + 100_000)},
        seen={"open": T0, "recent": now, "old_signal": now, "quiet": now - TTL - 1,
              "healthy_only": now, "finding": now},
        cases={"h1": _case("h1", "open")},
        done={"h-old": now - DONE_TTL - 1, "h-new": now - 1})
    bucket.prune(now, TTL, DONE_TTL)
    assert sorted(bucket.ev) == ["finding", "open", "recent"]
    assert sorted(bucket.seen) == ["finding", "open", "recent"]
    assert bucket.done == {"h-new": now - 1}
    # a finding older than the horizon goes; without fired signals the classroom goes with it
    bucket.ev["finding"].alive["teacher"] = T0 + 300_000
    bucket.prune(now, TTL, DONE_TTL)
    assert sorted(bucket.ev) == ["open", "recent"]


def test_timers_follow_the_open_cases() -> None:
    now = T0 + 1_000
    first, second = _case("h1", "c1"), _case("h2", "c2", at=T0 + 500)
    bucket = Bucket(cases={"h1": first, "h2": second})
    delete, register = bucket.reconcile_timers(now)
    assert delete == [] and register == sorted([wake_at(first), wake_at(second)])
    assert bucket.timers == register
    # h1 ends: its timer goes; one that already fired (`fired`) is Spark's to delete
    del bucket.cases["h1"]
    bucket.timers.append(now - 10)
    delete, register = bucket.reconcile_timers(now, fired=now - 10)
    assert delete == [wake_at(first)] and register == []
    assert bucket.timers == [wake_at(second)]
    del bucket.cases["h2"]
    assert bucket.reconcile_timers(now) == ([wake_at(second)], []) and bucket.timers == []


def test_a_due_timer_is_neither_registered_again_nor_deleted() -> None:
    """While input rows are handled, Spark has not yet fired the batch's due timers: a case
    that still wants its due timer keeps it (registering it again failed in Spark), and a
    due timer no case wants fires anyway (its callback finds nothing to do)."""
    case = _case("h1", "c1")
    bucket = Bucket(cases={"h1": case})
    bucket.reconcile_timers(T0)
    due = wake_at(case)
    assert bucket.timers == [due]
    assert bucket.reconcile_timers(due + 5) == ([], []) and bucket.timers == [due]
    del bucket.cases["h1"]
    assert bucket.reconcile_timers(due + 5) == ([], []) and bucket.timers == []
