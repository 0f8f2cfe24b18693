"""`Settings`: every section together, and the paths and topic names derived from them."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from pipelines.config.base import ConfigError, _Model
from pipelines.config.help import HelpConfig, ResolverConfig
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
