"""Resolver transforms: Kafka rows -> per-classroom input rows -> the playbook state machine.

    Kafka (tags topic + the five classroom topics)
      -> kafka_to_bronze -> resolver_candidates    tag records and records that can matter
      -> parse_and_validate (validate.py, shared with silver and help)
      -> resolver_rows                              one row per tag, fired signal (the
                                                    help job's `signal_conditions`), liveness
                                                    (signal.heartbeat), diagnostics reply
      -> run_playbooks: groupBy(a hash bucket of classroom_id)
                        .transformWithState(ResolverProcessor)
         = one row per transition (pipelines/transforms/playbook.py decides them)

Why by classroom, not by help_id: a tag and its classroom's evidence must meet in one group,
and evidence carries no help_id; several classrooms share a group (ResolverProcessor says
why). Why liveness from heartbeats only: "no bad signal" means
nothing from a client that stopped sending, and every client sends a heartbeat every 2 s; the
other healthy records would triple the rows validated and handed to Python for no more
information.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from pyspark.sql import Column, DataFrame, Row
from pyspark.sql import functions as F
from pyspark.sql.streaming import StatefulProcessor, StatefulProcessorHandle

from pipelines.config import HelpRulesConfig, ResolverConfig
from pipelines.transforms.help import (
    ALIVE,
    CANDIDATE_PROBE,
    DIAGNOSTICS,
    DIAGNOSTICS_EVENT,
    HEARTBEAT,
    LIVENESS,
    PAGE_TURN_EVENT,
    RELAY_FIELDS,
    ROLES,
    Transform,
    candidate_probe_schema,
    classroom_bucket,
    has_finding,
    liveness,
    liveness_kind,
    signal_conditions,
    with_json_probe,
)
from pipelines.transforms.playbook import (
    FINAL_STATES,
    PAGE_TURN,
    Evidence,
    advance,
    open_case,
    wake_at,
)

TAG = "tag"
# A record of the tags or relay topic that gives no case or evidence (it does not parse, or
# lacks help_id / classroom_id): the processor passes it on as a REJECTED row, which the sink
# writes to the reject ledger instead of dropping it.
UNREADABLE = "unreadable"
REJECTED = "REJECTED"
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


def resolver_candidates(rules: HelpRulesConfig, tags_topic: str) -> Transform:
    """Bronze rows -> tag records and the records that could fire a signal, beat a heart or
    answer a diagnostics request, before the (costly) contract validation.

    A cheap `from_json` of the few fields the conditions read decides; a superset of what
    resolver_rows keeps, so validation still has the last word on signals, tags and
    diagnostics. Heartbeats and page turns get a `_liveness` struct instead, with `value`
    nulled so the validation does no work on them (see resolver_inputs); others get null.
    The help job's relay makes the same choice (`help_candidates(..., relay=True)`).
    """
    probe_schema = candidate_probe_schema("classroom_id", "role")

    def apply(df: DataFrame) -> DataFrame:
        probe = F.col(CANDIDATE_PROBE)
        etype = probe["event_type"]
        keep = ((F.col("topic") == tags_topic)
                | etype.isin(HEARTBEAT, DIAGNOSTICS_EVENT, PAGE_TURN_EVENT))
        for fired in signal_conditions(rules, etype, probe["payload"]).values():
            keep = keep | fired
        # No signal condition reads a heartbeat or a page turn, so these fire none.
        live = liveness(probe, F.when(F.col("topic") != tags_topic, liveness_kind(etype)))
        return (df.transform(with_json_probe(probe_schema, CANDIDATE_PROBE))
                  .where(F.coalesce(keep, F.lit(False)))
                  .select(*df.columns, live.alias(LIVENESS))
                  .withColumn("value", F.when(F.col(LIVENESS).isNull(), F.col("value"))))

    return apply


def resolver_rows(rules: HelpRulesConfig, tags_topic: str) -> Transform:
    """Validated rows (and tag records, and `_liveness` rows) -> the processor's input
    (INPUT_SCHEMA).

    One projection and one explode (no union: the Kafka source is read once). A rejected
    record gives nothing; a tag record passes whole as `body` (the processor parses it).
    """

    def apply(df: DataFrame) -> DataFrame:
        p = F.col("payload")
        tag_help, tag_room, unreadable = _tag_ids()
        is_tag = F.col("topic") == tags_topic
        bad_tag = is_tag & unreadable
        live = F.col(LIVENESS)
        valid = F.col("reject_reason").isNull() & F.col("role").isin(*ROLES)
        etype = F.col("event_type")
        fired = F.filter(F.array(*[F.when(c, F.lit(n))
                                    for n, c in signal_conditions(rules).items()]),
                         lambda s: s.isNotNull())
        none = F.array().cast("array<string>")
        kinds = (F.when(bad_tag, F.array(F.lit(UNREADABLE))).when(is_tag, F.array(F.lit(TAG)))
                 .when(live.isNotNull(), F.array(live["kind"])).when(~valid, none)
                 .when(etype == DIAGNOSTICS_EVENT, F.array(F.lit(DIAGNOSTICS)))
                 .when(F.size(fired) > 0, fired)
                 .when(etype == PAGE_TURN_EVENT, F.array(F.lit(PAGE_TURN)))
                 .when(etype == HEARTBEAT, F.array(F.lit(ALIVE))).otherwise(none))
        finding = p["finding"] if has_finding() else F.lit(None).cast("string")
        return df.select(
            F.when(is_tag, tag_room)
             .otherwise(F.coalesce(live["classroom_id"], F.col("classroom_id")))
             .alias("classroom_id"),
            F.explode(kinds).alias("kind"),
            F.coalesce(live["role"], F.col("role")).alias("role"),
            _kafka_ms().alias("kafka_time_ms"),
            F.when(is_tag, tag_help).otherwise(p["help_id"]).alias("help_id"),
            finding.alias("finding"),
            F.when(bad_tag, _unreadable_tag(tag_help)).when(is_tag, F.col("value")).alias("body"),
        ).transform(_processor_input)

    return apply


def _tag_ids() -> tuple[Column, Column, Column]:
    """A tag record's help_id and classroom_id (its `value` read as JSON), and whether it
    lacks either (not JSON, or a field missing): then it is UNREADABLE."""
    help_id = F.get_json_object("value", "$.help_id")
    classroom = F.get_json_object("value", "$.classroom_id")
    return help_id, classroom, help_id.isNull() | classroom.isNull()


def _rejected_record(reason: Column, rule: Column) -> Column:
    """An unreadable record as the JSON `body` of an UNREADABLE row: the ledger's reason and
    rule, and the record itself with its Kafka coordinates (bytes that are not UTF-8 in
    base64), so that the sink can write it to the reject ledger as it came."""
    return F.to_json(F.struct(
        reason.alias("reject_reason"), rule.alias("reject_rule"), "topic", "partition",
        "offset", F.unix_micros("kafka_timestamp").alias("kafka_timestamp_us"), "key", "value",
        F.base64("value_raw").alias("value_raw")))


def _unreadable_tag(help_id: Column) -> Column:
    """A tag record without help_id or classroom_id: not JSON, or a field missing."""
    not_json = F.json_object_keys("value").isNull()
    return _rejected_record(
        F.when(not_json, F.lit("malformed_json")).otherwise(F.lit("missing_field")),
        F.when(not_json, F.lit(None).cast("string"))
         .when(help_id.isNull(), F.lit("help_id")).otherwise(F.lit("classroom_id")))


def _kafka_ms() -> Column:
    """A Kafka row's broker time in epoch ms."""
    return (F.unix_micros(F.col("kafka_timestamp")) / 1000).cast("long")


