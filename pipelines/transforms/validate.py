"""Parse and validate bronze records against the event contract, in the JVM, dropping none.

Shared by silver and the Help fast path. Every input row comes out once, typed as far as it
can be, with `reject_reason`/`reject_rule` null when it passes the contract, else the first
broken rule in `validate_event`'s order, so Spark and the pure-Python validator reject the same
record for the same reason (tests/test_validate.py holds them to that).

Why not a plain typed `from_json`: Spark's JSON reading is laxer than the contract (a string
field takes `5` as "5", a double takes "NaN"), and a payload that is not an object nulls the
whole record when `spark.sql.json.enablePartialResults` is off. So each record is read with
`from_json` against the contract's envelope schema with every value as VARIANT: a variant
never mismatches, keeps its JSON type (`schema_of_variant`), and becomes the typed column only
after the type check passed. Only records whose payload is not an object (or that do not
parse) are read a second time.

Most records take a cheaper road: one strict typed parse of `{"k":[<value>]}` with a corrupt-
record column, which flags any type mismatch (`int` for 1.5, `double` for "NaN", an object
for a number) and, with the record inside an array, anything after its first JSON value. A
record is *plain* when that parse is clean, holds one object, the record has no `]` (text
after the array's end would be ignored) and no `\\u` escape (lone surrogates), no string field
holds text a non-string would also give (`5`, `true`, `{...}`: Spark writes those as text
into a string field) and no double is non-finite (an overflow). For a plain record the
variant reads would say what the typed one says, so they are skipped (their columns null)
and the rules below run on the typed values; the rest take the variant road.

Why the extra JSON checks: Spark's parser stops after the first JSON value (`{...},}` parses)
and is lenient by default; orjson, the contract's parser, is strict. A record is well-formed
when (a) a strict `from_json` of `{"k":<value>}` succeeds, which also catches trailing text
that does not start with `}` or `,`, (b) `[<value>]` is an array of exactly one element, which
catches the rest (the typed read parses `[<value>]`, so its size is that count; only where it
fails does `json_array_length` parse the record once more), and (c) it has no unpaired UTF-16
surrogate escape and no contract field holds a number beyond the double range (orjson rejects
both).

Residual differences from orjson (kept out of the agreement test on purpose): an overflowing
number inside an unknown extra field, nesting deeper than Jackson's limit (1000) vs orjson's
(1024). Duplicate keys: both keep the last (`REQUIRED_SPARK_CONF`, set by `build_spark`).

The checks are built as SQL text (`F.expr`), not Column objects: the Column API costs a py4j
round trip per operator, tens of thousands here, seconds per query start.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DataType, StringType, StructField, StructType, VariantType

from quality.rules import (
    ENVELOPE_RULES,
    FLAT_PAYLOAD_PREFIX,
    KNOWN_EVENT_TYPE_RULE,
    RECORD_RULES,
    SUPPORTED_VERSION_RULE,
    FieldValue,
    Rule,
    payload_rules,
    sql_ident,
    sql_list,
    sql_string,
)
from schemas.contract import (
    ENVELOPE_FIELDS,
    EVENT_TYPES,
    UNION_PAYLOAD_FIELDS,
    FieldSpec,
    envelope_spark_schema,
    union_payload_spark_schema,
)

# Without it the variant reader rejects a value holding duplicate keys inside a variant (orjson
# keeps the last; duplicates of the envelope's and payload's own fields keep the last anyway).
# `build_spark` sets it.
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
    """`{"k": envelope}` with every envelope value a VARIANT (the payload as `payload`), plus
    the corrupt-record column."""
    envelope = StructType([
        StructField(f.name, payload if f.name == "payload" else VariantType(), True)
        for f in envelope_spark_schema().fields])
    return StructType([StructField("k", envelope, True), StructField(CORRUPT, StringType(), True)])


# Fast path: payload fields as variants, no per-field path lookups. Fails (corrupt) only on bad
# syntax, a non-object record or a non-object payload.
_PROBE = _probe_schema(StructType([StructField(f.name, VariantType(), True)
                                   for f in union_payload_spark_schema().fields]))
# Slow path, for the records the fast probe failed on: the payload as one variant.
_PROBE_SLOW = _probe_schema(VariantType())
_SYNTAX_ONLY = StructType([StructField("k", StringType(), True),
                           StructField(CORRUPT, StringType(), True)])
# The plain read: `{"k":[<value>]}` against the typed contract schema. Spark's JSON reading
# writes any value as text into a string field, so it cannot tell `"5"` from `5`; what such
# text can look like (a JSON number, true, false, an object, `"Infinity"` for a number beyond
# the double range) is what `_lax_string` looks for.
_PLAIN_PROBE = StructType([StructField("k", ArrayType(envelope_spark_schema()), True),
                           StructField(CORRUPT, StringType(), True)])
_JSON_NUMBER = r"^-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?(?![\s\S])"


def _lax_string(field: str) -> str:
    """SQL: the string could be the text of a non-string JSON value. The regex (a decode of
    the string per call) only for text that starts like a number."""
    first = f"left({field}, 1)"
    return (f"CASE WHEN {first} IN ({sql_list(list('-0123456789'))})"
            f" THEN {field} RLIKE r'{_JSON_NUMBER}'"
            f" ELSE {first} IN ('{{', '[', '\"') OR {field} IN ('true', 'false') END")


_ENV_SPECS = {s.name: s for s in ENVELOPE_FIELDS if s.type != "object"}
_PAY_SPECS = {s.name: s for s in UNION_PAYLOAD_FIELDS}
_LEAVES = [("e", s) for s in _ENV_SPECS.values()] + [("p", s) for s in _PAY_SPECS.values()]
_CONDITION_FIELDS = {c.field for s in UNION_PAYLOAD_FIELDS for c in s.required_when}
_PAYLOAD_KEYS = {  # payload field -> the "type#version" keys whose payload defines it
    spec.name: [f"{t.name}#{v.version}" for t in EVENT_TYPES.values() for v in t.versions
                if spec.name in {f.name for f in v.fields}]
    for spec in UNION_PAYLOAD_FIELDS}
_SUPPORTED_KEYS = [f"{t.name}#{v}" for t in EVENT_TYPES.values()
                   for v in sorted(t.supported_versions)]


def _name(part: str, what: str, name: str) -> str:
    """Working column names: `_e_value_role`, `_p_present_rtt_ms`, ..."""
    return f"_{part}_{what}_{name}"


def _col(part: str, what: str, name: str) -> str:
    """A working column in SQL."""
    return sql_ident(_name(part, what, name))


def _wrapped(value: Column) -> Column:
    return F.concat(F.lit('{"k":'), value, F.lit("}"))


def _bracketed(value: Column) -> Column:
    """The record as a JSON array of what it holds."""
    return F.concat(F.lit("["), value, F.lit("]"))


_BRACKETED = "'[' || value || ']'"  # the record as a JSON array of what it holds


def _plain(df: DataFrame, enabled: bool = True) -> DataFrame:
    """The cheap read most records need: one strict typed parse of `{"k":[<value>]}`, kept as
    `_pt` only where that read alone settles the record (module docstring), else null.

    Downstream steps tell the roads apart by `_pt` being null (a plain record's variant reads
    are null, and the reverse), never by a flag read in every field's expression: a filter
    the optimizer pushes down through the validation inlines each column it meets, so a flag
    read a hundred times multiplies the pushed condition's size at every step.
    """
    if not enabled:
        return df.select("*", F.lit(None).cast(envelope_spark_schema()).alias("_pt"))
    probe = F.from_json(_wrapped(_bracketed(F.col("value"))), _PLAIN_PROBE, STRICT_JSON)
    first = "get(_plain_probe.k, 0)"  # null, not an error, for an empty array
    doubtful = [_lax_string(_plain_leaf(part, s.name, first))
                for part, s in _LEAVES if s.type == "string"]
    doubtful += [f"NOT (abs({_plain_leaf(part, s.name, first)}) < double('Infinity'))"
                 for part, s in _LEAVES if s.type == "double"]
    clean = (f"_plain_probe.{CORRUPT} IS NULL AND size(_plain_probe.k) = 1"
             " AND NOT contains(value, ']') AND NOT contains(value, r'\\u')")
    # `spark_partition_id() >= 0` always holds; it makes the column non-deterministic, which
    # is what stops the optimizer from pushing a later filter down through this projection
    # (and so from inlining this expression into every field's expression above it).
    plain = (f"CASE WHEN coalesce({clean}, false)"
             f" AND NOT coalesce({' OR '.join(doubtful)}, false)"
             f" AND spark_partition_id() >= 0 THEN {first} END")
    return df.select("*", probe.alias("_plain_probe")).select(
        *df.columns, F.expr(plain).alias("_pt"))


def _parse(df: DataFrame) -> DataFrame:
    """Records the plain read does not settle are read again (the rest get nulls): into variants
    (JSON types) and, as `[value]`, against the contract's typed schema (values, and how many
    JSON values the record holds); a third time for the few the variant probe fails on."""
    value = F.when(F.col("_pt").isNull(), F.col("value"))
    fast = F.from_json(_wrapped(value), _PROBE, STRICT_JSON)
    slow = F.from_json(_wrapped(value), _PROBE_SLOW, STRICT_JSON)
    typed = F.from_json(_bracketed(value), ArrayType(envelope_spark_schema()))
    parsed = df.select("*", fast.alias("_probe"), typed.alias("_typed_items"))
    # The typed read doubles as the `[value]` element count; `json_array_length` (a third full
    # parse) only where it did not parse (malformed or not an object: a few records).
    items = F.expr("CASE WHEN _pt IS NOT NULL THEN 1"
                   " WHEN _typed_items IS NOT NULL THEN size(_typed_items)"
                   f" ELSE json_array_length({_BRACKETED}) END")
    return parsed.select(
        *df.columns, "_probe", F.expr("get(_typed_items, 0)").alias("_typed"),
        items.alias("_items"),
        F.when(F.col(f"_probe.{CORRUPT}").isNotNull(), slow).alias("_slow"))


def _plain_leaf(part: str, name: str, record: str = "_pt") -> str:
    """SQL of a field in the plain read."""
    return f"{record}.`{name}`" if part == "e" else f"{record}.payload.`{name}`"


def _leaf(part: str, name: str) -> str:
    """SQL of a field's variant. Envelope values come from whichever probe parsed the record
    (the slow one is null when the fast one did); payload values only from the fast one, as
    the slow probe only runs when the payload is not an object (or nothing parsed)."""
    if part == "e":
        return f"coalesce(_probe.k.`{name}`, _slow.k.`{name}`)"
    return f"_probe.k.payload.`{name}`"


def _leaves(df: DataFrame) -> DataFrame:
    """Each field's JSON type; whether the payload is an object, absent (or null) or else."""
    payload_kind = F.expr(f"""CASE
        WHEN _pt IS NOT NULL THEN CASE WHEN _pt.payload IS NULL THEN 'absent' ELSE 'object' END
        WHEN _probe.{CORRUPT} IS NULL THEN
            CASE WHEN _probe.k.payload IS NULL THEN 'absent' ELSE 'object' END
        WHEN coalesce(schema_of_variant(_slow.k.payload), 'VOID') = 'VOID' THEN 'absent'
        ELSE 'other' END""")
    types = [F.expr(f"schema_of_variant({_leaf(part, s.name)})")
             .alias(_name(part, "type", s.name)) for part, s in _LEAVES]
    return df.select("*", payload_kind.alias("_payload_kind"), *types)


