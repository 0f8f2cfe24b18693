"""Resolver transforms: Kafka rows -> per-classroom input rows -> the playbook state machine.

    Kafka (tags topic + the five classroom topics)
      -> kafka_to_bronze -> resolver_candidates    tag records and records that can matter
      -> parse_and_validate (validate.py, shared with silver and help)
      -> resolver_rows                              one row per tag, fired signal (the
                                                    help job's `signal_conditions`), liveness
                                                    (signal.heartbeat), diagnostics reply
      -> run_playbooks: groupBy(classroom_id).transformWithState(ResolverProcessor)
         = one row per transition (pipelines/transforms/playbook.py decides them)

Why per classroom, not per help_id: a tag and its classroom's evidence must meet in one group,
and evidence carries no help_id. Why liveness from heartbeats only: "no bad signal" means
nothing from a client that stopped sending, and every client sends a heartbeat every 2 s; the
other healthy records would triple the rows validated and handed to Python for no more
information.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
from pyspark.sql import DataFrame, Row
from pyspark.sql import functions as F
from pyspark.sql.streaming import StatefulProcessor, StatefulProcessorHandle

from pipelines.config import HelpRulesConfig, ResolverConfig
from pipelines.transforms.help import ROLES, Transform, signal_conditions
from pipelines.transforms.playbook import (
    FINAL_STATES,
    PAGE_TURN,
    Evidence,
    advance,
    open_case,
    wake_at,
)

TAG, ALIVE, DIAGNOSTICS = "tag", "alive", "diagnostics"
HEARTBEAT, DIAGNOSTICS_EVENT = "signal.heartbeat", "help.diagnostics"
PAGE_TURN_EVENT = "wb.page_turn"  # proves a whiteboard renders (ConfirmBy.PAGE_RENDERED)
INPUT_SCHEMA = ("classroom_id string, kind string, signal string, role string, "
                "kafka_time_ms long, help_id string, finding string, body string")
TRANSITION_FIELDS = (
    ("help_id", "string"), ("classroom_id", "string"), ("lesson_id", "string"),
    ("primary_tag", "string"), ("tags", "array<string>"), ("state", "string"), ("seq", "int"),
    ("action", "string"), ("action_id", "string"), ("attempt", "int"),
    ("target_role", "string"), ("detail", "string"), ("transition_ms", "long"),
    ("request_ms", "long"), ("message", "string"))
TRANSITION_COLUMNS = [n for n, _ in TRANSITION_FIELDS]
TRANSITION_SCHEMA = ", ".join(f"{n} {t}" for n, t in TRANSITION_FIELDS)
_TRANSITION = Row(*TRANSITION_COLUMNS)

_PROBE_FIELDS = {"direction": "string", "media": "string", "packet_loss_pct": "double",
                 "rtt_ms": "int", "freeze_count": "int", "mic_muted": "boolean",
                 "step": "string"}


def _has_finding() -> bool:
    """Whether the contract knows help.diagnostics' `finding` (the simulator side adds it)."""
    from schemas.contract import UNION_PAYLOAD_FIELDS

    return any(f.name == "finding" for f in UNION_PAYLOAD_FIELDS)


def resolver_candidates(rules: HelpRulesConfig, tags_topic: str) -> Transform:
    """Bronze rows -> tag records and the records that could fire a signal, beat a heart or
    answer a diagnostics request, before the (costly) contract validation.

    A cheap `from_json` of the few fields the conditions read decides; a superset of what
    resolver_rows keeps, so validation still has the last word.
    """
    probe_schema = ("event_type string, payload struct<"
                    + ", ".join(f"{n}: {t}" for n, t in _PROBE_FIELDS.items()) + ">")

    def apply(df: DataFrame) -> DataFrame:
        probe = F.from_json(F.col("value"), probe_schema)
        etype = probe["event_type"]
        keep = ((F.col("topic") == tags_topic)
                | etype.isin(HEARTBEAT, DIAGNOSTICS_EVENT, PAGE_TURN_EVENT))
        for fired in signal_conditions(rules, etype, probe["payload"]).values():
            keep = keep | fired
        return df.where(F.coalesce(keep, F.lit(False)))

    return apply


