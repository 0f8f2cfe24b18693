"""Help tagging transforms: evidence signals, the per-request window, aggregation, tag rules.

All pure `DataFrame -> DataFrame` functions parametrised by closures over `HelpConfig`. The
plan (pipelines/jobs/help.py wires it to Kafka and Delta):

    bronze rows -> help_candidates      only records that could be a request or a signal
      -> parse_and_validate (validate.py, shared with silver)
      -> help_signals                   one row per request, one per fired evidence signal
      -> window (state: HelpWindowProcessor per bucket of classrooms | join:
                                        join_requests_with_evidence)
         = (request, evidence) pairs, evidence within [request - before, request + after]
      -> aggregate_evidence             counts per signal and role for each help_id
      -> apply_tag_rules                tags, primary tag, evidence JSON
      -> tag_records                    the gold.help_tags / classroom.help.tags columns

Why signals instead of raw rows: a healthy sample never fires a rule, so only rows that could
(by the configured thresholds) enter the window state. That keeps the state and the Python side
of the stateful operator about two orders of magnitude smaller than the raw event rate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pipelines.config import NO_ISSUE_TAG, HelpConfig, HelpRulesConfig

Transform = Callable[[DataFrame], DataFrame]

HELP_TOPICS = ("classroom.av", "classroom.signal", "classroom.whiteboard", "classroom.enter",
               "classroom.help")
ROLES = ("teacher", "student")
REQUEST = "request"  # the `signal` of a help.request row
TICK = "tick"  # the `signal` of a record of the help job's own tick topic

# The request half of every pair, and the evidence half (null when nothing was in the window).
REQUEST_FIELDS = (("help_id", "string"), ("classroom_id", "string"), ("lesson_id", "string"),
                  ("requester_id", "string"), ("requester_role", "string"),
                  ("category", "string"), ("request_time_ms", "long"),
                  ("request_kafka_ms", "long"))
EVIDENCE_FIELDS = (("event_id", "string"), ("signal", "string"), ("role", "string"),
                   ("event_time_ms", "long"), ("kafka_time_ms", "long"),
                   ("packet_loss_pct", "double"), ("rtt_ms", "long"),
                   ("freeze_count", "long"), ("detail", "string"))
REQUEST_COLUMNS = tuple(name for name, _ in REQUEST_FIELDS)
EVIDENCE_COLUMNS = tuple(name for name, _ in EVIDENCE_FIELDS)
PAIR_SCHEMA = ", ".join(f"{n} {t}" for n, t in (*REQUEST_FIELDS, *EVIDENCE_FIELDS))
# The state engine's pairs also say whether they were cut when the request arrived (`early`:
# look-back evidence only) or when its window closed.
EARLY = "early"
STATE_PAIR_SCHEMA = f"{PAIR_SCHEMA}, {EARLY} boolean"
# The window processor's output: pairs (`relay` null) and, with the relay on, one row per
# bucket and micro-batch whose `relay` holds what the resolver needs of the bucket's input
# rows (RELAY_FIELDS objects as a JSON array; every other column null).
RELAY = "relay"
WINDOW_OUTPUT_SCHEMA = f"{STATE_PAIR_SCHEMA}, {RELAY} string"
RELAY_FIELDS = (("classroom_id", "string"), ("kind", "string"), ("role", "string"),
                ("kafka_time_ms", "long"), ("help_id", "string"), ("finding", "string"))


def _ms(ts: Column) -> Column:
    return F.unix_micros(ts).cast("long") / F.lit(1000)


def signal_conditions(rules: HelpRulesConfig, event_type: Column | None = None,
                      payload: Column | None = None) -> dict[str, Column]:
    """Evidence signal -> the row predicate that fires it (thresholds from conf), over the
    validated `event_type` and `payload` columns (or the given ones)."""
    etype = F.col("event_type") if event_type is None else event_type
    p = F.col("payload") if payload is None else payload
    av = etype == "av.quality"
    enter = etype == "enter.step"
    return {
        "bad_network_sample": av & ((p["packet_loss_pct"] >= rules.packet_loss_pct)
                                    | (p["rtt_ms"] >= rules.rtt_ms)),
        "disconnect": etype == "signal.disconnect",
        "mic_muted": av & (p["direction"] == "up") & (p["media"] == "audio")
                     & (p["mic_muted"] == F.lit(True)),
        "video_freeze": av & (p["direction"] == "down") & (p["media"] == "video")
                        & (p["freeze_count"] >= rules.freeze_min_count),
        "wb_load_fail": etype == "wb.load_fail",
        "enter_fail": enter & (p["step"] == "enter_fail"),
        "enter_success": enter & (p["step"] == "enter_success"),
    }


def with_json_probe(schema: str, name: str) -> Transform:
    """Add `name`: the record's `value` parsed once against `schema` (a few fields).

    Why a generator and not a plain column: Spark's optimizer gives each field read from a
    `from_json` its own pruned `from_json`, and copies a projected column into every Filter
    pushed below it, so a probe of four fields read by a filter and a projection parsed each
    record up to eight times. A filter cannot pass a Generate whose output it reads, and a
    generator's output is no `from_json` to prune: one parse per record, about 25% less CPU
    for a candidate filter (docs/BENCHMARKS.md, 2026-11-27). One element per row, so the
    rows are the same (a record that does not parse gets a null probe).
    """

    def apply(df: DataFrame) -> DataFrame:
        return df.select("*", F.explode(F.array(F.from_json(F.col("value"), schema))).alias(name))

    return apply


CANDIDATE_PROBE = "_candidate_probe"
_PROBE_FIELDS = ("direction", "media", "packet_loss_pct", "rtt_ms", "freeze_count", "mic_muted",
                 "step")

# What the resolver needs besides fired signals: liveness (heartbeats; page turns, which also
# prove a whiteboard renders) and the clients' diagnostics replies. The help job relays them
# (resolver.evidence: relay), or the resolver reads them itself (pipelines/transforms/resolver.py).
HEARTBEAT, DIAGNOSTICS_EVENT, PAGE_TURN_EVENT = ("signal.heartbeat", "help.diagnostics",
                                                 "wb.page_turn")
ALIVE, DIAGNOSTICS = "alive", "diagnostics"  # the `signal` (kind) of those rows
LIVENESS = "_liveness"  # (kind, classroom_id, role) of a heartbeat or page turn: no validation


def candidate_probe_schema(*envelope: str) -> str:
    """DDL of the candidate probe: `event_type`, the given envelope fields (strings) and the
    payload fields the signal conditions read, typed as the contract types them."""
    from schemas.contract import UNION_PAYLOAD_FIELDS, spark_type

    types = {s.name: spark_type(s.type).simpleString() for s in UNION_PAYLOAD_FIELDS}
    return ("event_type string, " + "".join(f"{name} string, " for name in envelope)
            + "payload struct<" + ", ".join(f"{n}: {types[n]}" for n in _PROBE_FIELDS) + ">")


def liveness(probe: Column, liveness_kinds: Column) -> Column:
    """`_liveness` of a probed row: (kind, classroom_id, role) where `liveness_kinds` names
    its kind (ALIVE for a heartbeat, PAGE_TURN for a page turn) and its envelope names a
    classroom and a known role; else null. Such rows only tell that a role's client is
    sending (a page turn: that its whiteboard renders), which the envelope shows whatever the
    rest of the record says, so they skip the contract validation."""
    live = probe["role"].isin(*ROLES) & (F.length(probe["classroom_id"]) > 0)
    kind = F.when(live, liveness_kinds)
    return F.when(kind.isNotNull(), F.struct(
        kind.alias("kind"), probe["classroom_id"].alias("classroom_id"),
        probe["role"].alias("role")))


def liveness_kind(event_type: Column) -> Column:
    """ALIVE for a heartbeat, PAGE_TURN for a page turn, else null."""
    from pipelines.transforms.playbook import PAGE_TURN

    return (F.when(event_type == HEARTBEAT, F.lit(ALIVE))
             .when(event_type == PAGE_TURN_EVENT, F.lit(PAGE_TURN)))


def help_candidates(rules: HelpRulesConfig, tick_topic: str | None = None, *,
                    relay: bool = False) -> Transform:
    """Bronze rows -> the ones that could be a help.request or fire a signal, before the
    (costly) contract validation; a superset, so the rows validated decide as before.

    Why: about nine in ten records are healthy samples that can never fire a rule, and
    parse_and_validate costs ~20x a plain `from_json` of the few fields the rules read
    (docs/BENCHMARKS.md, "bench help"). A record the contract accepts parses to the same values
    either way, so only records that could not matter (or would be rejected) are skipped.
    The filter also names `kafka_timestamp`, which keeps Spark from pushing it below the
    watermark: the watermark still sees every record.

    `relay`: also keep what the resolver needs (heartbeats, page turns, diagnostics replies);
    heartbeats and page turns get a `_liveness` struct (see `liveness`) and a null `value`, so
    that the validation does no work on them (pass `_liveness` in its `carry`).
    """
    envelope = ("classroom_id", "role") if relay else ()
    probe_schema = candidate_probe_schema(*envelope)

    def apply(df: DataFrame) -> DataFrame:
        probe = F.col(CANDIDATE_PROBE)
        etype = probe["event_type"]
        candidate = etype == "help.request"
        for fired in signal_conditions(rules, etype, probe["payload"]).values():
            candidate = candidate | fired
        if relay:
            candidate = candidate | etype.isin(HEARTBEAT, DIAGNOSTICS_EVENT, PAGE_TURN_EVENT)
        if tick_topic is not None:
            candidate = candidate | (F.col("topic") == tick_topic)
        kept = (df.transform(with_json_probe(probe_schema, CANDIDATE_PROBE))
                  .where(F.coalesce(candidate, F.lit(False)) | F.col("kafka_timestamp").isNull()))
        if not relay:
            return kept.drop(CANDIDATE_PROBE)
        live = liveness(probe, liveness_kind(etype))  # a tick has no event_type: null
        return (kept.select(*df.columns, live.alias(LIVENESS))
                    .withColumn("value", F.when(F.col(LIVENESS).isNull(), F.col("value"))))

    return apply


def has_finding() -> bool:
    """Whether the contract knows help.diagnostics' `finding` (the simulator side adds it)."""
    from schemas.contract import UNION_PAYLOAD_FIELDS

    return any(f.name == "finding" for f in UNION_PAYLOAD_FIELDS)