_NUMERIC = "({t} IN ('BIGINT', 'DOUBLE', 'FLOAT') OR {t} LIKE 'DECIMAL%')"
_JSON_TYPE = {"int": "{t} = 'BIGINT'", "long": "{t} = 'BIGINT'", "double": _NUMERIC,
              "string": "{t} = 'STRING'", "boolean": "{t} = 'BOOLEAN'"}


def _typed_value(spec: FieldSpec, part: str) -> str:
    """SQL: the value where its JSON type is the contract's (an int also in INT32), else null.

    The value comes from the typed `from_json`; the variant is read only when that lost it (a
    sibling's type mismatch with partial results off): `try_variant_get` builds a Cast per call,
    and on executors each Cast builds a fresh SQLConf, which is slow.
    """
    leaf, json_type = _leaf(part, spec.name), _col(part, "type", spec.name)
    typed = f"_typed.`{spec.name}`" if part == "e" else f"_typed.payload.`{spec.name}`"
    fallback = f"try_variant_get({leaf}, '$', '{spec.type}')"
    right_type = _JSON_TYPE[spec.type].format(t=json_type)
    return f"CASE WHEN {right_type} THEN coalesce({typed}, {fallback}) END"


def _values(df: DataFrame) -> DataFrame:
    """Per field: present (there and not null), the typed value (null unless the type is
    right), the text of a string value for `required_when` conditions; and number overflow."""
    cols, overflow = [], []
    for part, spec in _LEAVES:
        leaf, json_type = _leaf(part, spec.name), _col(part, "type", spec.name)
        plain = _plain_leaf(part, spec.name)
        value = _typed_value(spec, part)
        # `_pt` is null on the variant road and the variant reads on the plain one.
        cols.append(F.expr(f"{plain} IS NOT NULL"
                           f" OR ({json_type} IS NOT NULL AND {json_type} <> 'VOID')")
                    .alias(_name(part, "present", spec.name)))
        cols.append(F.expr(f"coalesce({plain}, {value})")
                    .alias(_name(part, "value", spec.name)))
        if spec.type != "string" and spec.name in _CONDITION_FIELDS:
            # A plain record's non-string field never holds a JSON string.
            text = (f"CASE WHEN {json_type} = 'STRING'"
                    f" THEN try_variant_get({leaf}, '$', 'string') END")
            cols.append(F.expr(text).alias(_name(part, "text", spec.name)))
        # A number beyond the double range is a DOUBLE variant that prints as "Infinity".
        overflow.append(f"({json_type} = 'DOUBLE' AND to_json({leaf}) LIKE '%Infinity%')")
    parsed = F.expr(f"_pt IS NOT NULL OR _probe.{CORRUPT} IS NULL OR _slow.{CORRUPT} IS NULL")
    keep = [c for c in df.columns
            if "_type_" not in c and c not in ("_typed", "_probe", "_slow")]
    return df.select(*keep, *cols, parsed.alias("_parsed"),
                     F.expr(f"coalesce({' OR '.join(overflow)}, false)").alias("_overflow"))


