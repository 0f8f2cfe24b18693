"""Typed configuration: `conf/base.yaml` + `conf/<profile>.yaml` + environment overrides.

This is the one module that picks the profile. Precedence, lowest first:
base.yaml, <profile>.yaml, `LAKEHOUSE__SECTION__KEY=value` environment variables, and the two
short forms `LAKEHOUSE_ROOT` (storage root) and `LAKEHOUSE_PROFILE`. Secrets (SASL and database
passwords) are never read from files: only from `LAKEHOUSE_KAFKA_SASL_PASSWORD` and
`LAKEHOUSE_POSTGRES_PASSWORD`. Any bad key or value fails at start-up with a message naming it.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

ENV_PREFIX = "LAKEHOUSE__"
SECRET_KEYS = frozenset({"sasl_password", "password", "postgres_password"})


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message names the offending key."""


class Profile(StrEnum):
    LOCAL = "local"
    CLUSTER = "cluster"


class KafkaSourceKind(StrEnum):
    PYTHON = "python"  # the project's Spark Python streaming data source (no jars needed)
    JVM = "jvm"  # Spark's built-in `kafka` format (spark-sql-kafka jar)


class DeltaEngine(StrEnum):
    DELTA_RS = "delta-rs"
    DELTA_SPARK = "delta-spark"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageConfig(_Model):
    root: str = "./lakehouse"

    def path(self, *parts: str) -> str:
        """A location under the storage root (a local path or an object-store URI)."""
        if "://" in self.root:
            return "/".join([self.root.rstrip("/"), *parts])
        return str(Path(self.root).resolve().joinpath(*parts))


class SparkConfig(_Model):
    master: str = "local[2]"
    app_name: str = "classroom-lakehouse"
    shuffle_partitions: int = Field(4, ge=1)
    extra_conf: dict[str, str] = Field(default_factory=dict)


