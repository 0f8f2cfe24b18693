"""The event contract: good events of every type pass, each kind of breach gets its reason."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from schemas import (
    EVENT_TYPES,
    REQUIRED_ENVELOPE_FIELDS,
    TOPIC_OF_EVENT_TYPE,
    Reason,
    envelope_spark_schema,
    spark_payload_schema,
    union_payload_spark_schema,
    validate_event,
    validate_raw,
)

PAYLOADS: dict[str, dict[str, Any]] = {
    "av.quality": {"direction": "up", "media": "audio", "bitrate_kbps": 48,
                   "packet_loss_pct": 0.5, "jitter_ms": 4, "rtt_ms": 120, "freeze_count": 0,
                   "mic_muted": False},
    "signal.heartbeat": {"network_type": "wifi", "rtt_ms": 80},
    "signal.disconnect": {"reason": "timeout", "network_type": "cellular"},
    "signal.reconnect": {"network_type": "wifi", "rtt_ms": 900, "reason": "timeout"},
    "wb.page_turn": {"courseware_id": "cw-1", "page": 3},
    "wb.load_fail": {"courseware_id": "cw-1", "page": 3, "error_code": "WB_HTTP_404"},
    "wb.sync_lag": {"courseware_id": "cw-1", "lag_ms": 120},
    "enter.step": {"step": "join_room", "duration_ms": 250},
    "help.request": {"help_id": "h-1", "category": "cannot_hear"},
    "help.diagnostics": {"help_id": "h-1", "finding": "STUDENT_MIC_MUTED"},
}


def event(event_type: str, version: int = 1, **payload: Any) -> dict[str, Any]:
    return {
        "event_id": "0b9d6a3e-3f1c-4c1e-9f51-6a1f2f0e7a11", "event_type": event_type,
        "schema_version": version, "team": "client-ios", "classroom_id": "cr-1",
        "lesson_id": "l-1", "user_id": "stu-1", "role": "student", "platform": "ios",
        "app_version": "5.10.2", "event_time": 1_700_000_000_000,
        "payload": {**PAYLOADS[event_type], **payload},
    }


def reasons(obj: object) -> list[str]:
    return [v.reason.value for v in validate_event(obj)]


def test_topics_follow_the_design() -> None:
    assert TOPIC_OF_EVENT_TYPE == {
        "av.quality": "classroom.av", "signal.heartbeat": "classroom.signal",
        "signal.disconnect": "classroom.signal", "signal.reconnect": "classroom.signal",
        "wb.page_turn": "classroom.whiteboard", "wb.load_fail": "classroom.whiteboard",
        "wb.sync_lag": "classroom.whiteboard", "enter.step": "classroom.enter",
        "help.request": "classroom.help", "help.diagnostics": "classroom.help"}
    assert set(PAYLOADS) == set(EVENT_TYPES)


@pytest.mark.parametrize("event_type", sorted(PAYLOADS))
def test_good_event_of_every_type_validates(event_type: str) -> None:
    good = event(event_type)
    assert validate_event(good) == []
    assert validate_raw(orjson.dumps(good)) == []


def test_optional_envelope_fields_may_be_absent_or_null() -> None:
    good = event("signal.heartbeat")
    del good["platform"]
    good["app_version"] = None
    good["extra_field_from_the_future"] = {"x": 1}  # tolerant reader
    assert validate_event(good) == []


def test_av_quality_v2_adds_an_optional_codec() -> None:
    assert validate_event(event("av.quality", 2, codec="opus")) == []
    assert validate_event(event("av.quality", 2)) == []  # optional in v2 too
    assert validate_event(event("av.quality", 1)) == []  # v1 producers keep working
    v2_bad = validate_event(event("av.quality", 2, codec="mp3"))
    assert [(v.reason, v.field, v.rule) for v in v2_bad] == [
        (Reason.RULE_FAILED, "payload.codec", "allowed_values")]
    assert EVENT_TYPES["av.quality"].supported_versions == {1, 2}
    assert "codec" not in spark_payload_schema("av.quality", 1).fieldNames()
    assert "codec" in spark_payload_schema("av.quality").fieldNames()


@pytest.mark.parametrize(("event_type", "version"), [("av.quality", 99), ("av.quality", 0),
                                                     ("signal.heartbeat", 2)])
def test_unknown_schema_version_is_rejected(event_type: str, version: int) -> None:
    violations = validate_event(event(event_type, version))
    assert [(v.reason, v.field) for v in violations] == [
        (Reason.UNKNOWN_SCHEMA_VERSION, "schema_version")]


def test_unknown_event_type() -> None:
    bad = event("wb.page_turn")
    bad["event_type"] = "chat.message"
    assert reasons(bad) == ["unknown_event_type"]


@pytest.mark.parametrize("name", REQUIRED_ENVELOPE_FIELDS)
def test_missing_required_envelope_field(name: str) -> None:
    bad = event("av.quality")
    del bad[name]
    violations = validate_event(bad)
    assert violations[0].reason is Reason.MISSING_FIELD
    assert violations[0].field == name and violations[0].rule == "required"


def test_missing_payload_fields_including_conditional_ones() -> None:
    bad = event("help.request")
    del bad["payload"]["help_id"]
    assert [(v.reason.value, v.field) for v in validate_event(bad)] == [
        ("missing_field", "payload.help_id")]
    muted_unknown = event("av.quality")
    del muted_unknown["payload"]["mic_muted"]  # required on audio up ...
    assert [(v.field, v.rule) for v in validate_event(muted_unknown)] == [
        ("payload.mic_muted", "required_when")]
    down = event("av.quality", direction="down")
    del down["payload"]["mic_muted"]  # ... but not on audio down
    assert validate_event(down) == []
    assert reasons(event("enter.step", step="enter_fail")) == ["missing_field"]
    assert validate_event(event("enter.step", step="enter_fail", error_code="E_X")) == []


@pytest.mark.parametrize(("path", "value"), [
    ("event_time", "1700000000000"), ("schema_version", "1"), ("user_id", 42),
    ("payload", [1, 2]), ("payload.bitrate_kbps", "512"), ("payload.rtt_ms", 1.5),
    ("payload.freeze_count", True), ("payload.mic_muted", "false"),
    ("payload.packet_loss_pct", "0.5"), ("payload.bitrate_kbps", 2**31),
])
def test_wrong_types(path: str, value: object) -> None:
    bad = event("av.quality")
    target = bad
    *parents, leaf = path.split(".")
    for part in parents:
        target = target[part]
    target[leaf] = value
    violations = validate_event(bad)
    assert violations and violations[0].reason is Reason.BAD_TYPE
    assert violations[0].field == path


def test_doubles_accept_integers_but_not_booleans() -> None:
    assert validate_event(event("av.quality", packet_loss_pct=3)) == []
    assert reasons(event("av.quality", packet_loss_pct=False)) == ["bad_type"]


@pytest.mark.parametrize(("path", "value", "rule"), [
    ("role", "admin", "allowed_values"), ("platform", "symbian", "allowed_values"),
    ("event_id", "not-a-uuid", "format:uuid"), ("classroom_id", "", "nonempty"),
    ("event_time", -5, "range"), ("payload.packet_loss_pct", 150.0, "range"),
    ("payload.packet_loss_pct", -0.1, "range"), ("payload.rtt_ms", -1, "range"),
    ("payload.direction", "sideways", "allowed_values"),
])
def test_rule_failures_name_the_rule(path: str, value: object, rule: str) -> None:
    bad = event("av.quality")
    target = bad
    *parents, leaf = path.split(".")
    for part in parents:
        target = target[part]
    target[leaf] = value
    violations = validate_event(bad)
    assert [(v.reason, v.field, v.rule) for v in violations] == [
        (Reason.RULE_FAILED, path, rule)]


def test_enter_steps_and_help_categories_are_closed_sets() -> None:
    assert reasons(event("enter.step", step="teleport")) == ["rule_failed"]
    assert reasons(event("help.request", category="bored")) == ["rule_failed"]


def test_diagnostics_findings_are_the_help_tags() -> None:
    from pipelines.config import HELP_TAGS

    for finding in (*HELP_TAGS, "NO_ISSUE_DETECTED"):
        assert reasons(event("help.diagnostics", finding=finding)) == []
    assert reasons(event("help.diagnostics", finding="FINE")) == ["rule_failed"]
    bad = event("help.diagnostics")
    del bad["payload"]["finding"]
    assert reasons(bad) == ["missing_field"]


@pytest.mark.parametrize("raw", [
    b'{"event_id": "x", "event_type": "av.quality"',  # truncated
    b'{"role":"stu\xffdent"}',  # not UTF-8
    b'{"role":"caf\xe9"}',  # latin-1
    b"<html>502 Bad Gateway</html>", b"", None,
])
def test_malformed_json(raw: bytes | None) -> None:
    violations = validate_raw(raw)
    assert [v.reason for v in violations] == [Reason.MALFORMED_JSON]


def test_non_object_json_is_a_bad_type() -> None:
    assert [v.reason for v in validate_raw(b"[1, 2]")] == [Reason.BAD_TYPE]
    assert [v.reason for v in validate_raw(b"42")] == [Reason.BAD_TYPE]


def test_violations_are_ordered_most_fundamental_first() -> None:
    bad = copy.deepcopy(event("av.quality"))
    bad["role"] = "admin"
    del bad["user_id"]
    assert reasons(bad)[0] == "missing_field"


def test_spark_schemas_derive_from_the_contract() -> None:
    from pyspark.sql import types as T

    union = union_payload_spark_schema()
    names = union.fieldNames()
    assert len(names) == len(set(names))
    for etype in EVENT_TYPES.values():
        for version in etype.versions:
            assert {f.name for f in version.fields} <= set(names)
    assert union["packet_loss_pct"].dataType == T.DoubleType()
    assert union["lag_ms"].dataType == T.LongType()
    assert union["mic_muted"].dataType == T.BooleanType()
    envelope = envelope_spark_schema()
    assert envelope["event_time"].dataType == T.LongType()
    assert envelope["schema_version"].dataType == T.IntegerType()
    assert envelope["payload"].dataType == union
    narrow = envelope_spark_schema(spark_payload_schema("help.request"))
    assert narrow["payload"].dataType.fieldNames() == ["help_id", "category"]
