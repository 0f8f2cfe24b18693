"""Spark's `parse_and_validate` and the Python contract validator reject the same records.

Both sides see the same raw bytes: the simulator's output with every kind of bad input, plus
hand-made records that probe where Spark's JSON reading is laxer than orjson's (trailing text,
lone surrogates, numbers beyond the double range, lenient syntax, JSON types). For each record
the stream's (reject_reason, reject_rule) must be the Python validator's first violation, or
both null when the record is valid. The residual differences the validator's docstring names
(an overflowing number in an unknown extra field, nesting depth) are not in the table.
"""

from __future__ import annotations

import orjson
import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession

from pipelines.bench.stages import bronze_batch
from pipelines.config import BadInputShares, SimulatorConfig
from pipelines.simulator import generate_events
from pipelines.transforms.validate import _plain, parse_and_validate
from quality.rules import rule_id
from schemas.contract import validate_raw

T0 = 1_700_000_000_000
GOOD = orjson.dumps({
    "event_id": "6f1c2a3e-8a4b-4c1d-9e2f-0a1b2c3d4e5f", "event_type": "av.quality",
    "schema_version": 1, "team": "client-web",
    "classroom_id": "cr-1", "lesson_id": "l-1", "user_id": "u-1", "role": "teacher",
    "platform": "web", "app_version": "1.0", "event_time": T0,
    "payload": {"direction": "up", "media": "audio", "bitrate_kbps": 64,
                "packet_loss_pct": 0.5, "jitter_ms": 3.0, "rtt_ms": 80, "freeze_count": 0,
                "mic_muted": False}})


def _with(old: bytes, new: bytes) -> bytes:
    assert old in GOOD, old
    return GOOD.replace(old, new, 1)


# GOOD with an app_version that is not also the text of a JSON number (GOOD's "1.0" is).
PLAIN = _with(b'"1.0"', b'"5.12.3"')