def _field(part: str, spec: FieldSpec) -> FieldValue:
    """The rule-facing SQL of one field (see `quality.rules.FieldValue`)."""
    value = _col(part, "value", spec.name)
    if spec.type == "string":
        text = value
    elif spec.name in _CONDITION_FIELDS:
        text = _col(part, "text", spec.name)
    else:
        text = "CAST(NULL AS STRING)"
    return FieldValue(value, _col(part, "present", spec.name), f"{value} IS NOT NULL", text)


def _env_lookup(name: str) -> FieldValue:
    if name == "payload":
        return FieldValue("NULL", "_payload_kind <> 'absent'", "_payload_kind = 'object'", "NULL")
    return _field("e", _ENV_SPECS[name])


def _pay_lookup(name: str) -> FieldValue:
    return _field("p", _PAY_SPECS[name])


def _well_formed() -> Column:
    """Strict JSON (see module docstring): a probe parsed it or the syntax-only read did,
    `[value]` holds one element, no lone surrogate escape, no number overflowed."""
    value = F.col("value")
    parsed = F.when(F.col("_parsed"), F.lit(True)).otherwise(
        F.from_json(_wrapped(value), _SYNTAX_ONLY, STRICT_JSON).getField(CORRUPT).isNull())
    surrogate = F.expr(f"_pt IS NULL AND contains(value, r'\\u')"
                       f" AND value RLIKE r'{LONE_SURROGATE}'")
    ok = (value.isNotNull() & (F.col("_items") == 1) & parsed
          & ~F.coalesce(surrogate, F.lit(False)) & ~F.col("_overflow"))
    return F.coalesce(ok, F.lit(False))


