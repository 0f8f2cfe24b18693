"""Typed configuration: `conf/base.yaml` + `conf/<profile>.yaml` + environment overrides.

This is the one package that picks the profile (loading.py). Precedence, lowest first:
base.yaml, <profile>.yaml, `LAKEHOUSE__SECTION__KEY=value` environment variables, and the two
short forms `LAKEHOUSE_ROOT` (storage root) and `LAKEHOUSE_PROFILE`. Secrets (SASL and database
passwords) are never read from files: only from `LAKEHOUSE_KAFKA_SASL_PASSWORD` and
`LAKEHOUSE_POSTGRES_PASSWORD`. Any bad key or value fails at start-up with a message naming it.

Modules, by concern (import the names from `pipelines.config`, which re-exports them all):
base (the model base, ConfigError), kafka (client, topics, embedded broker), storage (storage
root, Spark, Delta, dimension data), layers (bronze stream, silver, gold), help (Help tagging,
the resolver's playbooks), simulator, settings (Settings, Profile), loading (YAML, environment,
load_settings).
"""

from pipelines.config.base import ConfigError
from pipelines.config.help import (
    DEFAULT_PLAYBOOKS,
    HELP_TAGS,
    NO_ISSUE_TAG,
    ActionTarget,
    ConfirmBy,
    HelpConfig,
    HelpEngine,
    HelpRulesConfig,
    PlaybookConfig,
    ResolverAction,
    ResolverConfig,
    ResolverEvidence,
)
from pipelines.config.kafka import BrokerConfig, KafkaConfig, KafkaSourceKind, TopicConfig
from pipelines.config.layers import (
    DemoConfig,
    FaultConfig,
    GoldConfig,
    PoolConfig,
    SchedulerMode,
    SilverConfig,
    SilverSource,
    StateStore,
    StreamingConfig,
)
from pipelines.config.loading import ENV_PREFIX, SECRET_KEYS, conf_dir, load_settings
from pipelines.config.settings import Profile, Settings
from pipelines.config.simulator import (
    DIAGNOSTICS_ACTION,
    BadInputShares,
    CauseFixes,
    DelayRange,
    FaultModelConfig,
    FixAction,
    FixRule,
    SimulatorConfig,
)
from pipelines.config.storage import (
    DeltaConfig,
    DeltaEngine,
    DimensionsConfig,
    DimensionSource,
    PostgresConfig,
    SparkConfig,
    StorageConfig,
)

__all__ = [
    "DEFAULT_PLAYBOOKS",
    "DIAGNOSTICS_ACTION",
    "ENV_PREFIX",
    "HELP_TAGS",
    "NO_ISSUE_TAG",
    "SECRET_KEYS",
    "ActionTarget",
    "BadInputShares",
    "BrokerConfig",
    "CauseFixes",
    "ConfigError",
    "ConfirmBy",
    "DelayRange",
    "DeltaConfig",
    "DeltaEngine",
    "DemoConfig",
    "DimensionSource",
    "DimensionsConfig",
    "FaultConfig",
    "FaultModelConfig",
    "FixAction",
    "FixRule",
    "GoldConfig",
    "HelpConfig",
    "HelpEngine",
    "HelpRulesConfig",
    "KafkaConfig",
    "KafkaSourceKind",
    "PlaybookConfig",
    "PoolConfig",
    "PostgresConfig",
    "Profile",
    "ResolverAction",
    "ResolverConfig",
    "ResolverEvidence",
    "SchedulerMode",
    "Settings",
    "SilverConfig",
    "SilverSource",
    "SimulatorConfig",
    "SparkConfig",
    "StateStore",
    "StorageConfig",
    "StreamingConfig",
    "TopicConfig",
    "conf_dir",
    "load_settings",
]