def _processor_input(rows: DataFrame) -> DataFrame:
    """(classroom_id, kind, role, kafka_time_ms, help_id, finding, body) rows -> INPUT_SCHEMA:
    `signal` is the kind of a fired signal or page turn; a tag carries no role."""
    kind = F.col("kind")
    return rows.select(
        "classroom_id", "kind",
        F.when(~kind.isin(TAG, ALIVE, DIAGNOSTICS, UNREADABLE), kind).alias("signal"),
        F.when(kind != TAG, F.col("role")).alias("role"),
        "kafka_time_ms", "help_id", "finding", "body")


def _rejected(row: Row, now: int) -> dict[str, Any]:
    """A REJECTED output row for an UNREADABLE input: `message` carries the record and the
    reason (`_rejected_record`); it changes no case."""
    empty = dict.fromkeys(TRANSITION_COLUMNS)
    return {**empty, "help_id": row.help_id, "classroom_id": row.classroom_id,
            "state": REJECTED, "seq": 0, "detail": orjson.loads(row.body)["reject_reason"],
            "transition_ms": now, "message": row.body}


def _transition_rows(transitions: list[dict[str, Any]]) -> Iterator[Row]:
    for t in transitions:
        yield _TRANSITION(*(t[c] for c in TRANSITION_COLUMNS))