def _hit(rule: Rule) -> str:
    return (f"named_struct('reason', {sql_string(rule.reason.value)},"
            f" 'rule', {sql_string(rule.id)})")


def _envelope_violation() -> str:
    """The record, envelope, event type and version rules in `validate_event`'s order."""
    env = _env_lookup
    event_type, version = env("event_type"), env("schema_version")
    json_rule, object_rule = RECORD_RULES
    branches = [("NOT _well_formed", json_rule),
                (f"_pt IS NULL AND NOT (value RLIKE r'{_STARTS_AN_OBJECT}')", object_rule)]
    branches += [(rule.violated_sql(env), rule) for rule in ENVELOPE_RULES]
    named = f"({event_type.type_ok}) AND length({event_type.value}) > 0"
    known = f"{event_type.value} IN ({sql_list(list(EVENT_TYPES))})"
    branches.append((f"{named} AND NOT ({known})", KNOWN_EVENT_TYPE_RULE))
    branches.append((f"{named} AND {known} AND ({version.type_ok})"
                     f" AND NOT (_key IN ({sql_list(_SUPPORTED_KEYS)}))", SUPPORTED_VERSION_RULE))
    return "CASE " + " ".join(f"WHEN {cond} THEN {_hit(rule)}" for cond, rule in branches) + " END"


