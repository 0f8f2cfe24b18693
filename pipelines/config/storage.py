"""Where data lives and what writes it: the storage root, Spark, Delta, and the dimension data
(Delta tables or PostgreSQL)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import ConfigDict, Field

from pipelines.config.base import _Model


class DeltaEngine(StrEnum):
    DELTA_RS = "delta-rs"
    DELTA_SPARK = "delta-spark"


class StorageConfig(_Model):
    root: str = "./lakehouse"

    @property
    def is_local(self) -> bool:
        """The root is a path on this machine, not an object-store URI (`s3a://...`)."""
        return "://" not in self.root

    def path(self, *parts: str) -> str:
        """A location under the storage root (a local path or an object-store URI)."""
        if not self.is_local:
            return "/".join([self.root.rstrip("/"), *parts])
        return str(Path(self.root).resolve().joinpath(*parts))


class SparkConfig(_Model):
    master: str = "local[2]"
    app_name: str = "classroom-lakehouse"
    shuffle_partitions: int = Field(4, ge=1)
    extra_conf: dict[str, str] = Field(default_factory=dict)


class DeltaConfig(_Model):
    engine: DeltaEngine = DeltaEngine.DELTA_RS


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
