"""Great Expectations 1.x suites derived from the contract's rules, for batch validation.

The streaming job checks records with SQL built from `quality.rules`; this module turns the
same rules into GE expectations, so nobody keeps a second list. Each expectation's `meta`
carries the rule id the streaming side writes to `reject_rule`, so a failed expectation and a
reject name the same rule (tests/test_quality_agreement.py holds the two to that).

GE works on a typed, flattened frame (`typed_frame`): envelope columns by contract name
(`event_time` as epoch ms), payload fields as `payload_<name>`, `clock_skew_ms` (client clock
minus broker clock) and a `record_id`. Rules that only exist before typing (JSON syntax, JSON
types, unknown event type, `payload` present) have no form there; `quality.rules.flat_checks`
decides which rules are covered and this module follows it.

Payload rules are gated to rows of their event type and schema versions (a GE `row_condition`),
as the stream only checks a payload once it knows the (type, version) of the record.
GE runs in an ephemeral context: no files, no database, no network.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import great_expectations as gx
import great_expectations.expectations as gxe
from great_expectations.core.expectation_suite import ExpectationSuite
from great_expectations.expectations.row_conditions import PassThroughCondition
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import TimestampType

from quality.rules import (
    FLAT_PAYLOAD_PREFIX,
    FORMAT_REGEX,
    PAYLOAD_PREFIX,
    Kind,
    Rule,
    flat_checks,
    flat_column,
    sql_ident,
    sql_list,
    sql_string,
)
from schemas.contract import ENVELOPE_FIELDS, EVENT_TYPES, EVENT_TYPES_OF_TOPIC, payload_fields

if TYPE_CHECKING:
    from pipelines.config import Settings

ID_COLUMN = "record_id"
SKEW_COLUMN = "clock_skew_ms"
# The rule ids `pipelines.transforms.silver.flag_unnatural_timestamps` writes; the agreement
# test fails if the two drift apart.
AHEAD_RULE = "event_time:ahead_of_broker"
BEHIND_RULE = "event_time:too_far_behind_broker"


@dataclass(frozen=True, slots=True)
class ClockSkew:
    """Allowed client-vs-broker clock difference (`silver.max_clock_ahead_s` / `_behind_s`)."""

    max_ahead_s: float
    max_behind_s: float


# ------------------------------------------------------------------------------------ suites
def _gate(rule: Rule, event_type: str) -> str | None:
    """Row filter of a type-specific rule: payload rules hold for rows of their event type and
    schema versions, the version rule for rows of its event type; envelope rules for all."""
    if rule.kind is Kind.SUPPORTED_VERSION:
        return f"event_type = {sql_string(event_type)}"
    if not rule.is_payload:
        return None
    return (f"event_type = {sql_string(event_type)}"
            f" AND schema_version IN ({sql_list(list(rule.versions))})")


def _conditions(rule: Rule) -> str:
    """`required_when` as SQL over the flat columns of the sibling fields."""
    assert rule.spec is not None
    prefix = PAYLOAD_PREFIX if rule.is_payload else ""
    return " AND ".join(f"{sql_ident(flat_column(prefix + c.field))} IN ({sql_list(c.values)})"
                        for c in rule.spec.required_when)


def _meta(rule_id: str, field_name: str, kind: str) -> dict[str, Any]:
    return {"rule": rule_id, "field": field_name, "kind": kind}


def rule_expectation(rule: Rule, event_type: str) -> gxe.Expectation:
    """The GE expectation that fails on exactly the rows where `rule` is broken."""
    col, spec = rule.column, rule.spec
    filters = [f for f in (_gate(rule, event_type),) if f]
    kw: dict[str, Any] = {"column": col}
    if rule.kind is Kind.REQUIRED:
        cls: type[gxe.Expectation] = gxe.ExpectColumnValuesToNotBeNull
    elif rule.kind is Kind.CONDITIONAL_REQUIRED:
        cls = gxe.ExpectColumnValuesToNotBeNull
        filters.append(_conditions(rule))
    elif rule.kind is Kind.ENUM:
        assert spec is not None and spec.allowed is not None
        cls, kw["value_set"] = gxe.ExpectColumnValuesToBeInSet, list(spec.allowed)
    elif rule.kind is Kind.RANGE:
        assert spec is not None
        cls = gxe.ExpectColumnValuesToBeBetween
        kw.update(min_value=spec.min, max_value=spec.max)
    elif rule.kind is Kind.FORMAT:
        assert spec is not None
        cls, kw["regex"] = gxe.ExpectColumnValuesToMatchRegex, FORMAT_REGEX[spec.format or ""]
    elif rule.kind is Kind.NONEMPTY:
        cls, kw["min_value"] = gxe.ExpectColumnValueLengthsToBeBetween, 1
    elif rule.kind is Kind.SUPPORTED_VERSION:
        supported = sorted(EVENT_TYPES[event_type].supported_versions)
        cls, kw["value_set"] = gxe.ExpectColumnValuesToBeInSet, supported
    elif rule.kind is Kind.UNIQUE:
        cls = gxe.ExpectColumnValuesToBeUnique
    else:
        raise ValueError(f"{rule.id}: no GE expectation for a {rule.kind} rule")
    if filters:
        kw["row_condition"] = PassThroughCondition(
            pass_through_filter=" AND ".join(f"({f})" for f in filters))
    return cls(**kw, meta=_meta(rule.id, rule.field, rule.kind.value))


def skew_expectations(skew: ClockSkew) -> list[gxe.Expectation]:
    """The clock rules as bounds on `clock_skew_ms`, one expectation per rule id."""
    return [
        gxe.ExpectColumnValuesToBeBetween(column=SKEW_COLUMN, max_value=skew.max_ahead_s * 1000,
                                          meta=_meta(AHEAD_RULE, "event_time", "clock_skew")),
        gxe.ExpectColumnValuesToBeBetween(column=SKEW_COLUMN, min_value=-skew.max_behind_s * 1000,
                                          meta=_meta(BEHIND_RULE, "event_time", "clock_skew")),
    ]


def covered_rules(event_type: str) -> tuple[Rule, ...]:
    """The contract rules a typed frame can express, in the contract's order."""
    return tuple(rule for rule, _ in flat_checks(event_type))