class KafkaConfig(_Model):
    bootstrap_servers: str = "127.0.0.1:19092"
    source: KafkaSourceKind = KafkaSourceKind.PYTHON
    max_records_per_trigger: int = Field(200_000, ge=1)
    starting_offsets: str = "earliest"
    read_timeout_seconds: float = Field(300, gt=0)
    # Namespace for every topic this deployment uses (e.g. "staging." or a test's own tag):
    # configured names stay the contract's, Kafka sees prefix + name.
    topic_prefix: str = ""
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None

    @field_validator("starting_offsets")
    @classmethod
    def _known_start(cls, value: str) -> str:
        if value not in {"earliest", "latest"}:
            raise ValueError("must be 'earliest' or 'latest'")
        return value

    def client_options(self) -> dict[str, str]:
        """librdkafka/Java client properties shared by every producer and consumer."""
        opts = {"bootstrap.servers": self.bootstrap_servers}
        if self.security_protocol != "PLAINTEXT":
            opts["security.protocol"] = self.security_protocol
        if self.sasl_mechanism:
            opts["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            opts["sasl.username"] = self.sasl_username
        if self.sasl_password is not None:
            opts["sasl.password"] = self.sasl_password.get_secret_value()
        return opts


class DeltaConfig(_Model):
    engine: DeltaEngine = DeltaEngine.DELTA_RS


class BrokerConfig(_Model):
    embedded: bool = True
    host: str = "127.0.0.1"
    port: int = Field(19092, ge=1, le=65535)
    storage: str = "memory://tansu/"
    start_timeout_seconds: float = Field(30, gt=0)
    stop_timeout_seconds: float = Field(10, gt=0)  # SIGTERM grace before SIGKILL
    # s3:// storage without AWS_ENDPOINT in the environment: the local S3 server (moto) port.
    s3_port: int = Field(19000, ge=1, le=65535)

    @field_validator("host")
    @classmethod
    def _loopback_only(cls, value: str) -> str:
        if not (value.startswith("127.") or value in {"localhost", "::1"}):
            raise ValueError("the embedded broker listens on loopback only")
        return value

    @field_validator("storage")
    @classmethod
    def _known_storage(cls, value: str) -> str:
        if not value.startswith(("memory://", "s3://", "postgres://", "postgresql://")):
            raise ValueError("must be memory://, s3:// or postgres:// storage")
        return value


class TopicConfig(_Model):
    name: str
    partitions: int = Field(1, ge=1)


class SchedulerMode(StrEnum):
    FIFO = "fifo"
    FAIR = "fair"


class PoolConfig(_Model):
    """A FAIR scheduler pool: queries in it share its weight; min_share cores come first."""

    weight: int = Field(1, ge=1)
    min_share: int = Field(0, ge=0)
    queries: list[str] = Field(default_factory=list)


class StreamingConfig(_Model):
    trigger_seconds: float = Field(1.0, ge=0)  # every query's trigger unless `triggers` names it
    triggers: dict[str, float] = Field(default_factory=dict)  # query name -> trigger seconds
    bronze_topics: list[str]
    # FAIR: queries run in the pools below (one Spark application runs many queries: the Help
    # fast path must not queue behind a long silver task). FIFO: Spark's default.
    scheduler: SchedulerMode = SchedulerMode.FIFO
    pools: dict[str, PoolConfig] = Field(default_factory=dict)

    @field_validator("triggers")
    @classmethod
    def _positive_triggers(cls, value: dict[str, float]) -> dict[str, float]:
        bad = [name for name, seconds in value.items() if seconds < 0]
        if bad:
            raise ValueError(f"trigger seconds must be >= 0 (for {', '.join(bad)})")
        return value

    def trigger_for(self, query_name: str) -> float:
        return self.triggers.get(query_name, self.trigger_seconds)

    def pool_for(self, query_name: str) -> str | None:
        """The FAIR pool a query runs in (None: FIFO, or the default pool)."""
        if self.scheduler is not SchedulerMode.FAIR:
            return None
        return next((name for name, pool in self.pools.items() if query_name in pool.queries),
                    None)


class BadInputShares(_Model):
    """Share of generated events the simulator turns into each kind of bad input (a duplicate
    is an extra copy of an earlier event, so its share counts against the events before it)."""

    malformed_json: float = Field(0.0, ge=0, le=1)
    missing_field: float = Field(0.0, ge=0, le=1)
    wrong_type: float = Field(0.0, ge=0, le=1)
    unknown_event_type: float = Field(0.0, ge=0, le=1)
    unknown_schema_version: float = Field(0.0, ge=0, le=1)
    unnatural_timestamp: float = Field(0.0, ge=0, le=1)
    late: float = Field(0.0, ge=0, le=1)
    duplicate: float = Field(0.0, ge=0, le=1)


# Corrective actions of the Help playbook (DESIGN.md "Automatic resolution"), as the simulated
# clients understand them on `classroom.help.actions`.
FixAction = Literal["switch_media_line", "prompt_unmute", "restart_video", "reload_courseware",
                    "resend_enter_link"]
DIAGNOSTICS_ACTION = "request_client_diagnostics"


class FixRule(_Model):
    """The action that clears one cause, and the share of such faults it clears (a fault's
    fixability is drawn once, at planning, so the ground truth knows it)."""

    action: FixAction
    probability: float = Field(ge=0, le=1)


class CauseFixes(_Model):
    """One rule per injected cause (lower-case names, so env overrides reach them)."""

    teacher_network: FixRule = FixRule(action="switch_media_line", probability=0.8)
    student_network: FixRule = FixRule(action="switch_media_line", probability=0.8)
    teacher_mic_muted: FixRule = FixRule(action="prompt_unmute", probability=0.95)
    student_mic_muted: FixRule = FixRule(action="prompt_unmute", probability=0.95)
    video_freeze: FixRule = FixRule(action="restart_video", probability=0.8)
    whiteboard_load_fail: FixRule = FixRule(action="reload_courseware", probability=0.9)
    teacher_not_entered: FixRule = FixRule(action="resend_enter_link", probability=0.85)
    student_not_entered: FixRule = FixRule(action="resend_enter_link", probability=0.85)

    def for_cause(self, cause: str) -> FixRule:
        return getattr(self, cause.lower())  # type: ignore[no-any-return]


class DelayRange(_Model):
    min: float = Field(1.0, ge=0)
    max: float = Field(3.0, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> DelayRange:
        if self.min > self.max:
            raise ValueError("min must not exceed max")
        return self


class FaultModelConfig(_Model):
    """How simulated clients react to `classroom.help.actions` (the closed loop)."""

    # A client takes this long (uniform, seeded per action) to act on an action.
    reaction_delay_s: DelayRange = Field(default_factory=DelayRange)
    # A diagnostics reply names the active fault with this probability, else NO_ISSUE_DETECTED.
    diagnostics_accuracy: float = Field(0.9, ge=0, le=1)
    fixes: CauseFixes = Field(default_factory=CauseFixes)


class SimulatorConfig(_Model):
    help_share: float = Field(0.10, ge=0, le=1)
    bad_input: BadInputShares = Field(default_factory=BadInputShares)
    test_accounts: list[str] = Field(default_factory=list)
    # A Help request comes no earlier than this into the lesson ...
    help_min_offset_s: float = Field(20, ge=0)
    # ... and its root-cause fault starts up to this long before it ...
    fault_lead_s: float = Field(30, gt=0)
    # ... and lasts this long after it (until the closed loop fixes it).
    fault_persist_s: float = Field(60, ge=0)
    # Share of participants whose client already sends av.quality schema v2 (with `codec`).
    av_v2_share: float = Field(0.3, ge=0, le=1)
    fault_model: FaultModelConfig = Field(default_factory=FaultModelConfig)


class DimensionSource(StrEnum):
    DELTA = "delta"  # Delta dimension tables under the storage root, joined stream-static
    POSTGRES = "postgres"  # PostgreSQL, read through the batched TTL-cached lesson lookup


class DimensionsConfig(_Model):
    """Where silver's dimension data lives and how the PostgreSQL lookup caches and retries."""

    source: DimensionSource = DimensionSource.DELTA
    # `lakehouse simulate` writes the dimension rows of the lessons it simulates.
    write_on_simulate: bool = True
    ttl_s: float = Field(300, gt=0)  # a found lesson is fetched again after this long
    negative_ttl_s: float = Field(15, ge=0)  # an unknown lesson id is asked again after this
    max_batch: int = Field(5000, ge=1)  # lesson ids per `= ANY(%s)` round trip
    cache_max_entries: int = Field(500_000, ge=1)
    retry_total_s: float = Field(60, ge=0)  # keep retrying an unreachable database this long
    retry_initial_backoff_s: float = Field(0.2, gt=0)
    retry_max_backoff_s: float = Field(5, gt=0)


class PostgresConfig(_Model):
    """The dimension database. The password comes only from LAKEHOUSE_POSTGRES_PASSWORD."""

    host: str = "127.0.0.1"
    port: int = Field(5432, ge=1, le=65535)
    user: str = "postgres"
    database: str = "postgres"
    schema_name: str = Field("dim", alias="schema", pattern=r"^[a-z_][a-z0-9_]*$")
    sslmode: str = "prefer"
    connect_timeout_s: int = Field(5, ge=1)
    application_name: str = "classroom-lakehouse"

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class FaultConfig(_Model):
    kill_after_delta_commit_batch: int | None = None


class SilverSource(StrEnum):
    BRONZE = "bronze"  # replayable: a backfill re-reads bronze
    KAFKA = "kafka"


class SilverConfig(_Model):
    source: SilverSource = SilverSource.BRONZE
    dedup_window_s: float = Field(300, gt=0)  # watermark delay of the event_id dedup state
    lateness_s: float = Field(90, ge=0)  # our event-time watermark delay; older rows are `late`
    max_clock_ahead_s: float = Field(300, gt=0)  # client clock ahead of broker: unnatural
    max_clock_behind_s: float = Field(240, gt=0)  # event older than this at receipt: unnatural

    @model_validator(mode="after")
    def _dedup_outlasts_clock_tolerance(self) -> SilverConfig:
        if self.max_clock_behind_s >= self.dedup_window_s:
            raise ValueError("max_clock_behind_s must be below dedup_window_s, or Spark's dedup "
                             "would drop natural events as late instead of the ledger keeping them")
        return self
    filtered_users: list[str] = Field(default_factory=list)  # test accounts, internal users
    max_versions_per_trigger: int = Field(10, ge=1)  # bronze commits per silver micro-batch


class GoldConfig(_Model):
    watermark_s: float = Field(120, ge=0)  # event-time delay before a minute is final


class DemoConfig(_Model):
    """`lakehouse demo`: every query in one application. The analytics queries trigger less
    often there (merged over streaming.triggers), so the Help fast path keeps the cores."""

    triggers: dict[str, float] = Field(default_factory=dict)


HELP_TAGS = ("TEACHER_NOT_ENTERED", "STUDENT_NOT_ENTERED", "TEACHER_NETWORK", "STUDENT_NETWORK",
             "TEACHER_MIC_MUTED", "STUDENT_MIC_MUTED", "WHITEBOARD_LOAD_FAIL", "VIDEO_FREEZE")
NO_ISSUE_TAG = "NO_ISSUE_DETECTED"


class HelpEngine(StrEnum):
    STATE = "state"  # per-classroom buffer (transformWithStateInPandas), event-time timers
    JOIN = "join"  # stream-stream left outer join + streaming aggregation (for comparison)


class HelpRulesConfig(_Model):
    """Tagging thresholds (DESIGN.md "Help tagging"); a sample counts once per event_id."""

    packet_loss_pct: float = Field(10, ge=0)  # an AV sample this lossy is a bad-network sample
    rtt_ms: int = Field(800, ge=0)  # ... and so is one this slow
    network_min_samples: int = Field(3, ge=1)  # that role's bad samples for <ROLE>_NETWORK
    network_disconnects: int = Field(1, ge=0)  # or this many signal.disconnect (0: ignore)
    mic_muted_min_samples: int = Field(1, ge=1)  # that role's audio-up samples with mic_muted
    freeze_min_count: int = Field(1, ge=1)  # a video-down sample with freeze_count >= this ...
    freeze_min_samples: int = Field(2, ge=1)  # ... in this many samples: VIDEO_FREEZE
    wb_load_fail_min_events: int = Field(1, ge=1)
    enter_fail_min_events: int = Field(1, ge=1)  # and no enter_success of that role


class HelpConfig(_Model):
    """The Help fast path: evidence window, watermark, trigger, rules and tag priority."""

    engine: HelpEngine = HelpEngine.STATE
    window_before_s: float = Field(60, ge=0)  # evidence this long before the request ...
    window_after_s: float = Field(5, ge=0)  # ... to this long after it (event time)
    watermark_delay_s: float = Field(2, ge=0)  # broker-time watermark delay
    trigger_seconds: float = Field(0.5, ge=0)
    tick_topic: str = "classroom.help.ticks"  # wall-clock ticks: the watermark moves when idle
    tick_interval_s: float = Field(0.5, gt=0)
    tags_topic: str = "classroom.help.tags"
    evidence_slack_s: float = Field(10, ge=0)  # evidence kept this long beyond the window
    max_records_per_trigger: int | None = Field(None, ge=1)  # default: kafka's cap
    state_partitions: int = Field(1, ge=1)  # shuffle partitions of the help query's state
    rules: HelpRulesConfig = Field(default_factory=HelpRulesConfig)
    priority: list[str] = Field(default_factory=lambda: list(HELP_TAGS))
    # State engine: a request whose look-back evidence already makes one of these the primary
    # tag is tagged when it arrives, not when its window closes (empty: always wait).
    early_tags: list[str] = Field(default_factory=list)

    @field_validator("early_tags")
    @classmethod
    def _known_early_tags(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(HELP_TAGS))
        if unknown:
            raise ValueError(f"unknown tags {unknown}; known: {list(HELP_TAGS)}")
        return value

    @field_validator("priority")
    @classmethod
    def _known_tags(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(HELP_TAGS))
        if unknown or len(set(value)) != len(value):
            raise ValueError(f"must list each of {list(HELP_TAGS)} at most once; "
                             f"unknown: {unknown}")
        missing = [tag for tag in HELP_TAGS if tag not in value]
        return [*value, *missing]  # unlisted tags rank last, in their default order


class ResolverAction(StrEnum):
    """Corrective actions on classroom.help.actions (DESIGN.md "Automatic resolution")."""

    SWITCH_MEDIA_LINE = "switch_media_line"
    PROMPT_UNMUTE = "prompt_unmute"
    RESTART_VIDEO = "restart_video"
    RELOAD_COURSEWARE = "reload_courseware"
    RESEND_ENTER_LINK = "resend_enter_link"
    REQUEST_CLIENT_DIAGNOSTICS = "request_client_diagnostics"


class ActionTarget(StrEnum):
    """Whose client an action addresses (and whose evidence confirms it)."""

    TEACHER = "teacher"
    STUDENT = "student"
    REQUESTER = "requester"  # the role that pressed Help
    CLASSROOM = "classroom"  # nobody in particular: target_role null, evidence of any role


class ConfirmBy(StrEnum):
    """What proves an action worked."""

    QUIET = "quiet"  # no bad signal of `signals` for healthy_span_s while the role keeps sending
    ENTER_SUCCESS = "enter_success"  # an enter_success of the role after the action
    DIAGNOSTICS = "diagnostics"  # the client's help.diagnostics reply (re-tags the request)


class PlaybookConfig(_Model):
    """One primary tag's playbook: the action, whom it targets, how success shows, how long."""

    action: ResolverAction
    target: ActionTarget
    signals: list[str] = Field(default_factory=list)  # help_signals kinds that show the problem
    confirm: ConfirmBy = ConfirmBy.QUIET
    # VALIDATE may end in RESOLVED_SELF (off for one-off evidence such as a load failure, where
    # no new failure proves nothing until the client retries).
    self_resolve: bool = True
    confirm_timeout_s: float = Field(8, gt=0)
    retries: int = Field(1, ge=0)


def _playbook(action: ResolverAction, target: ActionTarget, signals: list[str],
              **kw: Any) -> dict[str, Any]:
    return {"action": action, "target": target, "signals": signals, **kw}


_NET = ["bad_network_sample", "disconnect"]
DEFAULT_PLAYBOOKS: dict[str, dict[str, Any]] = {
    "TEACHER_NETWORK": _playbook(ResolverAction.SWITCH_MEDIA_LINE, ActionTarget.TEACHER, _NET),
    "STUDENT_NETWORK": _playbook(ResolverAction.SWITCH_MEDIA_LINE, ActionTarget.STUDENT, _NET),
    "TEACHER_MIC_MUTED": _playbook(ResolverAction.PROMPT_UNMUTE, ActionTarget.TEACHER,
                                   ["mic_muted"]),
    "STUDENT_MIC_MUTED": _playbook(ResolverAction.PROMPT_UNMUTE, ActionTarget.STUDENT,
                                   ["mic_muted"]),
    "VIDEO_FREEZE": _playbook(ResolverAction.RESTART_VIDEO, ActionTarget.REQUESTER,
                              ["video_freeze"]),
    "WHITEBOARD_LOAD_FAIL": _playbook(ResolverAction.RELOAD_COURSEWARE, ActionTarget.REQUESTER,
                                      ["wb_load_fail"], self_resolve=False),
    "TEACHER_NOT_ENTERED": _playbook(ResolverAction.RESEND_ENTER_LINK, ActionTarget.TEACHER,
                                     ["enter_fail"], confirm=ConfirmBy.ENTER_SUCCESS),
    "STUDENT_NOT_ENTERED": _playbook(ResolverAction.RESEND_ENTER_LINK, ActionTarget.STUDENT,
                                     ["enter_fail"], confirm=ConfirmBy.ENTER_SUCCESS),
    NO_ISSUE_TAG: _playbook(ResolverAction.REQUEST_CLIENT_DIAGNOSTICS, ActionTarget.REQUESTER,
                            [], confirm=ConfirmBy.DIAGNOSTICS, self_resolve=False),
}


class ResolverConfig(_Model):
    """`lakehouse run resolver`: the playbooks and the timing of the Help state machine."""

    actions_topic: str = "classroom.help.actions"
    escalations_topic: str = "classroom.help.escalations"
    trigger_seconds: float = Field(1.0, ge=0)
    state_partitions: int = Field(1, ge=1)  # fixed by the checkpoint once the query ran
    max_records_per_trigger: int | None = Field(None, ge=1)  # default: kafka's cap
    # Request (broker time) -> a final state at the latest: ESCALATED when reached.
    total_timeout_s: float = Field(30, gt=0)
    # After an action, evidence counts from action + grace (the client's reaction) ...
    grace_s: float = Field(1, ge=0)
    # ... and is healthy once the role kept sending this long with no bad signal of the kind.
    healthy_span_s: float = Field(3, gt=0)
    evidence_ttl_s: float = Field(180, gt=0)  # a classroom's evidence state without updates
    done_ttl_s: float = Field(3600, gt=0)  # finished help_ids remembered (tag redelivery)
    # Fault injection for the exactly-once tests: SIGKILL right after the first batch from this
    # id on that published actions to Kafka, before its Delta commit. Never set in production.
    kill_after_publish_batch: int | None = None
    playbooks: dict[str, PlaybookConfig] = Field(default_factory=dict,
                                                 validate_default=True)

    @field_validator("playbooks", mode="before")
    @classmethod
    def _complete_playbooks(cls, value: Any) -> dict[str, Any]:
        """Keys are tags (any case: env overrides arrive lower-cased); missing tags and fields
        take the defaults, so an override can name one field of one playbook."""
        given: dict[str, dict[str, Any]] = {}
        for key, entry in (value or {}).items():  # YAML keys first, then the env's
            if isinstance(entry, PlaybookConfig):
                entry = entry.model_dump()
            given[str(key).upper()] = {**given.get(str(key).upper(), {}), **(entry or {})}
        unknown = sorted(set(given) - set(DEFAULT_PLAYBOOKS))
        if unknown:
            raise ValueError(f"unknown tags {unknown}; known: {list(DEFAULT_PLAYBOOKS)}")
        out: dict[str, Any] = {}
        for tag, default in DEFAULT_PLAYBOOKS.items():
            out[tag] = {**default, **given.get(tag, {})}
        return out

    def playbook(self, tag: str) -> PlaybookConfig:
        """The playbook of a primary tag (an unknown tag runs the NO_ISSUE_DETECTED one)."""
        return self.playbooks.get(tag) or self.playbooks[NO_ISSUE_TAG]


class Settings(_Model):
    profile: Profile = Profile.LOCAL
    storage: StorageConfig = Field(default_factory=StorageConfig)
    spark: SparkConfig = Field(default_factory=SparkConfig)
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    delta: DeltaConfig = Field(default_factory=DeltaConfig)
    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    topics: list[TopicConfig]
    streaming: StreamingConfig
    simulator: SimulatorConfig = Field(default_factory=SimulatorConfig)
    faults: FaultConfig = Field(default_factory=FaultConfig)
    dimensions: DimensionsConfig = Field(default_factory=DimensionsConfig)
    postgres: PostgresConfig = Field(default_factory=PostgresConfig)
    silver: SilverConfig = Field(default_factory=SilverConfig)
    help: HelpConfig = Field(default_factory=HelpConfig)
    resolver: ResolverConfig = Field(default_factory=ResolverConfig)
    gold: GoldConfig = Field(default_factory=GoldConfig)
    demo: DemoConfig = Field(default_factory=DemoConfig)

    def table_path(self, table: str) -> str:
        """`bronze.events` -> <root>/bronze/events."""
        layer, _, name = table.partition(".")
        if not name:
            raise ConfigError(f"table name {table!r} must be <layer>.<name>")
        return self.storage.path(layer, name)

    def checkpoint_path(self, job: str) -> str:
        return self.storage.path("_checkpoints", job)

    def kafka_topic(self, name: str) -> str:
        """The Kafka topic for a configured topic name (with `kafka.topic_prefix`)."""
        return f"{self.kafka.topic_prefix}{name}"

    def kafka_topic_configs(self) -> list[TopicConfig]:
        """The configured topics as Kafka knows them (prefixed), for creating them."""
        return [TopicConfig(name=self.kafka_topic(t.name), partitions=t.partitions)
                for t in self.topics]

    def topic(self, name: str) -> TopicConfig:
        for topic in self.topics:
            if topic.name == name:
                return topic
        raise ConfigError(f"topics: no topic named {name!r}")


def conf_dir(environ: dict[str, str] | None = None) -> Path:
    """`conf/` beside the packages, or `LAKEHOUSE_CONF_DIR`."""
    override = (os.environ if environ is None else environ).get("LAKEHOUSE_CONF_DIR")
    return Path(override) if override else Path(__file__).resolve().parent.parent / "conf"


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} not found") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    _reject_secrets(data, path.name, ())
    return data


def _reject_secrets(data: dict[str, Any], source: str, prefix: tuple[str, ...]) -> None:
    for key, value in data.items():
        if key in SECRET_KEYS and value is not None:
            dotted = ".".join((*prefix, key))
            raise ConfigError(f"{source}: {dotted} is a secret; set it in the environment instead")
        if isinstance(value, dict):
            _reject_secrets(value, source, (*prefix, key))


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """`LAKEHOUSE__KAFKA__MAX_RECORDS_PER_TRIGGER=5` -> {"kafka": {"max_records_per_trigger": "5"}}.

    Values are parsed as YAML scalars/flow collections so lists and numbers work.
    """
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__") if part]
        if not path:
            continue
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"environment {name}: not a valid value: {exc}") from exc
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return tree


