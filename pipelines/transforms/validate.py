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

from collections.abc import Callable

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType, VariantType

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
_TYPE_NAMES = {"string": "string", "int": "int", "long": "bigint", "double": "double",
               "boolean": "boolean"}

BRONZE_COLUMNS = ("topic", "partition", "offset", "kafka_timestamp", "key", "value", "value_raw",
                  "ingest_date")
ENVELOPE_COLUMNS = ("event_id", "event_type", "schema_version", "team", "classroom_id",
                    "lesson_id", "user_id", "role", "platform", "app_version", "event_time_ms",
                    "event_time")
OUTPUT_COLUMNS = (*BRONZE_COLUMNS, *ENVELOPE_COLUMNS, "payload", "reject_reason", "reject_rule")


def _probe_schema() -> StructType:
    """`{"k": envelope}` with every envelope value (payload too) as VARIANT, plus the corrupt
    record column: the only failures left are syntax errors and a non-object record."""
    envelope = StructType([StructField(f.name, VariantType(), True)
                           for f in envelope_spark_schema().fields])
    return StructType([StructField("k", envelope, True), StructField(CORRUPT, StringType(), True)])


_SYNTAX_ONLY = StructType([StructField("k", StringType(), True),
                           StructField(CORRUPT, StringType(), True)])


def _env(name: str, part: str) -> str:
    return f"_e_{part}_{name}"


def _pay(name: str, part: str) -> str:
    return f"_p_{part}_{name}"


def _type_ok(spec: FieldSpec, leaf: Column, json_type: Column) -> Column:
    """The contract's `_type_ok` on a variant: ints are BIGINT (a JSON integer literal) in range,
    doubles any JSON number, objects OBJECT; booleans are not numbers."""
    if spec.type == "object":
        return json_type.startswith("OBJECT")
    if spec.type in ("int", "long"):
        ok = json_type == "BIGINT"
        if spec.type == "int":
            ok = ok & F.try_variant_get(leaf, "$", "bigint").between(*INT32)
        return ok
    if spec.type == "double":
        return json_type.isin("BIGINT", "DOUBLE", "FLOAT") | json_type.startswith("DECIMAL")
    return json_type == spec.type.upper()


def _with_leaf_columns(spec: FieldSpec, leaf: Column, name: Callable[[str, str], str]
                       ) -> list[Column]:
    """A leaf's JSON type, presence, type check and typed value as named columns."""
    json_type = F.schema_of_variant(leaf)
    present = leaf.isNotNull() & (json_type != "VOID")
    type_ok = present & _type_ok(spec, leaf, json_type)
    cols = [json_type.alias(name(spec.name, "t")), present.alias(name(spec.name, "present")),
            type_ok.alias(name(spec.name, "ok"))]
    if spec.type != "object":
        value = F.when(type_ok, F.try_variant_get(leaf, "$", _TYPE_NAMES[spec.type]))
        cols.append(value.alias(name(spec.name, "value")))
    return cols


def _lookup(specs: dict[str, FieldSpec], name: Callable[[str, str], str], leaf_of: Callable[[str], Column]
            ) -> Callable[[str], FieldValue]:
    def lookup(field: str) -> FieldValue:
        spec = specs[field]
        value = F.col(name(field, "value")) if spec.type != "object" else F.lit(None)
        if spec.type == "string":
            text = value
        else:
            is_text = F.col(name(field, "t")) == "STRING"
            text = F.when(is_text, F.try_variant_get(leaf_of(field), "$", "string"))
        return FieldValue(value, F.col(name(field, "present")), F.col(name(field, "ok")), text)

    return lookup


_ENV_SPECS = {s.name: s for s in ENVELOPE_FIELDS}
_PAY_SPECS = {s.name: s for s in UNION_PAYLOAD_FIELDS}
_env_lookup = _lookup(_ENV_SPECS, _env, lambda f: F.col("_probe.k").getField(f))
_pay_lookup = _lookup(_PAY_SPECS, _pay, lambda f: F.col(_pay(f, "leaf")))