def help_signals(rules: HelpRulesConfig, tick_topic: str | None = None, *,
                 relay: bool = False) -> Transform:
    """Validated rows -> one row per help.request and one per fired evidence signal (and, with
    `tick_topic`, one `tick` row per record of the job's own ticks: how far the batch read).

    `relay` (input from `help_candidates(..., relay=True)`): also one row per heartbeat or
    page turn (`alive`, `page_turn`: classroom and role from `_liveness`) and per valid
    diagnostics reply (`diagnostics`, with `finding`), for the resolver only.

    Every other row (and every rejected one) is dropped here. One projection and one explode,
    no union, so the Kafka source is read once; and no Filter, which Spark would push below
    the watermark. `kafka_timestamp` keeps its watermark; `*_ms` are plain longs.
    """

    def apply(df: DataFrame) -> DataFrame:
        conditions = signal_conditions(rules)
        p = F.col("payload")
        is_request = (F.col("event_type") == "help.request") & p["help_id"].isNotNull()
        fired = F.filter(F.array(*[F.when(c, F.lit(name)) for name, c in conditions.items()]),
                         lambda s: s.isNotNull())
        valid = F.col("reject_reason").isNull()
        branches = [(~valid, F.array().cast("array<string>")),
                    (is_request, F.array(F.lit(REQUEST)))]
        classroom, role = F.col("classroom_id"), F.col("role")
        finding = F.lit(None).cast("string")
        if relay:  # liveness before validity: those rows skipped the validation
            live = F.col(LIVENESS)
            branches.insert(0, (live.isNotNull(), F.array(live["kind"])))
            branches.append((F.col("event_type") == DIAGNOSTICS_EVENT,
                             F.array(F.lit(DIAGNOSTICS))))
            classroom = F.coalesce(live["classroom_id"], classroom)
            role = F.coalesce(live["role"], role)
            if has_finding():
                finding = p["finding"]
        if tick_topic is not None:
            branches.insert(0, (F.col("topic") == tick_topic, F.array(F.lit(TICK))))
        (condition, value), *rest = branches
        signals = F.when(condition, value)
        for condition, value in rest:
            signals = signals.when(condition, value)
        signals = signals.otherwise(fired)
        return (df.select(classroom.alias("classroom_id"), F.col("kafka_timestamp"),
                          _ms(F.col("kafka_timestamp")).cast("long").alias("kafka_time_ms"),
                          F.col("event_time_ms").cast("long").alias("event_time_ms"),
                          F.col("event_id"), role.alias("role"), F.col("lesson_id"),
                          F.col("user_id"), p["help_id"].alias("help_id"),
                          p["category"].alias("category"),
                          p["packet_loss_pct"].cast("double").alias("packet_loss_pct"),
                          p["rtt_ms"].cast("long").alias("rtt_ms"),
                          p["freeze_count"].cast("long").alias("freeze_count"),
                          F.coalesce(p["error_code"], p["reason"]).alias("detail"),
                          finding.alias("finding"),
                          F.explode(signals).alias("signal")))

    return apply