def load_settings(
    profile: str | None = None, environ: dict[str, str] | None = None
) -> Settings:
    """Load the settings for `profile` (default: `LAKEHOUSE_PROFILE`, else `local`)."""
    env = dict(os.environ if environ is None else environ)
    chosen = profile or env.get("LAKEHOUSE_PROFILE") or Profile.LOCAL.value
    try:
        chosen_profile = Profile(chosen)
    except ValueError as exc:
        known = ", ".join(p.value for p in Profile)
        raise ConfigError(f"profile: unknown profile {chosen!r} (known: {known})") from exc

    directory = conf_dir(env)
    data = _deep_merge(_read_yaml(directory / "base.yaml"),
                       _read_yaml(directory / f"{chosen_profile.value}.yaml"))
    data = _deep_merge(data, _env_overrides(env))
    data["profile"] = chosen_profile.value
    broker = data.get("broker", {})
    if broker.get("embedded"):
        # The embedded broker is the bootstrap server: one setting (broker.port) moves both.
        host, port = broker.get("host", "127.0.0.1"), broker.get("port", 19092)
        data.setdefault("kafka", {})["bootstrap_servers"] = f"{host}:{port}"
    if env.get("LAKEHOUSE_ROOT"):
        data.setdefault("storage", {})["root"] = env["LAKEHOUSE_ROOT"]
    if env.get("LAKEHOUSE_KAFKA_SASL_PASSWORD"):
        data.setdefault("kafka", {})["sasl_password"] = env["LAKEHOUSE_KAFKA_SASL_PASSWORD"]
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration ({chosen_profile.value}): {problems}") from exc