@dataclass
class Bucket:
    """The state of one bucket of classrooms, kept as one value.

    ev: classroom -> its Evidence; seen: classroom -> processing time its evidence was last
    updated; cases: help_id -> open case; done: help_id -> processing time it ended (a
    redelivered tag is not a new case); timers: the processing-time timers registered.
    """

    ev: dict[str, Evidence] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)
    cases: dict[str, dict[str, Any]] = field(default_factory=dict)
    done: dict[str, int] = field(default_factory=dict)
    timers: list[int] = field(default_factory=list)

    def dumps(self) -> str:
        # orjson writes the Evidence dataclasses itself; dataclasses.asdict deep-copied every
        # value, for every bucket in every micro-batch (14% of the resolver worker's samples).
        return orjson.dumps({"ev": self.ev,
                             "seen": self.seen, "cases": self.cases, "done": self.done,
                             "timers": self.timers}).decode()

    @classmethod
    def loads(cls, text: str | None) -> Bucket:
        if not text:
            return cls()
        raw = orjson.loads(text)
        return cls({c: Evidence(**e) for c, e in raw["ev"].items()}, raw["seen"],
                   raw["cases"], raw["done"], raw["timers"])

    def cases_of(self, classroom: str) -> dict[str, dict[str, Any]]:
        return {h: c for h, c in self.cases.items() if c["classroom_id"] == classroom}

    @property
    def empty(self) -> bool:
        return not (self.ev or self.cases or self.done)

    def prune(self, now: int, evidence_ttl_ms: int, done_ttl_ms: int) -> None:
        """Drop a classroom's evidence when no case of it is open and either its newest fired
        signal (or diagnostics finding) is `evidence_ttl_ms` older than its newest record, or
        nothing of it arrived for `evidence_ttl_ms` (processing time); finished ids after
        `done_ttl_ms`."""
        open_in = {c["classroom_id"] for c in self.cases.values()}
        for classroom in [c for c in self.ev if c not in open_in]:
            ev = self.ev[classroom]
            horizon = max([*ev.fired.values(), *ev.alive.values()], default=0) - evidence_ttl_ms
            ev.findings = {h: f for h, f in ev.findings.items() if f[1] >= horizon}
            quiet = now - self.seen.get(classroom, now) > evidence_ttl_ms
            if quiet or (max(ev.fired.values(), default=0) < horizon and not ev.findings):
                del self.ev[classroom]
                self.seen.pop(classroom, None)
        self.done = {h: at for h, at in self.done.items() if now - at <= done_ttl_ms}

    def reconcile_timers(self, now: int, fired: int | None = None
                         ) -> tuple[list[int], list[int]]:
        """(timers to delete, timers to register) so that one timer waits at each open case's
        wake-up; `timers` is updated to the result.

        `fired`: the timer whose callback this is (Spark deletes it afterwards). Every other
        timer in `timers` is still registered, a due one (at or before `now`) too: Spark
        fires due timers after the micro-batch's input rows. A due timer is neither
        registered again (Spark logged "Failed to register timer ... already exists" for
        that) nor deleted (it fires this batch anyway, and a bucket already advanced makes
        its callback a no-op).
        """
        registered = {t for t in self.timers if t != fired}
        wanted = {t for c in self.cases.values() if (t := wake_at(c)) is not None}
        self.timers = sorted(wanted)
        return (sorted(t for t in registered - wanted if t > now),
                sorted(wanted - registered))


