"""The streaming checks and the Great Expectations suites flag the same records for the same rules.

Streaming side: `parse_and_validate` -> `flag_unnatural_timestamps` -> `with_dedup_key` as
`silver_input` chains them, then dedup on `dedup_key` (the batch form of the stream's
`dropDuplicatesWithinWatermark`, all rows being within the watermark); it records the FIRST
broken rule per record (`reject_rule`) and drops duplicate event_ids. GE side: the suite of the
record's event type (quality/expectations.py) on the typed frame of the same parsed rows; it
reports EVERY broken rule.

Scope. Records the stream rejects before anything is typed (malformed JSON, not an object, a
value of the wrong JSON type, unknown event type, no payload object) have no typed form: on a
typed frame a mistyped value is just null. They stay in the table, and the test asserts that
their rule is exactly one GE does not cover (so the out-of-scope set cannot silently grow). For
every other record: the case table's expected rule is what the stream reports, GE reports that
rule plus only the listed knock-on rules, and GE's first rule in the stream's order is the
stream's rule. Uniqueness is compared per event_id: the stream drops all copies but one, GE
flags every copy.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import orjson
import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    BinaryType,
    DateType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from pipelines.transforms.silver import flag_unnatural_timestamps, with_dedup_key
from pipelines.transforms.validate import parse_and_validate
from quality.expectations import (
    AHEAD_RULE,
    BEHIND_RULE,
    ID_COLUMN,
    ClockSkew,
    QualityReport,
    build_suite,
    covered_rules,
    rule_order,
    typed_frame,
    validate_table,
)
from quality.rules import UNIQUE_EVENT_ID_RULE, Kind, rules_for
from schemas.contract import TOPIC_OF_EVENT_TYPE

SKEW = ClockSkew(max_ahead_s=300, max_behind_s=240)
KAFKA_MS = 1_700_000_000_000
UNIQUE = UNIQUE_EVENT_ID_RULE.id
PRE_TYPING = {Kind.JSON, Kind.OBJECT, Kind.TYPE, Kind.KNOWN_EVENT_TYPE}

PAYLOADS: dict[str, dict[str, Any]] = {
    "av.quality": {"direction": "up", "media": "audio", "bitrate_kbps": 48,
                   "packet_loss_pct": 0.5, "jitter_ms": 4, "rtt_ms": 120, "freeze_count": 0,
                   "mic_muted": False},
    "enter.step": {"step": "join_room", "duration_ms": 250},
    "wb.page_turn": {"courseware_id": "cw-1", "page": 3},
    "signal.disconnect": {"reason": "timeout", "network_type": "cellular"},
}
_DROP = object()  # a field value meaning "leave the field out"


def ev(event_type: str, version: int = 1, /, *, pay: dict[str, Any] | None = None,
       **env: Any) -> dict[str, Any]:
    """A good event, with envelope (`env`) and payload (`pay`) overrides; `_DROP` removes."""
    obj: dict[str, Any] = {
        "event_id": None, "event_type": event_type, "schema_version": version,
        "team": "client-ios", "classroom_id": "cr-1", "lesson_id": "l-1", "user_id": "stu-1",
        "role": "student", "platform": "ios", "app_version": "5.10.2",
        "event_time": KAFKA_MS - 1_000, "payload": {**PAYLOADS[event_type], **(pay or {})}}
    obj.update(env)
    obj["payload"] = {k: v for k, v in obj["payload"].items() if v is not _DROP} \
        if isinstance(obj["payload"], dict) else obj["payload"]
    return {k: v for k, v in obj.items() if v is not _DROP}


@dataclass(frozen=True)
class Case:
    """One record: the rule the stream must report (None: accepted) and GE's knock-on rules."""

    name: str
    event_type: str
    record: dict[str, Any] | str
    expected: str | None
    also: frozenset[str] = frozenset()