def join_requests_with_evidence(cfg: HelpConfig) -> Transform:
    """The stream-stream variant of the window: help requests LEFT OUTER JOIN evidence.

    The broker-time bound lets Spark evict state (both sides carry the watermark on
    `kafka_timestamp`); the event-time bound is the window itself.
    """
    before_ms, after_ms = int(cfg.window_before_s * 1000), int(cfg.window_after_s * 1000)
    slack_ms = int(cfg.evidence_slack_s * 1000)

    def apply(df: DataFrame) -> DataFrame:
        requests = df.where(F.col("signal") == REQUEST).select(
            "help_id", "classroom_id", "lesson_id", F.col("user_id").alias("requester_id"),
            F.col("role").alias("requester_role"), "category",
            F.col("event_time_ms").alias("request_time_ms"),
            F.col("kafka_time_ms").alias("request_kafka_ms"),
            F.col("kafka_timestamp").alias("request_kafka_ts"))
        evidence = df.where(F.col("signal") != REQUEST).select(
            F.col("classroom_id").alias("ev_classroom_id"),
            F.col("kafka_timestamp").alias("ev_kafka_ts"), *EVIDENCE_COLUMNS)
        r, e = requests.alias("r"), evidence.alias("e")
        # The event-time window sits inside a coalesce: not a bare comparison, so Spark's
        # search for a state constraint (the broker-time bounds) skips it.
        in_window = F.coalesce(F.col("e.event_time_ms").between(
            F.col("r.request_time_ms") - before_ms, F.col("r.request_time_ms") + after_ms),
            F.lit(False))
        condition = (
            (F.col("e.ev_classroom_id") == F.col("r.classroom_id"))
            & (F.col("e.ev_kafka_ts") >= F.col("r.request_kafka_ts")
               - F.expr(f"INTERVAL {before_ms + slack_ms} MILLISECONDS"))
            & (F.col("e.ev_kafka_ts") <= F.col("r.request_kafka_ts")
               + F.expr(f"INTERVAL {after_ms + slack_ms} MILLISECONDS"))
            & in_window)
        return r.join(e, condition, "left_outer").select(
            *[F.col(f"r.{c}") for c in (*REQUEST_COLUMNS, "request_kafka_ts")],
            *[F.col(f"e.{c}") for c in EVIDENCE_COLUMNS])

    return apply