EDGE_CASES: dict[str, bytes | None] = {
    "good": GOOD,
    "leading and trailing whitespace": b" \n\t" + GOOD + b"\r\n ",
    # Trailing text after the record: Spark's parser stops after the first value.
    "trailing brace": GOOD + b"}",
    "trailing comma": GOOD + b",",
    "trailing member": GOOD + b',"x":1}',
    "trailing bracket": GOOD + b"]",
    "trailing bracket then array": GOOD + b"],[1",
    "trailing word": GOOD + b" x",
    "trailing record": GOOD + b" " + GOOD,
    "trailing record after comma": GOOD + b"," + GOOD,
    "two brackets": GOOD + b"]]",
    "record in an array": b"[" + GOOD + b"]",
    "truncated": GOOD[:-1],
    "empty": b"",
    "only whitespace": b"  ",
    "null value": None,
    "json null": b"null",
    "number": b"42",
    "string": b'"text"',
    "empty object": b"{}",
    "not utf-8": _with(b'"cr-1"', b'"cr-\xff1"'),
    # Strings: escapes and surrogates (orjson rejects a lone one).
    "escaped unicode": _with(b'"cr-1"', b'"cr-\\u00e91"'),
    "surrogate pair": _with(b'"cr-1"', b'"cr-\\ud83d\\ude001"'),
    "lone high surrogate": _with(b'"cr-1"', b'"cr-\\ud83d1"'),
    "lone low surrogate": _with(b'"cr-1"', b'"cr-\\ude001"'),
    "escaped backslash before u": _with(b'"cr-1"', b'"cr-\\\\ud83d1"'),
    "unknown escape": _with(b'"cr-1"', b'"cr-\\q1"'),
    "raw control char": _with(b'"cr-1"', b'"cr-\t1"'),
    # Lenient syntax Spark can be told to allow; orjson never does.
    "single quotes": _with(b'"cr-1"', b"'cr-1'"),
    "comment": _with(b'"role"', b'/* c */"role"'),
    "unquoted name": _with(b'"role"', b"role"),
    "leading zero": _with(b'"rtt_ms":80', b'"rtt_ms":080'),
    "nan": _with(b'"jitter_ms":3.0', b'"jitter_ms":NaN'),
    # Numbers and JSON types.
    "double overflow": _with(b'"jitter_ms":3.0', b'"jitter_ms":1e400'),
    "int overflow": _with(b'"rtt_ms":80', b'"rtt_ms":99999999999999999999999'),
    "int beyond int32": _with(b'"rtt_ms":80', b'"rtt_ms":4294967296'),
    "int as float": _with(b'"rtt_ms":80', b'"rtt_ms":80.0'),
    "int as string": _with(b'"rtt_ms":80', b'"rtt_ms":"80"'),
    "double as int": _with(b'"jitter_ms":3.0', b'"jitter_ms":3'),
    "double as bool": _with(b'"jitter_ms":3.0', b'"jitter_ms":true'),
    "string as number": _with(b'"cr-1"', b"5"),
    "bool as string": _with(b'"mic_muted":false', b'"mic_muted":"false"'),
    "event time huge": _with(str(T0).encode(), b"99999999999999999"),
    "payload an array": _with(GOOD[GOOD.index(b'{"direction"'):-1], b"[1]"),
    "payload null": _with(GOOD[GOOD.index(b'{"direction"'):-1], b"null"),
    "duplicate key, last wins": _with(b'"role":"teacher"', b'"role":"admin","role":"teacher"'),
    "duplicate payload key": _with(b'"rtt_ms":80', b'"rtt_ms":"x","rtt_ms":80'),
    "duplicate key in a payload array": _with(GOOD[GOOD.index(b'{"direction"'):-1],
                                              b'[{"a":1,"a":2}]'),
    "nested extra field": _with(b'"rtt_ms":80', b'"rtt_ms":80,"extra":{"a":[1,{"b":null}]}'),
    # Text that a number, a boolean or an object would also give in Spark's string reading.
    "version text": PLAIN,
    "version text, padded": b" " + PLAIN + b"\n",
    "string true": PLAIN.replace(b'"cr-1"', b'"true"'),
    "string object text": PLAIN.replace(b'"cr-1"', b'"{x"'),
    "string quoted": PLAIN.replace(b'"cr-1"', b'"\\"q"'),
    "string infinity": PLAIN.replace(b'"cr-1"', b'"Infinity"'),
    "string number text": PLAIN.replace(b'"cr-1"', b'"1.0E-7"'),
    "number as string field": PLAIN.replace(b'"cr-1"', b"1e400"),
    "bool as string field": PLAIN.replace(b'"cr-1"', b"true"),
    "double as nan string": PLAIN.replace(b'"jitter_ms":3.0', b'"jitter_ms":"NaN"'),
    "object as string field": PLAIN.replace(b'"cr-1"', b'{"a":1}'),
    "bracket in a string": PLAIN.replace(b'"cr-1"', b'"cr-]1"'),
    "another type's field, as text of a number": PLAIN.replace(b'"rtt_ms":80',
                                                              b'"rtt_ms":80,"courseware_id":5'),
    "another type's field, wrong type": PLAIN.replace(b'"rtt_ms":80', b'"rtt_ms":80,"page":"x"'),
    "another type's field, overflow": PLAIN.replace(b'"rtt_ms":80',
                                                   b'"rtt_ms":80,"lag_ms":1e400'),
    "plain, rule broken": PLAIN.replace(b'"rtt_ms":80', b'"rtt_ms":70000'),
    "plain, enum broken": PLAIN.replace(b'"role":"teacher"', b'"role":"admin"'),
    "plain, field missing": PLAIN.replace(b'"user_id":"u-1",', b""),
    "plain, condition unmet": PLAIN.replace(b',"mic_muted":false', b""),
    "plain, unknown version": PLAIN.replace(b'"schema_version":1', b'"schema_version":9'),
}


def _simulated() -> list[bytes | None]:
    shares = BadInputShares(malformed_json=0.03, missing_field=0.03, wrong_type=0.03,
                            unknown_event_type=0.03, unknown_schema_version=0.03,
                            unnatural_timestamp=0.01, late=0.01, duplicate=0.01)
    config = SimulatorConfig(help_share=0.5, bad_input=shares)
    return [e.value for e in generate_events(config, 8, 60, seed=11, start_ms=T0)]