AV, ENTER, WB, SIG = "av.quality", "enter.step", "wb.page_turn", "signal.disconnect"
DUP_ID = "9f0e7a11-3f1c-4c1e-9f51-6a1f2f0e7a11"
CASES: tuple[Case, ...] = (
    # ---- accepted by both
    Case("av good audio up", AV, ev(AV), None),
    Case("av v2 with codec", AV, ev(AV, 2, pay={"codec": "opus"}), None),
    Case("av video down needs no camera_on", AV,
         ev(AV, pay={"direction": "down", "media": "video", "mic_muted": _DROP}), None),
    Case("av range bounds inclusive", AV,
         ev(AV, pay={"packet_loss_pct": 100, "bitrate_kbps": 0, "jitter_ms": 60_000}), None),
    Case("av optional platform absent", AV, ev(AV, platform=_DROP), None),
    Case("av v1 ignores a v2 field", AV, ev(AV, 1, pay={"codec": "mp3"}), None),
    Case("clock exactly at max ahead", AV, ev(AV, event_time=KAFKA_MS + 300_000), None),
    Case("clock exactly at max behind", AV, ev(AV, event_time=KAFKA_MS - 240_000), None),
    Case("duplicate, first copy", AV, ev(AV, event_id=DUP_ID), None),
    Case("duplicate, second copy", AV, ev(AV, event_id=DUP_ID), None),
    # ---- envelope rules
    Case("event_id missing", AV, ev(AV, event_id=_DROP), "event_id:required"),
    Case("event_id not a uuid", AV, ev(AV, event_id="not-a-uuid"), "event_id:format:uuid"),
    Case("event_type missing", AV, ev(AV, event_type=_DROP), "event_type:required"),
    Case("schema_version missing", AV, ev(AV, schema_version=_DROP), "schema_version:required"),
    Case("team empty", AV, ev(AV, team=""), "team:nonempty"),
    Case("classroom_id null", AV, ev(AV, classroom_id=None), "classroom_id:required"),
    Case("role not allowed", AV, ev(AV, role="admin"), "role:allowed_values"),
    Case("platform not allowed", AV, ev(AV, platform="fax"), "platform:allowed_values"),
    Case("event_time missing", AV, ev(AV, event_time=_DROP), "event_time:required"),
    Case("event_time negative", AV, ev(AV, event_time=-5), "event_time:range",
         frozenset({BEHIND_RULE})),
    Case("unknown schema version", AV, ev(AV, 3), "schema_version:supported_version"),
    # ---- payload rules
    Case("direction not allowed", AV, ev(AV, pay={"direction": "sideways"}),
         "payload.direction:allowed_values"),
    Case("media missing", AV, ev(AV, pay={"media": _DROP}), "payload.media:required"),
    Case("packet loss over 100", AV, ev(AV, pay={"packet_loss_pct": 100.5}),
         "payload.packet_loss_pct:range"),
    Case("bitrate negative", AV, ev(AV, pay={"bitrate_kbps": -1}), "payload.bitrate_kbps:range"),
    Case("two payload ranges broken", AV, ev(AV, pay={"packet_loss_pct": 150, "rtt_ms": -1}),
         "payload.packet_loss_pct:range", frozenset({"payload.rtt_ms:range"})),
    Case("mic_muted missing on audio up", AV, ev(AV, pay={"mic_muted": _DROP}),
         "payload.mic_muted:required_when"),
    Case("camera_on missing on video up", AV,
         ev(AV, pay={"media": "video", "mic_muted": _DROP}), "payload.camera_on:required_when"),
    Case("v2 codec not allowed", AV, ev(AV, 2, pay={"codec": "mp3"}),
         "payload.codec:allowed_values"),
    Case("enter good", ENTER, ev(ENTER), None),
    Case("enter_fail with its error code", ENTER,
         ev(ENTER, pay={"step": "enter_fail", "error_code": "E42"}), None),
    Case("enter_fail without error code", ENTER, ev(ENTER, pay={"step": "enter_fail"}),
         "payload.error_code:required_when"),
    Case("enter error code empty", ENTER, ev(ENTER, pay={"error_code": ""}),
         "payload.error_code:nonempty"),
    Case("enter step not allowed", ENTER, ev(ENTER, pay={"step": "teleport"}),
         "payload.step:allowed_values"),
    Case("enter duration over an hour", ENTER, ev(ENTER, pay={"duration_ms": 3_600_001}),
         "payload.duration_ms:range"),
    Case("page turn good", WB, ev(WB), None),
    Case("page zero", WB, ev(WB, pay={"page": 0}), "payload.page:range"),
    Case("page missing", WB, ev(WB, pay={"page": _DROP}), "payload.page:required"),
    Case("courseware id empty", WB, ev(WB, pay={"courseware_id": ""}),
         "payload.courseware_id:nonempty"),
    Case("disconnect good", SIG, ev(SIG), None),
    Case("disconnect reason not allowed", SIG, ev(SIG, pay={"reason": "bored"}),
         "payload.reason:allowed_values"),
    Case("optional rtt out of range", SIG, ev(SIG, pay={"rtt_ms": -3}), "payload.rtt_ms:range"),
    # ---- clock skew (silver's rule, after the contract)
    Case("clock two hours ahead", AV, ev(AV, event_time=KAFKA_MS + 7_200_000), AHEAD_RULE),
    Case("clock 1 ms past max ahead", AV, ev(AV, event_time=KAFKA_MS + 300_001), AHEAD_RULE),
    Case("clock three days behind", WB, ev(WB, event_time=KAFKA_MS - 3 * 86_400_000),
         BEHIND_RULE),
    # ---- out of GE's domain: rejected before typing
    Case("malformed json", AV, '{"event_id": "x", ', "json"),
    Case("not an object", AV, "[1, 2]", "type:object"),
    Case("number sent as string", AV, ev(AV, pay={"rtt_ms": "120"}), "payload.rtt_ms:type:int"),
    Case("event_time as string", AV, ev(AV, event_time=str(KAFKA_MS)), "event_time:type:long"),
    Case("optional field mistyped", AV, ev(AV, platform=5), "platform:type:string"),
    Case("payload not an object", AV, ev(AV, payload=[1]), "payload:type:object"),
    Case("payload missing", AV, ev(AV, payload=_DROP), "payload:required"),
    Case("unknown event type", AV, ev(AV, event_type="chat.message"),
         "event_type:known_event_type"),
)