def _types(event_types: str | Sequence[str]) -> tuple[str, ...]:
    return (event_types,) if isinstance(event_types, str) else tuple(event_types)


def build_suite(event_types: str | Sequence[str],
                skew: ClockSkew | None = None) -> ExpectationSuite:
    """The suite of one event type, or of several sharing a table (envelope rules once, each
    type's own rules gated to its rows): one GE run per table, not per type. Clock rules are
    added when `skew` is set."""
    types = _types(event_types)
    expectations, seen = [], set()
    for event_type in types:
        for rule in covered_rules(event_type):
            if rule.event_type is None and rule.kind is not Kind.SUPPORTED_VERSION:
                if rule.id in seen:
                    continue  # an envelope rule, the same for every type
                seen.add(rule.id)
            expectations.append(rule_expectation(rule, event_type))
    expectations += skew_expectations(skew) if skew is not None else []
    _context()  # a suite needs a current project, even one never saved
    return ExpectationSuite(name="contract." + "+".join(types), expectations=expectations,
                            meta={"event_types": list(types), "source": "quality.rules"})


def rule_order(event_type: str) -> dict[str, int]:
    """Rule id -> position in the stream's check order (the first broken one is recorded)."""
    ids = [rule.id for rule in covered_rules(event_type)] + [AHEAD_RULE, BEHIND_RULE]
    return {rule_id: i for i, rule_id in enumerate(ids)}


# ------------------------------------------------------------------------------------ frames
def typed_frame(df: DataFrame, event_types: str | Sequence[str]) -> DataFrame:
    """The frame GE validates, from any of the project's typed shapes.

    Accepts `parse_and_validate` output (a `payload` struct), `flatten_payload` output
    (`payload_<name>`) or a silver table (bare payload names, `event_time` a timestamp).
    """
    cols = set(df.columns)
    if "event_time_ms" in cols:
        event_time = F.col("event_time_ms")
    elif isinstance(df.schema["event_time"].dataType, TimestampType):
        event_time = F.unix_millis("event_time")
    else:
        event_time = F.col("event_time")
    out = [event_time.alias("event_time") if spec.name == "event_time"
           else F.col(spec.name) if spec.name in cols
           else F.lit(None).cast("string").alias(spec.name)
           for spec in ENVELOPE_FIELDS if spec.type != "object"]
    for name in (spec.name for spec in payload_fields(_types(event_types))):
        flat = FLAT_PAYLOAD_PREFIX + name
        if "payload" in cols:
            src = F.col("payload").getField(name)
        elif flat in cols:
            src = F.col(flat)
        elif name in cols:
            src = F.col(name)
        else:
            src = F.lit(None)
        out.append(src.alias(flat))
    if ID_COLUMN in cols:
        out.append(F.col(ID_COLUMN))
    elif {"topic", "partition", "offset"} <= cols:
        out.append(F.concat_ws(":", "topic", "partition", "offset").alias(ID_COLUMN))
    else:
        out.append(F.col("event_id").alias(ID_COLUMN))
    skew = (event_time - F.unix_millis("kafka_timestamp") if "kafka_timestamp" in cols
            else F.lit(None).cast("long"))
    return df.select(*out, skew.alias(SKEW_COLUMN))


