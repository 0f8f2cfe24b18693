"""Parse and validate bronze records against the event contract, in the JVM, dropping none.

Shared by silver and the Help fast path. Every input row comes out once, typed as far as it
can be, with `reject_reason`/`reject_rule` null when it passes the contract, else the first
broken rule in `validate_event`'s order, so Spark and the pure-Python validator reject the same
record for the same reason (tests/test_validate.py holds them to that).

Why not a plain typed `from_json`: Spark's JSON reading is laxer than the contract (a string
field takes `5` as "5", a double takes "NaN", and a payload that is not an object nulls the whole
record when `spark.sql.json.enablePartialResults` is off). So each record is read once with
`from_json` against the contract's envelope schema with every value as VARIANT: a variant never
mismatches, keeps each value's JSON type (`schema_of_variant`), and becomes the typed column by
a cast that runs only after the type check passed.

Why the extra JSON checks: Spark's parser stops after the first JSON value (`{...},}` parses)
and is lenient by default; orjson, the contract's parser, is strict. A record is well-formed
when (a) a strict `from_json` of `{"k":<value>}` succeeds, which also catches trailing text
that does not start with `}` or `,`, (b) `[<value>]` is an array of exactly one element, which
catches the rest, and (c) it has no unpaired UTF-16 surrogate escape and no number that
overflows a double (orjson rejects both; checked on contract fields only).

Residual differences from orjson (kept out of the agreement test on purpose): an overflowing
number inside an unknown extra field, nesting deeper than Jackson's limit (1000) vs orjson's
(1024), and duplicate keys unless `REQUIRED_SPARK_CONF` is set (then both keep the last).
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import DataType, StringType, StructField, StructType, VariantType

from quality.rules import (
    ENVELOPE_RULES,
    FLAT_PAYLOAD_PREFIX,
    KNOWN_EVENT_TYPE_RULE,
    RECORD_RULES,
    SUPPORTED_VERSION_RULE,
    FieldValue,
    Rule,
    payload_rules,
)
from schemas.contract import (
    ENVELOPE_FIELDS,
    EVENT_TYPES,
    INT32,
    UNION_PAYLOAD_FIELDS,
    FieldSpec,
    envelope_spark_schema,
    union_payload_spark_schema,
)

# Without it the variant reader rejects a value holding duplicate keys (orjson keeps the last).
REQUIRED_SPARK_CONF = {"spark.sql.variant.allowDuplicateKeys": "true"}

CORRUPT = "_corrupt_record"
STRICT_JSON = {
    "mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT, "allowSingleQuotes": "false",
    "allowNonNumericNumbers": "false", "allowComments": "false",
    "allowUnquotedFieldNames": "false", "allowNumericLeadingZeros": "false",
    "allowBackslashEscapingAnyCharacter": "false", "allowUnquotedControlChars": "false",
}
# A \uXXXX escape (after an even number of backslashes) of a high surrogate not followed by a
# low one, or of a low surrogate not preceded by a high one.
_HIGH, _LOW = r"\\u[dD][89abAB][0-9a-fA-F]{2}", r"\\u[dD][c-fC-F][0-9a-fA-F]{2}"
LONE_SURROGATE = rf"(?<!\\)(?:\\\\)*(?:{_HIGH}(?!{_LOW})|(?<!{_HIGH}){_LOW})"
_STARTS_AN_OBJECT = r"^[ \t\n\r]*\{"
_MAX_EPOCH_MS = 9_223_372_036_854_775  # beyond this, epoch micros overflow a long

BRONZE_COLUMNS = ("topic", "partition", "offset", "kafka_timestamp", "key", "value", "value_raw",
                  "ingest_date")
ENVELOPE_COLUMNS = ("event_id", "event_type", "schema_version", "team", "classroom_id",
                    "lesson_id", "user_id", "role", "platform", "app_version", "event_time_ms",
                    "event_time")
OUTPUT_COLUMNS = (*BRONZE_COLUMNS, *ENVELOPE_COLUMNS, "payload", "reject_reason", "reject_rule")


def _probe_schema(payload: DataType) -> StructType:
    """`{"k": envelope}` with every envelope value as VARIANT (the payload as `payload`), plus
    the corrupt-record column."""
    envelope = StructType([
        StructField(f.name, payload if f.name == "payload" else VariantType(), True)
        for f in envelope_spark_schema().fields])
    return StructType([StructField("k", envelope, True), StructField(CORRUPT, StringType(), True)])


# Fast path: payload fields as variants, no per-field path lookups. Fails (corrupt) only on bad
# syntax, a non-object record or a non-object payload.
_PROBE = _probe_schema(StructType([StructField(s.name, VariantType(), True)
                                   for s in union_payload_spark_schema().fields]))
# Slow path, for the records the fast probe failed on: the payload as one variant.
_PROBE_SLOW = _probe_schema(VariantType())
_SYNTAX_ONLY = StructType([StructField("k", StringType(), True),
                           StructField(CORRUPT, StringType(), True)])
_ENV_SPECS = {s.name: s for s in ENVELOPE_FIELDS if s.type != "object"}
_PAY_SPECS = {s.name: s for s in UNION_PAYLOAD_FIELDS}


def _leaf(part: str, name: str) -> str:
    return f"_{part}_leaf_{name}"


def _jtype(part: str, name: str) -> str:
    return f"_{part}_type_{name}"


def _val(part: str, name: str) -> str:
    return f"_{part}_value_{name}"


def _wrapped(value: Column) -> Column:
    return F.concat(F.lit('{"k":'), value, F.lit("}"))


def _parse(df: DataFrame) -> DataFrame:
    """Read each record into variants once (twice for the few the fast probe fails on)."""
    value = F.col("value")
    fast = F.from_json(_wrapped(value), _PROBE, STRICT_JSON)
    return (df.select("*", fast.alias("_probe"),
                      F.json_array_length(F.concat(F.lit("["), value, F.lit("]"))).alias("_items"))
            .withColumn("_slow", F.when(F.col(f"_probe.{CORRUPT}").isNotNull(),
                                        F.from_json(_wrapped(value), _PROBE_SLOW, STRICT_JSON))))


def _leaves(df: DataFrame) -> DataFrame:
    """Each contract field as a variant: envelope values from whichever probe parsed."""
    fast_ok = F.col(f"_probe.{CORRUPT}").isNull()
    env = [F.when(fast_ok, F.col("_probe.k").getField(n)).otherwise(
        F.col("_slow.k").getField(n)).alias(_leaf("e", n)) for n in _ENV_SPECS]
    pay = [F.col("_probe.k.payload").getField(n).alias(_leaf("p", n)) for n in _PAY_SPECS]
    slow_payload = F.schema_of_variant(F.col("_slow.k.payload"))
    payload_kind = (F.when(fast_ok, F.when(F.col("_probe.k.payload").isNull(), "absent")
                           .otherwise("object"))
                    .when(slow_payload.isNull() | (slow_payload == "VOID"), "absent")
                    .otherwise("other"))
    return df.select(*df.columns, *env, *pay, payload_kind.alias("_payload_kind"))


def _typed_value(spec: FieldSpec, leaf: Column, json_type: Column) -> Column:
    """The value cast to the contract type where its JSON type is the contract's, else null.
    Ints are read as long here; the INT32 range is part of their type check."""
    if spec.type in ("int", "long"):
        return F.when(json_type == "BIGINT", F.try_variant_get(leaf, "$", "bigint"))
    if spec.type == "double":
        numeric = json_type.isin("BIGINT", "DOUBLE", "FLOAT") | json_type.startswith("DECIMAL")
        return F.when(numeric, F.try_variant_get(leaf, "$", "double"))
    return F.when(json_type == spec.type.upper(), F.try_variant_get(leaf, "$", spec.type))


def _overflows(leaf: Column, json_type: Column) -> Column:
    """A JSON number beyond the double range (Spark reads it as infinity; orjson rejects it)."""
    return (json_type == "DOUBLE") & F.try_variant_get(leaf, "$", "double").isin(
        float("inf"), float("-inf"))


def _types_and_values(df: DataFrame) -> DataFrame:
    """JSON type (`schema_of_variant`) and typed value of every leaf, computed once."""
    leaves = [("e", s) for s in _ENV_SPECS.values()] + [("p", s) for s in _PAY_SPECS.values()]
    typed = df.select("*", *(F.schema_of_variant(F.col(_leaf(part, s.name)))
                             .alias(_jtype(part, s.name)) for part, s in leaves))
    overflow = F.lit(False)
    for part, s in leaves:
        overflow = overflow | _overflows(F.col(_leaf(part, s.name)), F.col(_jtype(part, s.name)))
    return typed.select(
        *(c for c in typed.columns if "_leaf_" not in c),
        *(_typed_value(s, F.col(_leaf(part, s.name)), F.col(_jtype(part, s.name)))
          .alias(_val(part, s.name)) for part, s in leaves),
        *(F.when(F.col(_jtype(part, s.name)) == "STRING",
                 F.try_variant_get(F.col(_leaf(part, s.name)), "$", "string"))
          .alias(f"_{part}_text_{s.name}")
          for part, s in leaves if s.type != "string" and s.name in _CONDITION_FIELDS),
        F.coalesce(overflow, F.lit(False)).alias("_overflow"))


_CONDITION_FIELDS = {c.field for s in UNION_PAYLOAD_FIELDS for c in s.required_when}


def _field(part: str, spec: FieldSpec) -> FieldValue:
    """The rule-facing view of one leaf (see `quality.rules.FieldValue`)."""
    json_type, value = F.col(_jtype(part, spec.name)), F.col(_val(part, spec.name))
    present = json_type.isNotNull() & (json_type != "VOID")
    type_ok = value.isNotNull()
    if spec.type == "int":
        type_ok = value.between(*INT32)
    if spec.type == "string":
        text = value
    elif spec.name in _CONDITION_FIELDS:
        text = F.col(f"_{part}_text_{spec.name}")
    else:
        text = F.lit(None).cast("string")
    return FieldValue(F.when(type_ok, value), present, F.coalesce(type_ok, F.lit(False)), text)


def _payload_field() -> FieldValue:
    kind = F.col("_payload_kind")
    return FieldValue(F.lit(None), kind != "absent", kind == "object", F.lit(None))


def _env_lookup(name: str) -> FieldValue:
    return _payload_field() if name == "payload" else _field("e", _ENV_SPECS[name])


def _pay_lookup(name: str) -> FieldValue:
    return _field("p", _PAY_SPECS[name])


def _well_formed() -> Column:
    """Strict JSON (see module docstring): a probe parsed it or the syntax-only read did,
    `[value]` holds one element, no lone surrogate escape, no contract number overflowed."""
    value = F.col("value")
    parsed = (F.when(F.col(f"_probe.{CORRUPT}").isNull(), F.lit(True))
              .when(F.col(f"_slow.{CORRUPT}").isNull(), F.lit(True))
              .otherwise(F.from_json(_wrapped(value), _SYNTAX_ONLY, STRICT_JSON)
                         .getField(CORRUPT).isNull()))
    surrogate = value.contains("\\u") & value.rlike(LONE_SURROGATE)
    ok = (value.isNotNull() & (F.col("_items") == 1) & parsed
          & ~F.coalesce(surrogate, F.lit(False)) & ~F.col("_overflow"))
    return F.coalesce(ok, F.lit(False))


def _hit(rule: Rule) -> Column:
    return F.struct(F.lit(rule.reason.value).alias("reason"), F.lit(rule.id).alias("rule"))


def _first_violation() -> Column:
    """CASE over the rules in `validate_event`'s order; the first broken one wins."""
    env, pay = _env_lookup, _pay_lookup
    event_type, version = env("event_type"), env("schema_version")
    json_rule, object_rule = RECORD_RULES
    case = F.when(~F.col("_well_formed"), _hit(json_rule))
    case = case.when(~F.col("value").rlike(_STARTS_AN_OBJECT), _hit(object_rule))
    for rule in ENVELOPE_RULES:
        case = case.when(rule.violated(env), _hit(rule))
    named = event_type.type_ok & (F.length(event_type.value) > 0)
    known = event_type.value.isin(list(EVENT_TYPES))
    case = case.when(named & ~known, _hit(KNOWN_EVENT_TYPE_RULE))
    supported = _supported(event_type.value, version.value)
    case = case.when(named & known & version.type_ok & ~supported, _hit(SUPPORTED_VERSION_RULE))
    payload_object = env("payload").type_ok
    for name, etype in EVENT_TYPES.items():
        for v in sorted(etype.supported_versions):
            rules = payload_rules(name, v)
            if not rules:
                continue
            inner = F.when(rules[0].violated(pay), _hit(rules[0]))
            for rule in rules[1:]:
                inner = inner.when(rule.violated(pay), _hit(rule))
            gate = (event_type.value == name) & (version.value == v) & payload_object
            case = case.when(gate, inner)
    return case


