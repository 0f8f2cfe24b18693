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

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from schemas.contract import (
    _UUID_RE,  # the contract's own pattern; exported nowhere else (see module docstring)
    ENVELOPE_FIELDS,
    EVENT_TYPES,
    FieldSpec,
    Reason,
    Violation,
    payload_fields,
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

    def violated_sql(self, fields: FieldLookup) -> str:
        """SQL that is true where the rule is broken (null counts as not broken).

        `fields` maps a field name of the same object (a sibling, for `required_when`) to its
        SQL; validate.py passes raw-JSON probes, `flat_checks` the typed silver columns.
        """
        spec = self.spec
        assert spec is not None, f"{self.id} is not a field rule"
        this = fields(spec.name)
        if self.kind is Kind.REQUIRED:
            return f"NOT ({this.present})"
        if self.kind is Kind.CONDITIONAL_REQUIRED:
            holds = [f"{fields(c.field).text} IN ({sql_list(c.values)})"
                     for c in spec.required_when]
            return " AND ".join([f"NOT ({this.present})", *holds])
        if self.kind is Kind.TYPE:
            return f"({this.present}) AND NOT ({this.type_ok})"
        value = this.value
        if self.kind is Kind.ENUM:
            broken = f"{value} NOT IN ({sql_list(spec.allowed or ())})"
        elif self.kind is Kind.RANGE:
            bounds = [f"{value} < {sql_number(spec.min)}" if spec.min is not None else "",
                      f"{value} > {sql_number(spec.max)}" if spec.max is not None else ""]
            broken = " OR ".join(b for b in bounds if b)
        elif self.kind is Kind.FORMAT:
            broken = f"NOT ({value} RLIKE r'{FORMAT_REGEX[spec.format or '']}')"
        elif self.kind is Kind.NONEMPTY:
            broken = f"length({value}) = 0"
        else:
            raise ValueError(f"{self.id}: {self.kind} has no per-record check")
        return f"({this.type_ok}) AND ({broken})"

    def violated(self, fields: FieldLookup) -> Column:
        return F.expr(self.violated_sql(fields))


@dataclass(frozen=True, slots=True)
class FieldValue:
    """A field as Spark SQL expressions: the typed value (null when absent or of the wrong
    type), whether the JSON value is there and not null, whether it has the contract type, and
    its text when the JSON value is a string (what `required_when` conditions compare)."""

    value: str
    present: str
    type_ok: str
    text: str


FieldLookup = Callable[[str], FieldValue]


def sql_string(value: str) -> str:
    """A Spark SQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def sql_list(values: Sequence[str | int]) -> str:
    return ", ".join(sql_string(v) if isinstance(v, str) else str(v) for v in values)


def sql_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def sql_ident(name: str) -> str:
    return f"`{name}`"


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
        specs = {s.name: s for s in payload_fields([event_type])}
    else:
        specs = {s.name: s for s in ENVELOPE_FIELDS}

    def lookup(name: str) -> FieldValue:
        col = sql_ident(flat_column(prefix + name))
        text = col if specs[name].type == "string" else "CAST(NULL AS STRING)"
        return FieldValue(col, f"{col} IS NOT NULL", f"{col} IS NOT NULL", text)

    return lookup


def version_gate(rule: Rule) -> list[int] | None:
    """The schema versions a payload rule is limited to, None when it holds in all of them."""
    if rule.event_type is None or not rule.versions:
        return None
    supported = sorted(EVENT_TYPES[rule.event_type].supported_versions)
    return None if list(rule.versions) == supported else list(rule.versions)


def flat_checks(event_type: str) -> list[tuple[Rule, str]]:
    """(rule, SQL true where broken) for every rule GE also checks on a flattened frame.

    Record, type and known-event-type rules are settled by parsing and have no typed form, nor
    has `payload:required` (flattened frames have no payload object). `event_id:unique` is a
    window over the frame, so a batch check (the stream deduplicates within its watermark).
    """
    envelope, payload = flat_lookup(event_type), flat_lookup(event_type, PAYLOAD_PREFIX)
    out: list[tuple[Rule, str]] = []
    for rule in rules_for(event_type):
        col = sql_ident(rule.column)
        if rule.kind in (Kind.JSON, Kind.OBJECT, Kind.TYPE, Kind.KNOWN_EVENT_TYPE):
            continue
        if rule.field == "payload":
            continue
        if rule.kind is Kind.UNIQUE:
            broken = f"{col} IS NOT NULL AND count(1) OVER (PARTITION BY {col}) > 1"
        elif rule.kind is Kind.SUPPORTED_VERSION:
            supported = sorted(EVENT_TYPES[event_type].supported_versions)
            broken = f"{col} NOT IN ({sql_list(supported)})"
        else:
            broken = rule.violated_sql(payload if rule.is_payload else envelope)
            gate = version_gate(rule)
            if gate is not None:
                broken = f"schema_version IN ({sql_list(gate)}) AND ({broken})"
        out.append((rule, f"coalesce({broken}, false)"))
    return out


def with_failed_rules(event_type: str) -> Callable[[DataFrame], DataFrame]:
    """Adds `failed_rules` (array of the broken rule ids) to a flattened frame of
    `event_type`: the Spark side of the GE agreement (quality/expectations.py)."""
    def transform(df: DataFrame) -> DataFrame:
        flags = ", ".join(f"CASE WHEN {broken} THEN {sql_string(rule.id)} END"
                          for rule, broken in flat_checks(event_type))
        return df.withColumn("failed_rules", F.expr(f"filter(array({flags}), x -> x IS NOT NULL)"))

    return transform