def _parse(df: DataFrame) -> DataFrame:
    """Read each record once into variants; add the well-formedness evidence."""
    value = F.col("value")
    wrapped = F.concat(F.lit('{"k":'), value, F.lit("}"))
    return df.select(
        *df.columns,
        F.from_json(wrapped, _probe_schema(), STRICT_JSON).alias("_probe"),
        F.json_array_length(F.concat(F.lit("["), value, F.lit("]"))).alias("_items"),
    )


def _leaves(df: DataFrame) -> DataFrame:
    """Every contract field's JSON type, presence, type check and typed value."""
    env = F.col("_probe.k")
    payload = env.getField("payload")
    pay_leaves = [F.try_variant_get(payload, f"$['{s.name}']", "variant").alias(_pay(s.name, "leaf"))
                  for s in UNION_PAYLOAD_FIELDS]
    with_leaves = df.select("*", *pay_leaves)
    cols = [c for s in ENVELOPE_FIELDS for c in _with_leaf_columns(s, env.getField(s.name), _env)]
    cols += [c for s in UNION_PAYLOAD_FIELDS
             for c in _with_leaf_columns(s, F.col(_pay(s.name, "leaf")), _pay)]
    return with_leaves.select("*", *cols)


def _well_formed(df: DataFrame) -> Column:
    """Strict JSON (see module docstring); a lax syntax check is re-run strictly only when the
    probe failed, which it also does for well-formed non-objects."""
    value = F.col("value")
    wrapped = F.concat(F.lit('{"k":'), value, F.lit("}"))
    strict_ok = F.when(F.col(f"_probe.{CORRUPT}").isNull(), F.lit(True)).otherwise(
        F.from_json(wrapped, _SYNTAX_ONLY, STRICT_JSON).getField(CORRUPT).isNull())
    doubles = [(F.col(name(s.name, "t")) == "DOUBLE")
               & F.try_variant_get(leaf, "$", "double").isin(float("inf"), float("-inf"))
               for s, name, leaf in (
                   *((s, _env, F.col("_probe.k").getField(s.name)) for s in ENVELOPE_FIELDS),
                   *((s, _pay, F.col(_pay(s.name, "leaf"))) for s in UNION_PAYLOAD_FIELDS))
               if s.type != "object"]
    overflow = doubles[0]
    for d in doubles[1:]:
        overflow = overflow | d
    surrogate = value.contains("\\u") & value.rlike(LONE_SURROGATE)
    ok = (value.isNotNull() & (F.col("_items") == 1) & strict_ok
          & ~F.coalesce(surrogate, F.lit(False)) & ~F.coalesce(overflow, F.lit(False)))
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
            versions = [v.version for v in etype.versions if spec.name in
                        {f.name for f in v.fields}]
            if versions:
                defined = defined | ((event_type == name) & version.isin(versions))
        value = F.when(defined, _pay_lookup(spec.name).value)
        fields.append(value.cast(schema[spec.name].dataType).alias(spec.name))
    return F.when(_env_lookup("payload").type_ok, F.struct(*fields))


def _result(df: DataFrame) -> DataFrame:
    env = _env_lookup
    event_time_ms = env("event_time").value
    event_time = F.when(event_time_ms.between(-_MAX_EPOCH_MS, _MAX_EPOCH_MS),
                        F.timestamp_millis(event_time_ms))
    checked = df.withColumn("_well_formed", _well_formed(df)).withColumn(
        "_reject", _first_violation())
    return checked.select(
        *BRONZE_COLUMNS,
        *(env(name).value.alias(name) for name in ENVELOPE_COLUMNS[:10]),
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
    return df.transform(_parse).transform(_leaves).transform(_result)


def flatten_payload(df: DataFrame) -> DataFrame:
    """The silver shape: payload fields as top-level `payload_<name>` columns."""
    fields = [F.col("payload").getField(s.name).alias(FLAT_PAYLOAD_PREFIX + s.name)
              for s in UNION_PAYLOAD_FIELDS]
    return df.select(*(c for c in df.columns if c != "payload"), *fields)