def resolver_rows(rules: HelpRulesConfig, tags_topic: str) -> Transform:
    """Validated rows (and tag records) -> the processor's input (INPUT_SCHEMA).

    One projection and one explode (no union: the Kafka source is read once). A rejected
    record gives nothing; a tag record passes whole as `body` (the processor parses it).
    """

    def apply(df: DataFrame) -> DataFrame:
        p = F.col("payload")
        is_tag = F.col("topic") == tags_topic
        valid = F.col("reject_reason").isNull() & F.col("role").isin(*ROLES)
        etype = F.col("event_type")
        fired = F.filter(F.array(*[F.when(c, F.lit(n))
                                    for n, c in signal_conditions(rules).items()]),
                         lambda s: s.isNotNull())
        none = F.array().cast("array<string>")
        kinds = (F.when(is_tag, F.array(F.lit(TAG))).when(~valid, none)
                 .when(etype == DIAGNOSTICS_EVENT, F.array(F.lit(DIAGNOSTICS)))
                 .when(F.size(fired) > 0, fired)
                 .when(etype == PAGE_TURN_EVENT, F.array(F.lit(PAGE_TURN)))
                 .when(etype == HEARTBEAT, F.array(F.lit(ALIVE))).otherwise(none))
        finding = p["finding"] if _has_finding() else F.lit(None).cast("string")
        kafka_ms = (F.unix_micros(F.col("kafka_timestamp")) / 1000).cast("long")
        rows = df.select(
            F.when(is_tag, F.get_json_object("value", "$.classroom_id"))
             .otherwise(F.col("classroom_id")).alias("classroom_id"),
            F.explode(kinds).alias("kind"),
            F.col("role"), kafka_ms.alias("kafka_time_ms"),
            F.when(is_tag, F.get_json_object("value", "$.help_id"))
             .otherwise(p["help_id"]).alias("help_id"),
            finding.alias("finding"), F.when(is_tag, F.col("value")).alias("body"))
        return rows.select(
            "classroom_id", "kind",
            F.when(~F.col("kind").isin(TAG, ALIVE, DIAGNOSTICS), F.col("kind")).alias("signal"),
            F.when(F.col("kind") != TAG, F.col("role")).alias("role"),
            "kafka_time_ms", "help_id", "finding", "body")

    return apply


def _transition_rows(transitions: list[dict[str, Any]]) -> Iterator[Row]:
    for t in transitions:
        yield _TRANSITION(*(t[c] for c in TRANSITION_COLUMNS))