# ------------------------------------------------------------------------------------ running
_CONTEXT: Any = None


def _context() -> Any:
    """One ephemeral GE context per process (in memory; nothing written, nothing sent)."""
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = gx.get_context(mode="ephemeral")
    return _CONTEXT


def run_suite(df: DataFrame, suite: ExpectationSuite,
              id_column: str = ID_COLUMN) -> tuple[dict[str, set[str]], dict[str, int]]:
    """Validate `df` (a `typed_frame`) against `suite`.

    Returns (record id -> rule ids that flagged it, rule id -> unexpected count). An
    expectation that errors raises: a silent error would read as "nothing flagged".
    """
    context = _context()
    source = context.data_sources.add_or_update_spark("contract")
    asset = source.add_dataframe_asset(f"frame-{id(df)}")
    batch_def = asset.add_batch_definition_whole_dataframe("whole")
    # Materialised with its lineage cut: GE runs a few queries per expectation, and each would
    # otherwise re-plan the whole upstream plan (parse_and_validate's is thousands of nodes).
    frame = df.localCheckpoint(eager=True)
    try:
        batch = batch_def.get_batch(batch_parameters={"dataframe": frame})
        result = batch.validate(suite, result_format={
            "result_format": "COMPLETE", "unexpected_index_column_names": [id_column],
            "return_unexpected_index_query": False})
    finally:
        frame.unpersist()
        source.delete_asset(asset.name)
    flagged: dict[str, set[str]] = defaultdict(set)
    counts: dict[str, int] = {}
    for res in result.results:
        rule_id = res.expectation_config.meta["rule"]
        if res.exception_info.get("raised_exception"):
            raise RuntimeError(f"GE expectation for {rule_id} failed to run: "
                               f"{res.exception_info.get('exception_message')}")
        rows = res.result.get("unexpected_index_list") or []
        counts[rule_id] = int(res.result.get("unexpected_count") or 0)
        for row in rows:
            flagged[str(row[id_column])].add(rule_id)
    return dict(flagged), counts


@dataclass
class QualityReport:
    """What one suite found in one frame; `failed` is rule id -> records that broke it."""

    event_types: tuple[str, ...]
    rows: int
    failed: dict[str, int] = field(default_factory=dict)
    flagged: dict[str, set[str]] = field(default_factory=dict)

    @property
    def success(self) -> bool:
        return not any(self.failed.values())


def validate_table(spark: SparkSession, df: DataFrame, event_types: str | Sequence[str],
                   skew: ClockSkew | None = None) -> QualityReport:
    """Batch entry point (Airflow task, CLI): the rows of `event_types` in `df` against their
    suite. Rows naming no event type are kept (they break `event_type:required`)."""
    if df.sparkSession is not spark:
        raise ValueError("df belongs to another Spark session than the one GE should use")
    types = _types(event_types)
    rows = df.where(F.col("event_type").isin(list(types)) | F.col("event_type").isNull())
    typed = typed_frame(rows, types).localCheckpoint(eager=True)
    flagged, counts = run_suite(typed, build_suite(types, skew))
    return QualityReport(types, typed.count(), counts, flagged)


def check_table(spark: SparkSession, df: DataFrame, topic: str,
                skew: ClockSkew | None = None) -> QualityReport:
    """A silver table (one per topic) against the suite of every event type it holds."""
    return validate_table(spark, df, EVENT_TYPES_OF_TOPIC[topic], skew)


def report_rows(reports: Sequence[QualityReport]) -> list[Mapping[str, object]]:
    """Flat rows (event type, rule, failed records) for printing or writing a table."""
    return [{"event_types": ",".join(r.event_types), "rule": rule_id, "failed": n,
             "rows": r.rows}
            for r in reports for rule_id, n in r.failed.items() if n]


def check_silver_table(settings: Settings, table: str) -> QualityReport:
    """`lakehouse quality check --table silver.av_quality` / an Airflow task: read the Delta
    table, validate it with its topic's suite and the configured clock tolerance."""
    from pipelines.io.delta import delta_writer
    from pipelines.spark import build_spark
    from pipelines.transforms.silver import SILVER_TABLES

    topics = {name: topic for topic, name in SILVER_TABLES.items()}
    if table not in topics:
        raise ValueError(f"{table!r} is not a silver table; one of {sorted(topics)}")
    spark = build_spark(settings, app_name=f"quality-check-{table}")
    df = delta_writer(settings).read(spark, settings.table_path(table))
    skew = ClockSkew(settings.silver.max_clock_ahead_s, settings.silver.max_clock_behind_s)
    return check_table(spark, df, topics[table], skew)