def _expected(raw: bytes | None) -> tuple[str | None, str | None]:
    violations = validate_raw(raw)
    if not violations:
        return None, None
    first = violations[0]
    return first.reason.value, rule_id(first.field, first.rule)


@pytest.fixture(scope="module")
def bronze(spark: SparkSession) -> DataFrame:
    """The edge cases, then the simulated records, as bronze rows (offset = index)."""
    records = list(EDGE_CASES.values()) + _simulated()
    n = len(records)
    return spark.createDataFrame(bronze_batch(["classroom.av"] * n, [0] * n, list(range(n)),
                                              [T0] * n, [0] * n, [b"k"] * n, records))


@pytest.fixture(scope="module")
def verdicts(bronze: DataFrame) -> dict[int, tuple[str | None, str | None]]:
    """Record index -> the stream's (reject_reason, reject_rule)."""
    out = bronze.transform(parse_and_validate).select("offset", "reject_reason", "reject_rule")
    return {r.offset: (r.reject_reason, r.reject_rule) for r in out.collect()}


@pytest.mark.parametrize("name", list(EDGE_CASES))
def test_edge_case_agrees_with_the_python_validator(
        name: str, verdicts: dict[int, tuple[str | None, str | None]]) -> None:
    index = list(EDGE_CASES).index(name)
    assert verdicts[index] == _expected(EDGE_CASES[name])


def test_simulated_records_agree_with_the_python_validator(
        verdicts: dict[int, tuple[str | None, str | None]]) -> None:
    simulated = _simulated()
    offset = len(EDGE_CASES)
    wrong = {i: (verdicts[offset + i], _expected(raw)) for i, raw in enumerate(simulated)
             if verdicts[offset + i] != _expected(raw)}
    assert not wrong, f"{len(wrong)} of {len(simulated)} differ, e.g. {list(wrong.items())[:3]}"
    reasons = {_expected(raw)[0] for raw in simulated}
    assert {"malformed_json", "missing_field", "bad_type", "unknown_event_type",
            "unknown_schema_version", None} <= reasons


def test_the_good_record_is_valid() -> None:
    """Every edge case is a one-place change of GOOD, so GOOD itself must pass."""
    assert validate_raw(GOOD) == []


def test_the_plain_road_gives_the_variant_roads_rows(bronze: DataFrame) -> None:
    """Every output column (typed envelope, payload struct, verdict) of every record is the
    same whether plain records take the one-parse road or all take the variant road."""
    plain = bronze.transform(parse_and_validate).orderBy("offset")
    variant = bronze.transform(parse_and_validate, plain_road=False).orderBy("offset")
    assert_df_equality(plain, variant)


def test_plain_records_take_the_plain_road(bronze: DataFrame) -> None:
    """The one-parse road takes the ordinary records and leaves every doubtful one to the
    variant road (text a non-string would also give, `]`, escapes, non-finite doubles)."""
    names = list(EDGE_CASES)
    plain = {r.offset for r in
             bronze.transform(_plain).where("_pt IS NOT NULL").select("offset").collect()}
    assert {names[i] for i in plain if i < len(names)} == {
        "version text", "version text, padded", "string infinity", "empty object",
        "plain, rule broken", "plain, enum broken", "plain, field missing",
        "plain, condition unmet", "plain, unknown version"}
    simulated = len(_simulated())
    assert len([i for i in plain if i >= len(names)]) > 0.8 * simulated


def test_a_filter_right_after_the_validation(
        bronze: DataFrame, verdicts: dict[int, tuple[str | None, str | None]]) -> None:
    """The optimizer pushes a filter down through the validation's projections, inlining each
    column it meets; the plan must stay small enough to run (a road flag read in every
    field's expression once made this filter's plan outgrow a 2 GB driver heap)."""
    # Repartitioned: over a local relation Spark would evaluate the plan while optimizing.
    rejected = (bronze.repartition(2).transform(parse_and_validate)
                .where("reject_reason IS NOT NULL"))
    assert rejected.count() == sum(1 for reason, _ in verdicts.values() if reason is not None)
