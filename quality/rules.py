"""The data-quality rules, derived once from the event contract (`schemas/contract.py`).

A rule's id is what the contract validator reports for it, `f"{field}:{rule}"` of a
`Violation` (`payload.packet_loss_pct:range`, `event_id:required`, `json` for the record), so
a reject written by Spark, a `Violation` from `validate_event` and a failed Great Expectations
expectation all name the same rule. Each rule gives its Spark check as a column expression over
a `FieldValue` lookup, which is how the streaming validator (raw JSON probes) and the batch
checks over flattened silver frames (typed columns) share one definition.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from schemas.contract import (
    _UUID_RE,  # the contract's own pattern; exported nowhere else (see module docstring)
    ENVELOPE_FIELDS,
    EVENT_TYPES,
    FieldSpec,
    Reason,
    Violation,
    validate_raw,
)


class Kind(StrEnum):
    """What a rule checks. Record and type rules only exist before typing (raw JSON)."""

    JSON = "json"
    OBJECT = "object"
    REQUIRED = "required"
    CONDITIONAL_REQUIRED = "conditional_required"
    TYPE = "type"
    ENUM = "enum"
    RANGE = "range"
    FORMAT = "format"
    NONEMPTY = "nonempty"
    KNOWN_EVENT_TYPE = "known_event_type"
    SUPPORTED_VERSION = "supported_version"
    UNIQUE = "unique"


# The contract validator's rule names (schemas.contract._check_fields / validate_event).
_RULE_NAME = {Kind.REQUIRED: "required", Kind.CONDITIONAL_REQUIRED: "required_when",
              Kind.ENUM: "allowed_values", Kind.RANGE: "range", Kind.NONEMPTY: "nonempty",
              Kind.KNOWN_EVENT_TYPE: "known_event_type",
              Kind.SUPPORTED_VERSION: "supported_version", Kind.UNIQUE: "unique"}
_REASON = {Kind.JSON: Reason.MALFORMED_JSON, Kind.OBJECT: Reason.BAD_TYPE,
           Kind.REQUIRED: Reason.MISSING_FIELD, Kind.CONDITIONAL_REQUIRED: Reason.MISSING_FIELD,
           Kind.TYPE: Reason.BAD_TYPE, Kind.KNOWN_EVENT_TYPE: Reason.UNKNOWN_EVENT_TYPE,
           Kind.SUPPORTED_VERSION: Reason.UNKNOWN_SCHEMA_VERSION}
# Java and Python read this alike (`(?![\s\S])` is end of input in both, unlike `$`), so Spark's
# rlike, GE's regex expectation and `re.fullmatch` accept the same strings.
FORMAT_REGEX = {"uuid": rf"^(?:{_UUID_RE.pattern})(?![\s\S])"}

PRODUCER = "producer"  # owner = the producing team named in the record's `team` field
# Event types produced by one backend team whatever the client; the rest come from the clients
# (the record's `team`). Not part of the contract: taken from DESIGN.md and the simulator.
OWNER_OF_EVENT_TYPE = {"av.quality": "av-platform", "wb.page_turn": "whiteboard",
                       "wb.load_fail": "whiteboard", "wb.sync_lag": "whiteboard"}
PAYLOAD_PREFIX = "payload."
FLAT_PAYLOAD_PREFIX = "payload_"


def rule_id(field: str, rule: str) -> str:
    """The id of rule `rule` on dotted `field` ("" for the whole record)."""
    return f"{field}:{rule}" if field else rule


def violation_rule_id(violation: Violation) -> str:
    return rule_id(violation.field, violation.rule)


def first_violation(value: bytes | str | None) -> tuple[str, str] | None:
    """(reason, rule id) of the first contract violation of a raw record, None if it passes."""
    violations = validate_raw(value)
    return (violations[0].reason.value, violation_rule_id(violations[0])) if violations else None


def flat_column(field: str) -> str:
    """Column name of a dotted field in a flattened frame: `payload.rtt_ms` -> `payload_rtt_ms`."""
    return field.replace(".", "_")


@dataclass(frozen=True, slots=True)
class Rule:
    """One contract rule. `event_type` None: an envelope or record rule (every event type)."""

    id: str
    kind: Kind
    field: str
    event_type: str | None = None
    versions: tuple[int, ...] = ()  # payload rules: the schema versions it applies to
    spec: FieldSpec | None = None
    owner: str = PRODUCER

    @property
    def reason(self) -> Reason:
        return _REASON.get(self.kind, Reason.RULE_FAILED)

    @property
    def column(self) -> str:
        return flat_column(self.field)

    @property
    def is_payload(self) -> bool:
        return self.field.startswith(PAYLOAD_PREFIX)

    def violated(self, fields: FieldLookup) -> Column:
        """True where the rule is broken. `fields` maps a sibling field name to its columns."""
        spec = self.spec
        assert spec is not None, f"{self.id} is not a field rule"
        this = fields(spec.name)
        if self.kind is Kind.REQUIRED:
            return ~this.present
        if self.kind is Kind.CONDITIONAL_REQUIRED:
            holds = [fields(c.field).text.isin(list(c.values)) for c in spec.required_when]
            return _all([~this.present, *holds])
        if self.kind is Kind.TYPE:
            return this.present & ~this.type_ok
        value = this.value
        if self.kind is Kind.ENUM:
            broken = ~value.isin(list(spec.allowed or ()))
        elif self.kind is Kind.RANGE:
            bounds = []
            if spec.min is not None:
                bounds.append(value < F.lit(spec.min))
            if spec.max is not None:
                bounds.append(value > F.lit(spec.max))
            broken = _any(bounds)
        elif self.kind is Kind.FORMAT:
            broken = ~value.rlike(FORMAT_REGEX[spec.format or ""])
        elif self.kind is Kind.NONEMPTY:
            broken = F.length(value) == 0
        else:
            raise ValueError(f"{self.id}: {self.kind} has no per-record check")
        return this.type_ok & broken


@dataclass(frozen=True, slots=True)
class FieldValue:
    """A field as Spark columns: the typed value (null when absent or of the wrong type),
    whether the JSON value is there and not null, whether it has the contract type, and its
    text when the JSON value is a string (what `required_when` conditions compare)."""

    value: Column
    present: Column
    type_ok: Column
    text: Column


FieldLookup = Callable[[str], FieldValue]


def _all(cols: Sequence[Column]) -> Column:
    out = cols[0]
    for col in cols[1:]:
        out = out & col
    return out


def _any(cols: Sequence[Column]) -> Column:
    out = cols[0]
    for col in cols[1:]:
        out = out | col
    return out


# ------------------------------------------------------------------------------------ catalog
def _field_rules(spec: FieldSpec, prefix: str, event_type: str | None,
                 versions: tuple[int, ...], owner: str) -> list[Rule]:
    """A field's rules in the validator's order: presence, type, allowed, range, format,
    nonempty (the first one broken is the reject reason)."""
    path = prefix + spec.name
    kinds: list[tuple[Kind, str]] = []
    if spec.required:
        kinds.append((Kind.REQUIRED, _RULE_NAME[Kind.REQUIRED]))
    elif spec.required_when:
        kinds.append((Kind.CONDITIONAL_REQUIRED, _RULE_NAME[Kind.CONDITIONAL_REQUIRED]))
    kinds.append((Kind.TYPE, f"type:{spec.type}"))
    if spec.allowed is not None:
        kinds.append((Kind.ENUM, _RULE_NAME[Kind.ENUM]))
    if spec.min is not None or spec.max is not None:
        kinds.append((Kind.RANGE, _RULE_NAME[Kind.RANGE]))
    if spec.format is not None:
        kinds.append((Kind.FORMAT, f"format:{spec.format}"))
    if spec.nonempty:
        kinds.append((Kind.NONEMPTY, _RULE_NAME[Kind.NONEMPTY]))
    return [Rule(rule_id(path, name), kind, path, event_type, versions, spec, owner)
            for kind, name in kinds]


RECORD_RULES: tuple[Rule, ...] = (Rule("json", Kind.JSON, ""),
                                  Rule("type:object", Kind.OBJECT, ""))
ENVELOPE_RULES: tuple[Rule, ...] = tuple(
    rule for spec in ENVELOPE_FIELDS for rule in _field_rules(spec, "", None, (), PRODUCER))
KNOWN_EVENT_TYPE_RULE = Rule(rule_id("event_type", "known_event_type"), Kind.KNOWN_EVENT_TYPE,
                             "event_type")
SUPPORTED_VERSION_RULE = Rule(rule_id("schema_version", "supported_version"),
                              Kind.SUPPORTED_VERSION, "schema_version")
UNIQUE_EVENT_ID_RULE = Rule(rule_id("event_id", "unique"), Kind.UNIQUE, "event_id")


def owner_of(event_type: str) -> str:
    return OWNER_OF_EVENT_TYPE.get(event_type, PRODUCER)


def _versions_of(event_type: str, spec: FieldSpec) -> tuple[int, ...]:
    """The versions of `event_type` whose payload has exactly this field spec."""
    etype = EVENT_TYPES[event_type]
    return tuple(sorted(v.version for v in etype.versions if spec in v.fields))


def payload_rules(event_type: str, version: int) -> tuple[Rule, ...]:
    """The payload rules of one (event type, version), in that version's field order."""
    owner = owner_of(event_type)
    return tuple(rule for spec in EVENT_TYPES[event_type].payload(version).fields
                 for rule in _field_rules(spec, PAYLOAD_PREFIX, event_type,
                                          _versions_of(event_type, spec), owner))


