"""`Settings`: every section together, and the paths and topic names derived from them."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, model_validator

from pipelines.config.base import ConfigError, _Model
from pipelines.config.help import HelpConfig, HelpEngine, ResolverConfig, ResolverEvidence
from pipelines.config.kafka import BrokerConfig, KafkaConfig, TopicConfig
from pipelines.config.layers import (
    DemoConfig,
    FaultConfig,
    GoldConfig,
    SilverConfig,
    StreamingConfig,
)
from pipelines.config.simulator import SimulatorConfig
from pipelines.config.storage import (
    DeltaConfig,
    DimensionsConfig,
    PostgresConfig,
    SparkConfig,
    StorageConfig,
)


class Profile(StrEnum):
    LOCAL = "local"
    CLUSTER = "cluster"


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

    @model_validator(mode="after")
    def _quiet_span_covers_a_sample(self) -> Settings:
        """A "quiet" confirm must span more than one client sample: with samples every 4 s, a
        3 s span fits between two bad samples of a fault that is still there, and the resolver
        declared it healthy (16 of 316 RESOLVED_AUTO cases at 4,000 lessons, every one a
        ground-truth breach; docs/BENCHMARKS.md, 2026-11-27)."""
        interval, span = self.simulator.sample_interval_s, self.resolver.healthy_span_s
        if span <= interval:
            raise ValueError(
                f"resolver.healthy_span_s ({span:g} s) must exceed simulator.sample_interval_s "
                f"({interval:g} s), the clients' sample cadence: a shorter span fits between two "
                "bad samples of a fault that is still there (set e.g. "
                f"LAKEHOUSE__RESOLVER__HEALTHY_SPAN_S={interval + 1:g})")
        return self

    @model_validator(mode="after")
    def _relay_needs_the_window_processor(self) -> Settings:
        """The relay is made by the help job's window processor, which the join engine lacks."""
        if (self.resolver.evidence is ResolverEvidence.RELAY
                and self.help.engine is not HelpEngine.STATE):
            raise ValueError(
                "resolver.evidence = relay needs help.engine = state (its window processor "
                "relays the evidence); with help.engine = join set "
                "LAKEHOUSE__RESOLVER__EVIDENCE=topics")
        return self

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

    def partitions_of(self, name: str) -> int:
        """The configured partitions of a topic; 1 for a topic not in `topics`."""
        return next((t.partitions for t in self.topics if t.name == name), 1)

    def topic(self, name: str) -> TopicConfig:
        for topic in self.topics:
            if topic.name == name:
                return topic
        raise ConfigError(f"topics: no topic named {name!r}")