class ResolverProcessor(StatefulProcessor):
    """Per bucket of classrooms (a hash of classroom_id into `key_buckets`): one value holds
    the bucket's open cases, its classrooms' evidence and its finished help_ids; processing-time
    timers wake the bucket at its cases' deadlines.

    Why buckets and one value, not a group per classroom with a state variable each: every
    classroom sends heartbeats, so every classroom was a group in every micro-batch, and each
    group cost about five round trips between the Python worker and the JVM's state server
    (set the key, two `exists`, get, update). At 2,000 lessons py-spy put ~80% of this stage's
    Python time in them, the stage being half the resolver's micro-batch (docs/BENCHMARKS.md).
    A bucket costs set key, get and update, however many classrooms it holds.

    State stays bounded: a final case leaves at once; a classroom's evidence is dropped when no
    case of it is open and its newest fired signal is `evidence_ttl_s` older than its newest
    record, or nothing of it arrived for `evidence_ttl_s`; finished ids after `done_ttl_s`.
    """

    def __init__(self, cfg: ResolverConfig) -> None:
        self.cfg = cfg

    def init(self, handle: StatefulProcessorHandle) -> None:
        self.handle = handle
        self.state = handle.getValueState("bucket", "body string")

    def handleInputRows(self, key: Any, rows: Iterator[Row],
                        timerValues: Any) -> Iterator[Row]:
        now = timerValues.getCurrentProcessingTimeInMs()
        by_classroom: dict[str, list[Row]] = {}
        out: list[dict[str, Any]] = []
        for row in rows:
            if row.kind == UNREADABLE:
                out.append(_rejected(row, now))
            elif row.classroom_id is not None:
                by_classroom.setdefault(row.classroom_id, []).append(row)
        # exists() first: get() of no value logs a warning in the JVM, and a bucket whose
        # classrooms are all healthy keeps no value.
        stored = self.state.get() if self.state.exists() else None
        bucket = Bucket.loads(stored[0] if stored else None)
        for classroom, inputs in by_classroom.items():
            out.extend(self._classroom(bucket, classroom, inputs, now))
        if stored is not None or bucket.ev or bucket.cases:
            self._save(bucket, now)
        yield from _transition_rows(out)

    def _classroom(self, bucket: Bucket, classroom: str, inputs: list[Row], now: int
                   ) -> list[dict[str, Any]]:
        """One classroom's rows of this micro-batch: evidence, new cases, their advance."""
        cases = bucket.cases_of(classroom)
        if all(row.kind == ALIVE for row in inputs) and not cases and classroom not in bucket.ev:
            return []  # a healthy classroom nobody asked about: no state at all
        ev = bucket.ev.get(classroom) or Evidence()
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
        out: list[dict[str, Any]] = []
        for tag in tags:
            help_id = tag.get("help_id")
            if not help_id or help_id in bucket.cases or help_id in bucket.done:
                continue  # at-least-once delivery of tags: one case per help_id
            tag.setdefault("classroom_id", classroom)
            case, new = open_case(tag, now, self.cfg)
            bucket.cases[help_id] = cases[help_id] = case
            out.append(new)
        bucket.ev[classroom], bucket.seen[classroom] = ev, now
        out.extend(self._advance(bucket, cases, now))
        return out

    def handleExpiredTimer(self, key: Any, timerValues: Any,
                           expiredTimerInfo: Any) -> Iterator[Row]:
        if not self.state.exists():
            return
        now = timerValues.getCurrentProcessingTimeInMs()
        bucket = Bucket.loads(self.state.get()[0])
        out = self._advance(bucket, dict(bucket.cases), now)
        self._save(bucket, now, fired=expiredTimerInfo.getExpiryTimeInMs())
        yield from _transition_rows(out)

    def _advance(self, bucket: Bucket, cases: dict[str, dict[str, Any]], now: int
                 ) -> list[dict[str, Any]]:
        """Advance `cases` (open cases of the bucket) with their classrooms' evidence."""
        out: list[dict[str, Any]] = []
        for help_id, case in cases.items():
            ev = bucket.ev.setdefault(case["classroom_id"], Evidence())
            out.extend(advance(case, ev, now, self.cfg))
            if case["state"] in FINAL_STATES:
                del bucket.cases[help_id]
                bucket.done[help_id] = now
                ev.findings.pop(help_id, None)
        return out

    def _save(self, bucket: Bucket, now: int, fired: int | None = None) -> None:
        """Prune the bucket, bring the registered timers in line with its open cases (`fired`:
        the timer being handled), store it (or clear it when nothing is left)."""
        bucket.prune(now, int(self.cfg.evidence_ttl_s * 1000), int(self.cfg.done_ttl_s * 1000))
        delete, register = bucket.reconcile_timers(now, fired)
        for at in delete:
            self.handle.deleteTimer(at)
        for at in register:
            self.handle.registerTimer(at)
        if bucket.empty:
            self.state.clear()
        else:
            self.state.update((bucket.dumps(),))

    def close(self) -> None:
        pass