def _n(signal: str, role: str | None = None) -> Column:
    """Distinct evidence events of `signal` (by `role`): a re-sent event counts once."""
    hit = F.col("signal") == signal
    if role is not None:
        hit = hit & (F.col("role") == role)
    return F.size(F.collect_set(F.when(hit, F.col("event_id"))))


def _max(signal: str, column: str, role: str | None = None) -> Column:
    hit = F.col("signal") == signal
    if role is not None:
        hit = hit & (F.col("role") == role)
    return F.max(F.when(hit, F.col(column)))


def _details(signal: str, role: str | None = None) -> Column:
    hit = F.col("signal") == signal
    if role is not None:
        hit = hit & (F.col("role") == role)
    return F.array_sort(F.collect_set(F.when(hit, F.col("detail"))))


def aggregate_evidence(extra_keys: Iterable[str] = ()) -> Transform:
    """Pairs -> one row per request: counts and extremes per signal and role.

    Streaming-safe (collect_set, not count distinct), so the join variant runs it as a
    streaming aggregation and the state variant on each micro-batch.
    """
    keys = [*REQUEST_COLUMNS, *extra_keys]

    def apply(df: DataFrame) -> DataFrame:
        per_role = []
        for r in ROLES:
            per_role += [
                _n("bad_network_sample", r).alias(f"bad_network_samples_{r}"),
                _max("bad_network_sample", "packet_loss_pct", r).alias(f"max_packet_loss_pct_{r}"),
                _max("bad_network_sample", "rtt_ms", r).alias(f"max_rtt_ms_{r}"),
                _n("disconnect", r).alias(f"disconnects_{r}"),
                _n("mic_muted", r).alias(f"mic_muted_samples_{r}"),
                _n("enter_fail", r).alias(f"enter_fails_{r}"),
                _n("enter_success", r).alias(f"enter_successes_{r}"),
                _details("enter_fail", r).alias(f"enter_error_codes_{r}"),
            ]
        return df.groupBy(*keys).agg(
            *per_role,
            _n("video_freeze").alias("freeze_samples"),
            _max("video_freeze", "freeze_count").alias("max_freeze_count"),
            _n("wb_load_fail").alias("wb_load_fails"),
            _details("wb_load_fail").alias("wb_error_codes"),
            F.size(F.collect_set("event_id")).alias("evidence_events"))

    return apply