def rules_for(event_type: str) -> tuple[Rule, ...]:
    """Every rule a record of `event_type` is held to, each once, with the versions it covers."""
    seen: dict[str, Rule] = {}
    for version in sorted(EVENT_TYPES[event_type].supported_versions):
        for rule in payload_rules(event_type, version):
            if seen.setdefault(rule.id, rule) != rule:
                raise ValueError(f"{event_type}: rule {rule.id} differs between versions; "
                                 "give the field a new name in the new version")
    return (*RECORD_RULES, *ENVELOPE_RULES, KNOWN_EVENT_TYPE_RULE, SUPPORTED_VERSION_RULE,
            UNIQUE_EVENT_ID_RULE, *seen.values())


RULES: tuple[Rule, ...] = tuple(
    {rule.id + "@" + (rule.event_type or ""): rule
     for event_type in EVENT_TYPES for rule in rules_for(event_type)}.values())


def catalog() -> list[dict[str, object]]:
    """The rules as table rows (id, event types, field, kind, reason, owner) for docs/UIs."""
    rows: dict[tuple[str, str, str], dict[str, object]] = {}
    for rule in RULES:
        row = rows.setdefault((rule.id, rule.kind, rule.owner), {
            "id": rule.id, "event_types": [], "field": rule.field, "kind": rule.kind.value,
            "reason": rule.reason.value, "owner": rule.owner})
        if rule.event_type is not None:
            row["event_types"].append(rule.event_type)  # type: ignore[union-attr]
    return list(rows.values())