def _payload_violation() -> str:
    """The payload rules of the record's (type, version), in that version's field order."""
    gates = []
    for name, etype in EVENT_TYPES.items():
        for v in sorted(etype.supported_versions):
            rules = payload_rules(name, v)
            if rules:
                inner = " ".join(f"WHEN {rule.violated_sql(_pay_lookup)} THEN {_hit(rule)}"
                                 for rule in rules)
                gates.append(f"WHEN _key = {sql_string(f'{name}#{v}')} THEN CASE {inner} END")
    return f"CASE WHEN {_env_lookup('payload').type_ok} THEN CASE {' '.join(gates)} END END"


def _field_mask() -> str:
    """SQL: a bitmask of the union payload fields the record's (type, version) defines, one
    CASE per record (bit i = `UNION_PAYLOAD_FIELDS[i]`); 0 for an unknown key."""
    masks: dict[str, int] = {}
    for i, spec in enumerate(UNION_PAYLOAD_FIELDS):
        for key in _PAYLOAD_KEYS[spec.name]:
            masks[key] = masks.get(key, 0) | (1 << i)
    branches = " ".join(f"WHEN {sql_string(k)} THEN {m}L" for k, m in sorted(masks.items()))
    return f"CASE _key {branches} ELSE 0L END"


def _payload_struct() -> str:
    """The union payload, typed; a field is filled only where the record's (type, version)
    defines it (an extra field of another type or version is ignored, as the contract says).
    Reads `_field_mask` (integer tests: cheaper than a key list per field)."""
    schema = union_payload_spark_schema()
    fields = ", ".join(
        f"{sql_string(s.name)}, CAST(CASE WHEN (_field_mask & {1 << i}L) <> 0"
        f" THEN {_pay_lookup(s.name).value} END AS {schema[s.name].dataType.simpleString()})"
        for i, s in enumerate(UNION_PAYLOAD_FIELDS))
    return f"CASE WHEN {_env_lookup('payload').type_ok} THEN named_struct({fields}) END"


def _result(df: DataFrame, carry: tuple[str, ...] = ()) -> DataFrame:
    env = _env_lookup
    schema = envelope_spark_schema()
    event_type, version = env("event_type").value, env("schema_version").value
    event_time_ms = env("event_time").value
    key = F.expr(f"{event_type} || '#' || CAST({version} AS STRING)")
    keyed = df.select("*", key.alias("_key"), _well_formed().alias("_well_formed"))
    checked = keyed.select("*", F.expr(_envelope_violation()).alias("_env_reject"),
                           F.expr(_field_mask()).alias("_field_mask"))
    checked = checked.select("*", F.expr(f"CASE WHEN _env_reject IS NULL THEN"
                                         f" {_payload_violation()} END").alias("_payload_reject"))
    typed = [F.expr(f"CAST({env(n).value} AS {schema[n].dataType.simpleString()})").alias(n)
             for n in ENVELOPE_COLUMNS[:10]]
    event_time = (f"CASE WHEN {event_time_ms} BETWEEN {-_MAX_EPOCH_MS} AND {_MAX_EPOCH_MS}"
                  f" THEN timestamp_millis({event_time_ms}) END")
    return checked.select(
        *BRONZE_COLUMNS, *typed,
        F.expr(event_time_ms).alias("event_time_ms"),
        F.expr(event_time).alias("event_time"),
        F.expr(_payload_struct()).alias("payload"),
        F.expr("coalesce(_env_reject, _payload_reject).reason").alias("reject_reason"),
        F.expr("coalesce(_env_reject, _payload_reject).rule").alias("reject_rule"),
        *carry,
    )


def parse_and_validate(df: DataFrame, carry: tuple[str, ...] = (), *,
                       plain_road: bool = True) -> DataFrame:
    """bronze.events -> one typed row per record with `reject_reason`/`reject_rule`.

    Needs `value` (the record as text where it is UTF-8; null otherwise, and then malformed)
    and the bronze coordinates; keeps `event_time` and `kafka_timestamp` so the skew, lateness
    and duplicate checks downstream can run on the result. `carry` names extra input columns
    to pass through unchanged (no `_type_` in their names). `plain_road=False` sends every
    record down the variant road (tests and benchmarks compare the two).
    """
    return (df.transform(_plain, plain_road).transform(_parse).transform(_leaves)
              .transform(_values).transform(_result, carry))


def flatten_payload(df: DataFrame) -> DataFrame:
    """The silver shape: payload fields as top-level `payload_<name>` columns."""
    fields = [F.col("payload").getField(s.name).alias(FLAT_PAYLOAD_PREFIX + s.name)
              for s in UNION_PAYLOAD_FIELDS]
    return df.select(*(c for c in df.columns if c != "payload"), *fields)