def tag_conditions(rules: HelpRulesConfig) -> dict[str, tuple[Column, Column]]:
    """Tag -> (whether it fires, the evidence that fired it) over aggregate_evidence's columns."""
    out: dict[str, tuple[Column, Column]] = {}
    for r in ROLES:
        role = r.upper()
        c = {name: F.col(f"{name}_{r}") for name in (
            "bad_network_samples", "max_packet_loss_pct", "max_rtt_ms", "disconnects",
            "mic_muted_samples", "enter_fails", "enter_successes", "enter_error_codes")}
        network = c["bad_network_samples"] >= rules.network_min_samples
        if rules.network_disconnects > 0:
            network = network | (c["disconnects"] >= rules.network_disconnects)
        out[f"{role}_NETWORK"] = (network, F.struct(
            c["bad_network_samples"].alias("bad_samples"),
            c["max_packet_loss_pct"].alias("max_packet_loss_pct"),
            c["max_rtt_ms"].alias("max_rtt_ms"), c["disconnects"].alias("disconnects")))
        out[f"{role}_MIC_MUTED"] = (c["mic_muted_samples"] >= rules.mic_muted_min_samples,
                                    F.struct(c["mic_muted_samples"].alias("muted_samples")))
        out[f"{role}_NOT_ENTERED"] = (
            (c["enter_fails"] >= rules.enter_fail_min_events) & (c["enter_successes"] == 0),
            F.struct(c["enter_fails"].alias("enter_fails"),
                     c["enter_error_codes"].alias("error_codes")))
    out["VIDEO_FREEZE"] = (F.col("freeze_samples") >= rules.freeze_min_samples, F.struct(
        F.col("freeze_samples").alias("freeze_samples"),
        F.col("max_freeze_count").alias("max_freeze_count")))
    out["WHITEBOARD_LOAD_FAIL"] = (F.col("wb_load_fails") >= rules.wb_load_fail_min_events,
                                   F.struct(F.col("wb_load_fails").alias("load_fails"),
                                            F.col("wb_error_codes").alias("error_codes")))
    return out