def run_playbooks(cfg: ResolverConfig) -> Transform:
    """Processor input rows -> one row per case transition (TRANSITION_SCHEMA)."""
    processor = ResolverProcessor(cfg)

    def apply(df: DataFrame) -> DataFrame:
        return (df.withColumn("bucket", classroom_bucket(cfg.key_buckets)).groupBy("bucket")
                  .transformWithState(processor, TRANSITION_SCHEMA, "Append", "ProcessingTime"))

    return apply


def relay_inputs(tags_topic: str) -> Transform:
    """Kafka rows of the tags topic and of the help job's relay topic -> processor input
    (INPUT_SCHEMA): a tag record passes whole as `body`; a relay message (a JSON array of
    RELAY_FIELDS objects, pipelines/transforms/help_window.py) gives one row per item. No
    validation here: the help job validated what it relays (heartbeats and page turns need
    none, see `liveness`). One projection and one explode. A message that does not parse, or
    an item without classroom or kind, gives an UNREADABLE row (the reject ledger) besides
    the message's good items."""
    relay_schema = "array<struct<" + ", ".join(f"{n}: {t}" for n, t in RELAY_FIELDS) + ">>"
    none = F.lit(None).cast("string")

    def row(classroom: Column, kind: Column, help_id: Column, body: Column) -> Column:
        return F.struct(classroom.alias("classroom_id"), kind.alias("kind"), none.alias("role"),
                        _kafka_ms().alias("kafka_time_ms"), help_id.alias("help_id"),
                        none.alias("finding"), body.alias("body"))

    def apply(df: DataFrame) -> DataFrame:
        tag_help, tag_room, bad_tag = _tag_ids()
        is_tag = F.col("topic") == tags_topic
        tag = F.when(bad_tag,
                     row(tag_room, F.lit(UNREADABLE), tag_help, _unreadable_tag(tag_help))
                     ).otherwise(row(tag_room, F.lit(TAG), tag_help, F.col("value")))
        parsed = F.from_json(F.col("value"), relay_schema)
        good = F.filter(parsed, lambda r: r["classroom_id"].isNotNull() & r["kind"].isNotNull())
        relayed = F.transform(good, lambda r: F.struct(
            *(r[n].alias(n) for n, _ in RELAY_FIELDS), none.alias("body")))
        reason = (F.when(parsed.isNull(), F.lit("malformed_json"))
                  .when(F.size(good) < F.size(parsed), F.lit("missing_field")))
        rule = F.when(parsed.isNotNull(), F.lit("classroom_id, kind"))
        unreadable = F.when(reason.isNotNull(), F.array(row(
            none, F.lit(UNREADABLE), none, _rejected_record(reason, rule))))
        none_of = F.array().cast("array<struct<" + ", ".join(
            f"{n}: {t}" for n, t in (*RELAY_FIELDS, ("body", "string"))) + ">>")
        items = F.when(is_tag, F.array(tag)).otherwise(F.concat(
            F.coalesce(relayed, none_of), F.coalesce(unreadable, none_of)))
        return (df.select(F.explode(items).alias("r")).select("r.*")
                  .transform(_processor_input))

    return apply


def resolver_inputs(rules: HelpRulesConfig, tags_topic: str,
                    filtered_users: Sequence[str] = ()) -> Transform:
    """Bronze rows -> processor input: candidates, the shared validation, test accounts
    flagged (`silver.filtered_users`: their signals and diagnostics are no evidence, as in the
    help job and so in its relay), rows.

    Heartbeats and page turns skip the contract validation: they only tell that a role's
    client is sending (and, a page turn, that its whiteboard renders), which their envelope
    (classroom, role, broker time) shows whatever the rest says. They were 19 in 20 of the
    rows validated, and validating them doubled the JVM cost of the resolver's input
    (docs/BENCHMARKS.md, 2026-11-27).
    """
    from pipelines.transforms.silver import flag_filtered_users
    from pipelines.transforms.validate import parse_and_validate

    def apply(df: DataFrame) -> DataFrame:
        return (df.transform(resolver_candidates(rules, tags_topic))
                  .transform(parse_and_validate, (LIVENESS,))
                  .transform(flag_filtered_users(filtered_users))
                  .transform(resolver_rows(rules, tags_topic)))

    return apply