class ResolverProcessor(StatefulProcessor):
    """Per classroom: open cases (map help_id -> case JSON), evidence (value, TTL), finished
    help_ids (map, TTL: a redelivered tag is not a new case), and processing-time timers.

    State stays bounded: a final case leaves the map at once; evidence of a classroom with no
    open case is dropped once its newest fired signal is `evidence_ttl_s` old (and expires by
    TTL when the classroom goes quiet); finished ids expire after `done_ttl_s`.
    """

    def __init__(self, cfg: ResolverConfig) -> None:
        self.cfg = cfg

    def init(self, handle: StatefulProcessorHandle) -> None:
        self.handle = handle
        self.cases = handle.getMapState("cases", "help_id string", "body string")
        self.evidence = handle.getValueState("evidence", "body string",
                                             int(self.cfg.evidence_ttl_s * 1000))
        self.done = handle.getMapState("done", "help_id string", "at long",
                                       int(self.cfg.done_ttl_s * 1000))

    def handleInputRows(self, key: Any, rows: Iterator[Row],
                        timerValues: Any) -> Iterator[Row]:
        if key[0] is None:
            return
        now = timerValues.getCurrentProcessingTimeInMs()
        inputs = list(rows)
        has_cases = self.cases.exists()
        only_alive = all(row.kind == ALIVE for row in inputs)
        if only_alive and not has_cases and not self.evidence.exists():
            return  # a healthy classroom nobody asked about: no state at all
        ev = self._load_evidence()
        tags = []
        for row in inputs:
            at = int(row.kafka_time_ms)
            if row.kind == TAG:
                tags.append(orjson.loads(row.body))
            elif row.kind == DIAGNOSTICS:
                ev.see(None, row.role, at)
                if row.help_id and row.finding:
                    ev.findings[row.help_id] = [row.finding, at]
            else:
                ev.see(row.signal if row.kind != ALIVE else None, row.role, at)
        cases = self._load_cases() if has_cases else {}
        out: list[dict[str, Any]] = []
        for tag in tags:
            help_id = tag.get("help_id")
            if not help_id or help_id in cases or self.done.containsKey((help_id,)):
                continue  # at-least-once delivery of tags: one case per help_id
            tag.setdefault("classroom_id", key[0])
            cases[help_id], new = open_case(tag, now, self.cfg)
            out.append(new)
        out.extend(self._advance(cases, ev, now))
        self._save_evidence(ev, cases)
        yield from _transition_rows(out)

    def handleExpiredTimer(self, key: Any, timerValues: Any,
                           expiredTimerInfo: Any) -> Iterator[Row]:
        if not self.cases.exists():
            return
        now = timerValues.getCurrentProcessingTimeInMs()
        cases = self._load_cases()
        ev = self._load_evidence()
        out = self._advance(cases, ev, now)
        self._save_evidence(ev, cases)
        yield from _transition_rows(out)

    def _advance(self, cases: dict[str, dict[str, Any]], ev: Evidence, now: int
                 ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        timers = {t for t in self.handle.listTimers() if t > now}  # expired ones are gone
        wanted: set[int] = set()
        for help_id, case in cases.items():
            out.extend(advance(case, ev, now, self.cfg))
            if case["state"] in FINAL_STATES:
                self.cases.removeKey((help_id,))
                self.done.updateValue((help_id,), (now,))
                ev.findings.pop(help_id, None)
                continue
            self.cases.updateValue((help_id,), (orjson.dumps(case).decode(),))
            at = wake_at(case)
            if at is not None:
                wanted.add(at)
        for at in timers - wanted:
            self.handle.deleteTimer(at)
        for at in wanted - timers:
            self.handle.registerTimer(at)
        for help_id in [h for h, c in cases.items() if c["state"] in FINAL_STATES]:
            del cases[help_id]
        return out

    def _load_cases(self) -> dict[str, dict[str, Any]]:
        return {k[0]: orjson.loads(v[0]) for k, v in self.cases.iterator()}

    def _load_evidence(self) -> Evidence:
        stored = self.evidence.get() if self.evidence.exists() else None
        return Evidence.loads(stored[0] if stored else None)

    def _save_evidence(self, ev: Evidence, cases: dict[str, dict[str, Any]]) -> None:
        """Keep evidence while a case is open or a signal fired within evidence_ttl_s."""
        newest = max([*ev.fired.values(), *ev.alive.values()], default=0)
        horizon = newest - int(self.cfg.evidence_ttl_s * 1000)
        ev.findings = {h: f for h, f in ev.findings.items() if h in cases or f[1] >= horizon}
        if not cases and max(ev.fired.values(), default=0) < horizon and not ev.findings:
            self.evidence.clear()
        else:
            self.evidence.update((ev.dumps(),))

    def close(self) -> None:
        pass


def run_playbooks(cfg: ResolverConfig) -> Transform:
    """Processor input rows -> one row per case transition (TRANSITION_SCHEMA)."""
    processor = ResolverProcessor(cfg)

    def apply(df: DataFrame) -> DataFrame:
        return (df.groupBy("classroom_id")
                  .transformWithState(processor, TRANSITION_SCHEMA, "Append", "ProcessingTime"))

    return apply


def resolver_inputs(rules: HelpRulesConfig, tags_topic: str) -> Transform:
    """Bronze rows -> processor input: candidates, the shared validation, rows."""
    from pipelines.transforms.validate import parse_and_validate

    def apply(df: DataFrame) -> DataFrame:
        return (df.transform(resolver_candidates(rules, tags_topic))
                  .transform(parse_and_validate)
                  .transform(resolver_rows(rules, tags_topic)))

    return apply