def apply_tag_rules(rules: HelpRulesConfig, priority: Iterable[str]) -> Transform:
    """Aggregates -> `tags` (fired tags in priority order, or NO_ISSUE_DETECTED), the
    `primary_tag` (the first), and `evidence` (JSON: per fired tag, what fired it)."""
    priority = list(priority)

    def apply(df: DataFrame) -> DataFrame:
        conditions = tag_conditions(rules)
        order = [tag for tag in priority if tag in conditions]
        fired = F.array_compact(F.array(*[F.when(conditions[t][0], F.lit(t)) for t in order]))
        tags = F.when(F.size(fired) > 0, fired).otherwise(F.array(F.lit(NO_ISSUE_TAG)))
        evidence = F.to_json(F.struct(*[F.when(conditions[t][0], conditions[t][1]).alias(t)
                                        for t in order]))
        return (df.withColumn("tags", tags)
                  .withColumn("primary_tag", F.col("tags")[0])
                  .withColumn("evidence", evidence))

    return apply


_TAGGED_COLUMNS = ("help_id", "classroom_id", "lesson_id", "requester_id", "requester_role",
                   "category", "tags", "primary_tag", "evidence", "evidence_events")
TAG_COLUMNS = (*_TAGGED_COLUMNS, "request_time", "request_broker_time", "request_date", EARLY)


def tag_records(df: DataFrame) -> DataFrame:
    """Tagged aggregates -> the tag record (tagged_at and latencies are added at the sink).
    `early`: tagged when the request arrived, false where its window closed (the join
    engine's sink sets it false)."""
    return df.select(
        *_TAGGED_COLUMNS,
        F.timestamp_millis("request_time_ms").alias("request_time"),
        F.timestamp_millis("request_kafka_ms").alias("request_broker_time"),
        F.to_date(F.timestamp_millis("request_time_ms")).alias("request_date"),
        F.col(EARLY))


def tag_requests(cfg: HelpConfig) -> Transform:
    """Pairs (STATE_PAIR_SCHEMA) -> tag records: aggregate, apply the rules, shape (the state
    variant's sink).

    Early pairs (cut when the request arrived) become a tag only when their primary tag is in
    `early_tags`; the request's window-closed pairs tag it otherwise (the sink keeps the first
    tag of each help_id)."""

    def apply(df: DataFrame) -> DataFrame:
        wanted = (F.col("primary_tag").isin(*cfg.early_tags) if cfg.early_tags
                  else F.lit(False))
        return (df.transform(aggregate_evidence(extra_keys=[EARLY]))
                  .transform(apply_tag_rules(cfg.rules, cfg.priority))
                  .where(~F.col(EARLY) | wanted)
                  .transform(tag_records))

    return apply


def classroom_bucket(buckets: int) -> Column:
    """The state group of a row's classroom: a hash of classroom_id into `buckets` (the help
    window and the resolver keep one state value per group, not per classroom)."""
    return F.pmod(F.xxhash64("classroom_id"), F.lit(buckets))


def window_pairs(request: dict, evidence: Iterable[dict], before_ms: int,
                 after_ms: int) -> Iterator[dict]:
    """A request with each evidence row inside its event-time window; alone if none is."""
    lo, hi = request["request_time_ms"] - before_ms, request["request_time_ms"] + after_ms
    empty = dict.fromkeys(EVIDENCE_COLUMNS)
    found = False
    for ev in evidence:
        if lo <= ev["event_time_ms"] <= hi:
            found = True
            yield {**request, **ev}
    if not found:
        yield {**request, **empty}
