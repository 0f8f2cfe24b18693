"""Value types shared by the generator, the bad-input injector and the producer loop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import NamedTuple

# Events are generated (and actions applied) this many simulated ms at a time: a reaction is
# exact when the client's reaction delay is at least this long.
WINDOW_MS = 500
NEVER = 1 << 62  # "no such time": interval checks `a <= t < b` fail for it
AV_COMBOS = (("up", "audio"), ("up", "video"), ("down", "audio"), ("down", "video"))
NORMAL_STEPS = (("launch", 200, 1500), ("auth", 50, 400), ("fetch_lesson", 50, 600),
                ("device_check", 100, 800), ("join_room", 100, 900))
# One serialized event: id prefix (`{"event_id":"<uuid prefix>`), id counter, the envelope
# middle (pre-serialized), event_time, payload JSON.
EVENT_FMT = b'%b%012x%b%d,"payload":%b}'


def new_uuid(getrandbits: Callable[[int], int]) -> str:
    """A version-4 UUID string from a seeded rng (uuid4() would break determinism)."""
    h = f"{getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


class Cause(StrEnum):
    """Root causes the simulator injects before a Help request (the Help tags of DESIGN.md)."""

    TEACHER_NETWORK = "TEACHER_NETWORK"
    STUDENT_NETWORK = "STUDENT_NETWORK"
    TEACHER_MIC_MUTED = "TEACHER_MIC_MUTED"
    STUDENT_MIC_MUTED = "STUDENT_MIC_MUTED"
    VIDEO_FREEZE = "VIDEO_FREEZE"
    WHITEBOARD_LOAD_FAIL = "WHITEBOARD_LOAD_FAIL"
    TEACHER_NOT_ENTERED = "TEACHER_NOT_ENTERED"
    STUDENT_NOT_ENTERED = "STUDENT_NOT_ENTERED"
    NO_ISSUE_DETECTED = "NO_ISSUE_DETECTED"


class BadKind(StrEnum):
    """Kinds of bad input; `SimEvent.kind` is one of these or `GOOD`."""

    MALFORMED_JSON = "malformed_json"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    UNKNOWN_SCHEMA_VERSION = "unknown_schema_version"
    UNNATURAL_TIMESTAMP = "unnatural_timestamp"
    LATE = "late"
    DUPLICATE = "duplicate"
    TEST_ACCOUNT = "test_account"  # a well-formed event sent by a test account -> `filtered`


GOOD = "good"


class SimEvent(NamedTuple):
    """One record to produce.

    `sim_ms` is the simulated offset (non-decreasing, used for pacing); `event_time` is what
    the JSON says (differs from start_ms + sim_ms for late and unnatural events). `protected`
    events carry injected fault evidence or a Help request; bad input never replaces them.
    A NamedTuple so the hot path can build it with `make_event` (a C call, no Python frame).
    """

    topic: str
    key: bytes
    value: bytes
    event_time: int
    kind: str
    sim_ms: int
    protected: bool = False


@dataclass(frozen=True, slots=True)
class HelpTruth:
    """What the simulator injected before one Help request: the answer the tagger should give."""

    help_id: str
    cause: Cause
    classroom_id: str
    lesson_id: str
    event_time: int
    role: str
    category: str
    fault_start_time: int | None  # epoch ms; None for NO_ISSUE_DETECTED
    fault_end_time: int | None
    # The closed loop's fault model, drawn at planning: can an action clear this fault, and
    # which one (None when none can, including NO_ISSUE_DETECTED: there is nothing to fix).
    fixable: bool = False
    fix_action: str | None = None

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data.pop("help_id")
        data["cause"] = self.cause.value
        return data


def make_event(fields: tuple[str, bytes, bytes, int, str, int, bool]) -> SimEvent:
    """`SimEvent(*fields)` at C speed: (topic, key, value, event_time, kind, sim_ms, protected)."""
    return tuple.__new__(SimEvent, fields)