BRONZE = StructType([
    StructField("topic", StringType()), StructField("partition", IntegerType()),
    StructField("offset", LongType()), StructField("kafka_timestamp", TimestampType()),
    StructField("key", StringType()), StructField("value", StringType()),
    StructField("value_raw", BinaryType()), StructField("ingest_date", DateType())])


def _value(i: int, case: Case) -> str:
    if isinstance(case.record, str):
        return case.record
    record = dict(case.record)
    if "event_id" in record and record["event_id"] is None:
        record["event_id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"case-{i}"))
    return orjson.dumps(record).decode()


def _record_id(i: int, case: Case) -> str:
    return f"{TOPIC_OF_EVENT_TYPE[case.event_type]}:0:{i}"


@pytest.fixture(scope="module")
def parsed(spark: SparkSession) -> DataFrame:
    """The cases as bronze rows, through the stream's checks (before dedup), cached."""
    kafka_ts = datetime.fromtimestamp(KAFKA_MS / 1000, UTC)
    rows = [(TOPIC_OF_EVENT_TYPE[c.event_type], 0, i, kafka_ts, "cr-1", _value(i, c), None,
             date(2023, 11, 14)) for i, c in enumerate(CASES)]
    bronze = spark.createDataFrame(rows, BRONZE)
    out = (bronze.transform(parse_and_validate)
           .transform(flag_unnatural_timestamps(SKEW.max_ahead_s, SKEW.max_behind_s))
           .transform(with_dedup_key)
           .withColumn(ID_COLUMN, F.concat_ws(":", "topic", "partition", "offset")))
    return out.localCheckpoint(eager=True)  # cut the plan: every later query stays small


@pytest.fixture(scope="module")
def streaming(parsed: DataFrame) -> tuple[dict[str, str | None], set[str]]:
    """(record id -> the stream's rule, event_ids whose copies the stream's dedup dropped)."""
    rules = {r[ID_COLUMN]: r.reject_rule for r in parsed.select(ID_COLUMN, "reject_rule").collect()}
    # dropDuplicatesWithinWatermark is stream-only; on one batch whose rows all lie within the
    # watermark delay it is dropDuplicates on the same key.
    kept = parsed.dropDuplicates(["dedup_key"])
    dropped = parsed.select(ID_COLUMN, "event_id").subtract(kept.select(ID_COLUMN, "event_id"))
    return rules, {r.event_id for r in dropped.collect()}


@pytest.fixture(scope="module")
def ge_report(spark: SparkSession, parsed: DataFrame) -> QualityReport:
    """One GE run (the batch entry point) over every case, with the suite of all four types:
    each type's rules are gated to its rows, so this is each record against its own suite."""
    return validate_table(spark, parsed, tuple(PAYLOADS), SKEW)


@pytest.fixture(scope="module")
def ge_flags(ge_report: QualityReport) -> dict[str, set[str]]:
    """record id -> every rule GE flags."""
    return ge_report.flagged


def _covered_ids(event_type: str) -> set[str]:
    return {rule.id for rule in covered_rules(event_type)} | {AHEAD_RULE, BEHIND_RULE}


def test_suite_is_derived_from_the_rules() -> None:
    """One expectation per covered rule, named in its meta; nothing hand-written besides."""
    for event_type in PAYLOADS:
        suite = build_suite(event_type, SKEW)
        named = [e.meta["rule"] for e in suite.expectations]
        assert sorted(named) == sorted(_covered_ids(event_type))
        uncovered = {r.id for r in rules_for(event_type)} - set(named)
        assert all(r.kind in PRE_TYPING or r.field in ("", "payload")
                   for r in rules_for(event_type) if r.id in uncovered)
    combined = [e.meta["rule"] for e in build_suite(tuple(PAYLOADS), SKEW).expectations]
    envelope = {r.id for r in covered_rules(AV) if r.event_type is None} - {
        "schema_version:supported_version"}
    assert all(combined.count(rule_id) == 1 for rule_id in envelope)
    assert combined.count("schema_version:supported_version") == len(PAYLOADS)


def test_case_table_covers_every_rule_kind() -> None:
    kinds = {rule.kind for c in CASES for rule in rules_for(c.event_type)
             if rule.id == c.expected}
    assert kinds >= {Kind.REQUIRED, Kind.CONDITIONAL_REQUIRED, Kind.ENUM, Kind.RANGE,
                     Kind.FORMAT, Kind.NONEMPTY, Kind.SUPPORTED_VERSION, *PRE_TYPING}
    assert {AHEAD_RULE, BEHIND_RULE} <= {c.expected for c in CASES}


def test_streaming_and_ge_flag_the_same_records_for_the_same_rules(
        streaming: tuple[dict[str, str | None], set[str]],
        ge_flags: dict[str, set[str]]) -> None:
    stream_rules, _ = streaming
    problems: list[str] = []
    for i, case in enumerate(CASES):
        rid = _record_id(i, case)
        stream, ge = stream_rules[rid], ge_flags.get(rid, set()) - {UNIQUE}
        if stream != case.expected:
            problems.append(f"{case.name}: stream says {stream}, table expects {case.expected}")
            continue
        if stream is not None and stream not in _covered_ids(case.event_type):
            kind = {r.id: r.kind for r in rules_for(case.event_type)}.get(stream)
            if not (kind in PRE_TYPING or stream == "payload:required"):
                problems.append(f"{case.name}: {stream} is neither covered by GE nor pre-typing")
            continue  # out of GE's domain (see module docstring)
        want = ({stream} | case.also) if stream is not None else set()
        if ge != want:
            problems.append(f"{case.name}: GE flags {sorted(ge)}, expected {sorted(want)}")
        order = rule_order(case.event_type)
        if ge and min(ge, key=order.__getitem__) != stream:
            problems.append(f"{case.name}: GE's first rule {min(ge, key=order.__getitem__)}"
                            f" is not the stream's {stream}")
    assert not problems, "\n".join(problems)


def test_duplicates_agree(streaming: tuple[dict[str, str | None], set[str]],
                          ge_flags: dict[str, set[str]]) -> None:
    """The stream keeps one copy of an event_id; GE flags every copy of it."""
    _, dropped_ids = streaming
    ge_ids = {orjson.loads(_value(i, c))["event_id"] for i, c in enumerate(CASES)
              if UNIQUE in ge_flags.get(_record_id(i, c), set())}
    assert dropped_ids == {DUP_ID}
    assert ge_ids == dropped_ids
    assert sum(UNIQUE in ge_flags.get(_record_id(i, c), set())
               for i, c in enumerate(CASES)) == 2


def test_typed_frame_reads_the_silver_shape(parsed: DataFrame) -> None:
    """A silver table (bare payload columns, timestamp event_time) gives GE the same frame as
    the parsed records do, so `lakehouse quality check` sees what this test compared."""
    ids = [_record_id(i, c) for i, c in enumerate(CASES)
           if c.event_type == WB and c.expected in (None, "payload.page:range", BEHIND_RULE)]
    rows = parsed.where(F.col(ID_COLUMN).isin(ids))
    silver = rows.select(
        "event_id", "event_type", "schema_version", "team", "classroom_id", "lesson_id",
        "user_id", "role", "platform", "app_version", "event_time", "payload.courseware_id",
        "payload.page", "topic", "partition", "offset", "kafka_timestamp")
    assert_df_equality(typed_frame(silver, WB), typed_frame(rows, WB), ignore_row_order=True)
    assert silver.count() == 3


def test_report_counts(ge_report: QualityReport) -> None:
    assert not ge_report.success
    assert ge_report.failed["payload.packet_loss_pct:range"] == 2
    assert ge_report.failed[UNIQUE] == 2
    assert ge_report.rows == len(CASES) - 1  # the unknown event type is no suite's row