# --------------------------------------------------------------------- checks on typed frames
def flat_lookup(event_type: str, prefix: str = "") -> FieldLookup:
    """Field lookup over a flattened typed frame of `event_type` (payload fields as
    `payload_<name>` columns, `prefix` "payload."): typing is done, so present == type_ok."""
    if prefix:
        specs = {s.name: s for v in EVENT_TYPES[event_type].versions for s in v.fields}
    else:
        specs = {s.name: s for s in ENVELOPE_FIELDS}

    def lookup(name: str) -> FieldValue:
        col = F.col(flat_column(prefix + name))
        text = col if specs[name].type == "string" else F.lit(None).cast("string")
        return FieldValue(col, col.isNotNull(), col.isNotNull(), text)

    return lookup


def version_gate(rule: Rule) -> list[int] | None:
    """The schema versions a payload rule is limited to, None when it holds in all of them."""
    if rule.event_type is None or not rule.versions:
        return None
    supported = sorted(EVENT_TYPES[rule.event_type].supported_versions)
    return None if list(rule.versions) == supported else list(rule.versions)


def flat_checks(event_type: str) -> list[tuple[Rule, Column]]:
    """(rule, violated) for every rule GE can also check on a flattened frame of `event_type`.

    Record, type and known-event-type rules are settled by parsing and have no typed form.
    `event_id:unique` uses a window over the frame, so it is a batch check (the stream
    deduplicates within its watermark instead).
    """
    envelope, payload = flat_lookup(event_type), flat_lookup(event_type, PAYLOAD_PREFIX)
    out: list[tuple[Rule, Column]] = []
    for rule in rules_for(event_type):
        if rule.kind in (Kind.JSON, Kind.OBJECT, Kind.TYPE, Kind.KNOWN_EVENT_TYPE):
            continue
        if rule.field == "payload":  # an object-level rule; flattened frames have no payload
            continue
        if rule.kind is Kind.UNIQUE:
            col = F.col(rule.column)
            dup = col.isNotNull() & (F.count(F.lit(1)).over(Window.partitionBy(col)) > 1)
            out.append((rule, dup))
            continue
        if rule.kind is Kind.SUPPORTED_VERSION:
            supported = sorted(EVENT_TYPES[event_type].supported_versions)
            col = F.col(rule.column)
            out.append((rule, col.isNotNull() & ~col.isin(supported)))
            continue
        broken = rule.violated(payload if rule.is_payload else envelope)
        gate = version_gate(rule)
        if gate is not None:
            broken = F.col("schema_version").isin(gate) & broken
        out.append((rule, F.coalesce(broken, F.lit(False))))
    return out


def with_failed_rules(event_type: str) -> Callable[[DataFrame], DataFrame]:
    """Adds `failed_rules` (array of rule ids) to a flattened frame of `event_type`."""
    def transform(df: DataFrame) -> DataFrame:
        checks = flat_checks(event_type)
        flags = [F.when(broken, F.lit(rule.id)) for rule, broken in checks]
        return df.withColumn("failed_rules", F.filter(F.array(*flags), lambda x: x.isNotNull()))

    return transform
