"""Kafka: the client and its Spark source, the topics, and the embedded broker."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, SecretStr, field_validator

from pipelines.config.base import _Model


class KafkaSourceKind(StrEnum):
    PYTHON = "python"  # the project's Spark Python streaming data source (no jars needed)
    JVM = "jvm"  # Spark's built-in `kafka` format (spark-sql-kafka jar)


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