def _supported(event_type: Column, version: Column) -> Column:
    out = F.lit(False)
    for name, etype in EVENT_TYPES.items():
        out = out | ((event_type == name) & version.isin(sorted(etype.supported_versions)))
    return out


def _payload_struct() -> Column:
    """The union payload, typed; a field is filled only where the record's (type, version)
    defines it (an extra field of another type or version is ignored, as the contract says)."""
    event_type, version = _env_lookup("event_type").value, _env_lookup("schema_version").value
    schema = union_payload_spark_schema()
    fields = []
    for spec in UNION_PAYLOAD_FIELDS:
        defined = F.lit(False)
        for name, etype in EVENT_TYPES.items():
            versions = [v.version for v in etype.versions
                        if spec.name in {f.name for f in v.fields}]
            if versions:
                defined = defined | ((event_type == name) & version.isin(versions))
        value = F.when(defined, _pay_lookup(spec.name).value)
        fields.append(value.cast(schema[spec.name].dataType).alias(spec.name))
    return F.when(_env_lookup("payload").type_ok, F.struct(*fields))


def _result(df: DataFrame) -> DataFrame:
    env = _env_lookup
    schema = envelope_spark_schema()
    event_time_ms = env("event_time").value
    event_time = F.when(event_time_ms.between(-_MAX_EPOCH_MS, _MAX_EPOCH_MS),
                        F.timestamp_millis(event_time_ms))
    checked = (df.withColumn("_well_formed", _well_formed())
               .withColumn("_reject", _first_violation()))
    return checked.select(
        *BRONZE_COLUMNS,
        *(env(name).value.cast(schema[name].dataType).alias(name)
          for name in ENVELOPE_COLUMNS[:10]),
        event_time_ms.alias("event_time_ms"),
        event_time.alias("event_time"),
        _payload_struct().alias("payload"),
        F.col("_reject.reason").alias("reject_reason"),
        F.col("_reject.rule").alias("reject_rule"),
    )


def parse_and_validate(df: DataFrame) -> DataFrame:
    """bronze.events -> one typed row per record with `reject_reason`/`reject_rule`.

    Needs `value` (the record as text where it is UTF-8; null otherwise, and then malformed)
    and the bronze coordinates; keeps `event_time` and `kafka_timestamp` so the skew, lateness
    and duplicate checks downstream can run on the result.
    """
    return (df.transform(_parse).transform(_leaves).transform(_types_and_values)
            .transform(_result))


def flatten_payload(df: DataFrame) -> DataFrame:
    """The silver shape: payload fields as top-level `payload_<name>` columns."""
    fields = [F.col("payload").getField(s.name).alias(FLAT_PAYLOAD_PREFIX + s.name)
              for s in UNION_PAYLOAD_FIELDS]
    return df.select(*(c for c in df.columns if c != "payload"), *fields)
