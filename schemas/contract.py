"""The cross-team event contract (v1 envelope + per-type payloads), defined once, as data.

Everything else derives from these frozen definitions: the pure-Python validator used by silver
and the Help fast path, the Spark schemas for `from_json`, and (later) the Great Expectations
suites. Keeping it data instead of code means a new field or version is one line here.

Compatibility policy: readers are tolerant. Unknown extra fields (envelope or payload) are
ignored, so a producer may add an optional field before every consumer knows it; a new schema
version is only needed to make such a field part of the contract (see `av.quality` v2).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Literal

import orjson

from pipelines.config import HELP_TAGS, NO_ISSUE_TAG

if TYPE_CHECKING:  # pyspark is heavy; only the Spark helpers import it, lazily
    from pyspark.sql.types import DataType, StructType

FieldType = Literal["string", "int", "long", "double", "boolean", "object"]

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


class Reason(StrEnum):
    """Reject reason codes written to `silver.rejects` (the contract's part of them)."""

    MALFORMED_JSON = "malformed_json"
    MISSING_FIELD = "missing_field"
    BAD_TYPE = "bad_type"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    UNKNOWN_SCHEMA_VERSION = "unknown_schema_version"
    RULE_FAILED = "rule_failed"


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken contract rule; `field` is a dotted path (`payload.rtt_ms`), `rule` its id."""

    reason: Reason
    field: str
    rule: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Condition:
    """`field` (a sibling in the same object) holds one of `values`."""

    field: str
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field: its JSON type, whether it must be present, and its value rules."""

    name: str
    type: FieldType
    required: bool = False
    allowed: tuple[str, ...] | None = None
    min: float | None = None
    max: float | None = None
    format: Literal["uuid"] | None = None
    nonempty: bool = False
    # Present and non-null whenever all these sibling conditions hold (e.g. mic_muted on audio up).
    required_when: tuple[Condition, ...] = ()
    doc: str = ""


@dataclass(frozen=True, slots=True)
class PayloadVersion:
    version: int
    fields: tuple[FieldSpec, ...]

    def field_spec(self, name: str) -> FieldSpec:
        for spec in self.fields:
            if spec.name == name:
                return spec
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class EventType:
    """An event type, the topic it travels on, and its payload per supported schema version."""

    name: str
    topic: str
    versions: tuple[PayloadVersion, ...]
    doc: str = ""
    _by_version: Mapping[int, PayloadVersion] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_version", {v.version: v for v in self.versions})

    @property
    def supported_versions(self) -> frozenset[int]:
        return frozenset(self._by_version)

    @property
    def latest(self) -> PayloadVersion:
        return self._by_version[max(self._by_version)]

    def payload(self, version: int | None = None) -> PayloadVersion:
        """The payload definition of `version` (default: the latest)."""
        return self.latest if version is None else self._by_version[version]


def _f(name: str, type_: FieldType, required: bool = False, **kw: object) -> FieldSpec:
    return FieldSpec(name, type_, required, **kw)  # type: ignore[arg-type]


def _when(**conds: str | tuple[str, ...]) -> tuple[Condition, ...]:
    return tuple(Condition(k, (v,) if isinstance(v, str) else v) for k, v in conds.items())


# ------------------------------------------------------------------------------------ envelope
ROLES = ("teacher", "student", "system")
PLATFORMS = ("ios", "android", "windows", "mac", "web", "server")

ENVELOPE_FIELDS: tuple[FieldSpec, ...] = (
    _f("event_id", "string", True, format="uuid", doc="unique per event; the dedup key"),
    _f("event_type", "string", True, nonempty=True),
    _f("schema_version", "int", True),
    _f("team", "string", True, nonempty=True, doc="producing team, the owner of the event"),
    _f("classroom_id", "string", True, nonempty=True, doc="also the Kafka record key"),
    _f("lesson_id", "string", True, nonempty=True),
    _f("user_id", "string", True, nonempty=True),
    _f("role", "string", True, allowed=ROLES),
    _f("platform", "string", allowed=PLATFORMS),
    _f("app_version", "string"),
    _f("event_time", "long", True, min=0, doc="client clock, epoch milliseconds"),
    _f("payload", "object", True),
)
REQUIRED_ENVELOPE_FIELDS = tuple(f.name for f in ENVELOPE_FIELDS if f.required)

# ------------------------------------------------------------------------------------ payloads
DIRECTIONS = ("up", "down")
MEDIA = ("audio", "video")
NETWORK_TYPES = ("wifi", "cellular", "ethernet", "unknown")
DISCONNECT_REASONS = ("timeout", "network_lost", "network_change", "app_background",
                      "server_close", "client_exit")
ENTER_STEPS = ("launch", "auth", "fetch_lesson", "device_check", "join_room",
               "enter_success", "enter_fail")
HELP_CATEGORIES = ("cannot_hear", "cannot_see", "whiteboard", "cannot_enter", "other")
CODECS = ("opus", "aac", "h264", "vp8", "vp9", "av1")

_AV_V1 = (
    _f("direction", "string", True, allowed=DIRECTIONS),
    _f("media", "string", True, allowed=MEDIA),
    _f("bitrate_kbps", "int", True, min=0, max=100_000),
    _f("packet_loss_pct", "double", True, min=0, max=100),
    _f("jitter_ms", "double", True, min=0, max=60_000),
    _f("rtt_ms", "int", True, min=0, max=60_000),
    _f("freeze_count", "int", True, min=0, max=10_000),
    _f("mic_muted", "boolean", required_when=_when(direction="up", media="audio")),
    _f("camera_on", "boolean", required_when=_when(direction="up", media="video")),
)
_AV_V2 = (*_AV_V1, _f("codec", "string", allowed=CODECS, doc="v2: negotiated codec"))

_SIGNAL_HEARTBEAT = (
    _f("network_type", "string", True, allowed=NETWORK_TYPES),
    _f("rtt_ms", "int", True, min=0, max=60_000),
)
_SIGNAL_DISCONNECT = (
    _f("reason", "string", True, allowed=DISCONNECT_REASONS),
    _f("network_type", "string", allowed=NETWORK_TYPES),
    _f("rtt_ms", "int", min=0, max=60_000),
)
_SIGNAL_RECONNECT = (
    _f("network_type", "string", True, allowed=NETWORK_TYPES),
    _f("rtt_ms", "int", min=0, max=60_000),
    _f("reason", "string", allowed=DISCONNECT_REASONS, doc="why the link dropped before"),
)
_WB_PAGE_TURN = (
    _f("courseware_id", "string", True, nonempty=True),
    _f("page", "int", True, min=1, max=10_000),
)
_WB_LOAD_FAIL = (
    _f("courseware_id", "string", True, nonempty=True),
    _f("page", "int", min=1, max=10_000),
    _f("error_code", "string", True, nonempty=True),
)
_WB_SYNC_LAG = (
    _f("courseware_id", "string", True, nonempty=True),
    _f("page", "int", min=1, max=10_000),
    _f("lag_ms", "long", True, min=0, max=3_600_000),
)
_ENTER_STEP = (
    _f("step", "string", True, allowed=ENTER_STEPS),
    _f("duration_ms", "long", True, min=0, max=3_600_000),
    _f("error_code", "string", nonempty=True, required_when=_when(step="enter_fail")),
)
_HELP_REQUEST = (
    _f("help_id", "string", True, nonempty=True),
    _f("category", "string", True, allowed=HELP_CATEGORIES),
)
# A client's answer to `request_client_diagnostics`: what it finds wrong (a Help tag), if anything.
HELP_FINDINGS = (*HELP_TAGS, NO_ISSUE_TAG)
_HELP_DIAGNOSTICS = (
    _f("help_id", "string", True, nonempty=True),
    _f("finding", "string", True, allowed=HELP_FINDINGS),
)


def _v1(fields: tuple[FieldSpec, ...]) -> tuple[PayloadVersion, ...]:
    return (PayloadVersion(1, fields),)


_TYPES = (
    EventType("av.quality", "classroom.av",
              (PayloadVersion(1, _AV_V1), PayloadVersion(2, _AV_V2)),
              "one media sample per direction x media, every 2 s per participant"),
    EventType("signal.heartbeat", "classroom.signal", _v1(_SIGNAL_HEARTBEAT)),
    EventType("signal.disconnect", "classroom.signal", _v1(_SIGNAL_DISCONNECT)),
    EventType("signal.reconnect", "classroom.signal", _v1(_SIGNAL_RECONNECT)),
    EventType("wb.page_turn", "classroom.whiteboard", _v1(_WB_PAGE_TURN)),
    EventType("wb.load_fail", "classroom.whiteboard", _v1(_WB_LOAD_FAIL)),
    EventType("wb.sync_lag", "classroom.whiteboard", _v1(_WB_SYNC_LAG)),
    EventType("enter.step", "classroom.enter", _v1(_ENTER_STEP)),
    EventType("help.request", "classroom.help", _v1(_HELP_REQUEST)),
    EventType("help.diagnostics", "classroom.help", _v1(_HELP_DIAGNOSTICS),
              "a client's diagnostics reply to the resolver (closed loop); not a Help request"),
)

EVENT_TYPES: Mapping[str, EventType] = {t.name: t for t in _TYPES}
TOPIC_OF_EVENT_TYPE: Mapping[str, str] = {t.name: t.topic for t in _TYPES}
TOPICS: tuple[str, ...] = tuple(dict.fromkeys(t.topic for t in _TYPES))
EVENT_TYPES_OF_TOPIC: Mapping[str, tuple[str, ...]] = {
    topic: tuple(t.name for t in _TYPES if t.topic == topic) for topic in TOPICS
}


def payload_fields(event_types: Iterable[str]) -> tuple[FieldSpec, ...]:
    """Every payload field of every version of `event_types`, once (its first definition), in
    order; the same name must mean the same type."""
    seen: dict[str, FieldSpec] = {}
    for event_type in event_types:
        for version in EVENT_TYPES[event_type].versions:
            for spec in version.fields:
                known = seen.setdefault(spec.name, spec)
                if known.type != spec.type:
                    raise TypeError(f"payload field {spec.name!r} has two types: "
                                    f"{known.type} and {spec.type}")
    return tuple(seen.values())


UNION_PAYLOAD_FIELDS: tuple[FieldSpec, ...] = payload_fields(EVENT_TYPES)

# ------------------------------------------------------------------------------------ validator
_HEX = "[0-9a-fA-F]"
_UUID_RE = re.compile(f"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}")


def _type_ok(value: object, type_: FieldType) -> bool:
    """JSON-level type check; bool is not a number, ints are valid doubles."""
    if type_ == "string":
        return isinstance(value, str)
    if type_ in ("int", "long"):
        if not isinstance(value, int) or isinstance(value, bool):
            return False
        lo, hi = INT32 if type_ == "int" else INT64
        return lo <= value <= hi
    if type_ == "double":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if type_ == "boolean":
        return isinstance(value, bool)
    return isinstance(value, dict)


def _conditions_hold(obj: Mapping[str, object], conds: tuple[Condition, ...]) -> bool:
    return all(obj.get(c.field) in c.values for c in conds)


def _check_fields(obj: Mapping[str, object], specs: tuple[FieldSpec, ...], prefix: str,
                  out: list[Violation]) -> None:
    """Append the violations of `obj` against `specs`; null counts as absent."""
    for spec in specs:
        path = prefix + spec.name
        value = obj.get(spec.name)
        if value is None:
            if spec.required:
                out.append(Violation(Reason.MISSING_FIELD, path, "required"))
            elif spec.required_when and _conditions_hold(obj, spec.required_when):
                conds = " and ".join(f"{c.field} in {list(c.values)}" for c in spec.required_when)
                out.append(Violation(Reason.MISSING_FIELD, path, "required_when",
                                     f"required when {conds}"))
            continue
        if not _type_ok(value, spec.type):
            out.append(Violation(Reason.BAD_TYPE, path, f"type:{spec.type}",
                                 f"got {type(value).__name__}"))
            continue
        if spec.allowed is not None and value not in spec.allowed:
            out.append(Violation(Reason.RULE_FAILED, path, "allowed_values",
                                 f"{value!r} not in {list(spec.allowed)}"))
        if spec.min is not None and value < spec.min:  # type: ignore[operator]
            out.append(Violation(Reason.RULE_FAILED, path, "range",
                                 f"{value!r} < {spec.min:g}"))
        if spec.max is not None and value > spec.max:  # type: ignore[operator]
            out.append(Violation(Reason.RULE_FAILED, path, "range",
                                 f"{value!r} > {spec.max:g}"))
        if spec.format == "uuid" and not _UUID_RE.fullmatch(value):  # type: ignore[arg-type]
            out.append(Violation(Reason.RULE_FAILED, path, "format:uuid"))
        if spec.nonempty and not value:
            out.append(Violation(Reason.RULE_FAILED, path, "nonempty"))


def validate_event(obj: object) -> list[Violation]:
    """All contract violations of one parsed event (empty list = valid).

    Order is from most to least fundamental, so `violations[0]` is the reason to record.
    Payload checks run only once the event type and schema version are known.
    """
    if not isinstance(obj, dict):
        return [Violation(Reason.BAD_TYPE, "", "type:object", f"got {type(obj).__name__}")]
    out: list[Violation] = []
    _check_fields(obj, ENVELOPE_FIELDS, "", out)
    event_type, version = obj.get("event_type"), obj.get("schema_version")
    if not isinstance(event_type, str) or not event_type:
        return out  # already reported as missing or bad type
    etype = EVENT_TYPES.get(event_type)
    if etype is None:
        out.append(Violation(Reason.UNKNOWN_EVENT_TYPE, "event_type", "known_event_type",
                             f"{event_type!r}"))
        return out
    if not _type_ok(version, "int"):
        return out
    if version not in etype.supported_versions:
        out.append(Violation(Reason.UNKNOWN_SCHEMA_VERSION, "schema_version",
                             "supported_version",
                             f"{event_type} v{version}; supported "
                             f"{sorted(etype.supported_versions)}"))
        return out
    payload = obj.get("payload")
    if isinstance(payload, dict):
        _check_fields(payload, etype.payload(version).fields, "payload.", out)  # type: ignore[arg-type]
    return out


def parse_raw(value: bytes | bytearray | memoryview | str | None) -> tuple[object, list[Violation]]:
    """Parse a Kafka record value once: (object or None, violations)."""
    if value is None:
        return None, [Violation(Reason.MALFORMED_JSON, "", "json", "null record value")]
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return None, [Violation(Reason.MALFORMED_JSON, "", "json", str(exc)[:200])]
    return obj, validate_event(obj)


def validate_raw(value: bytes | bytearray | memoryview | str | None) -> list[Violation]:
    """`validate_event` for raw bytes, adding `malformed_json` (bad JSON or bad UTF-8)."""
    return parse_raw(value)[1]


# ------------------------------------------------------------------------------------ Spark
def spark_type(type_: FieldType) -> DataType:
    """The Spark SQL type of a contract field type (not for `object`)."""
    from pyspark.sql import types as T

    mapping = {"string": T.StringType(), "int": T.IntegerType(), "long": T.LongType(),
               "double": T.DoubleType(), "boolean": T.BooleanType()}
    try:
        return mapping[type_]
    except KeyError:
        raise TypeError(f"no flat Spark type for contract type {type_!r}") from None


def _struct(specs: tuple[FieldSpec, ...]) -> StructType:
    from pyspark.sql.types import StructField, StructType

    # Nullable throughout: from_json yields nulls for absent or mistyped values, and the
    # validator (not Spark) decides what is required.
    return StructType([StructField(s.name, spark_type(s.type), True) for s in specs])


def spark_payload_schema(event_type: str, version: int | None = None) -> StructType:
    """The payload struct of one event type (default: its latest version)."""
    return _struct(EVENT_TYPES[event_type].payload(version).fields)


def union_payload_spark_schema() -> StructType:
    """One struct holding every payload field of every type: one `from_json` for all topics."""
    return _struct(UNION_PAYLOAD_FIELDS)


def envelope_spark_schema(payload: StructType | None = None) -> StructType:
    """The envelope; `payload` defaults to the union payload struct."""
    from pyspark.sql.types import StructField, StructType

    payload_struct = payload if payload is not None else union_payload_spark_schema()
    return StructType([
        StructField(s.name, payload_struct if s.type == "object" else spark_type(s.type), True)
        for s in ENVELOPE_FIELDS
    ])
