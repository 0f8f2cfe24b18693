"""The medallion jobs: bronze's stream (and its fault injection), silver and gold."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, field_validator, model_validator

from pipelines.config.base import _Model


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


class FaultConfig(_Model):
    kill_after_delta_commit_batch: int | None = None


class SilverSource(StrEnum):
    BRONZE = "bronze"  # replayable: a backfill re-reads bronze
    KAFKA = "kafka"


class StateStore(StrEnum):
    """Where a stateful query keeps its state between micro-batches."""

    MEMORY = "memory"    # a hash map in the JVM heap, versions checkpointed as files
    ROCKSDB = "rocksdb"  # RocksDB on local disk: bounded memory, any state size

    @property
    def provider_class(self) -> str:
        package = "org.apache.spark.sql.execution.streaming.state."
        return package + ("HDFSBackedStateStoreProvider" if self is StateStore.MEMORY
                          else "RocksDBStateStoreProvider")


class SilverConfig(_Model):
    source: SilverSource = SilverSource.BRONZE
    # The event_id dedup state. Fixed by a query's checkpoint once it ran (Spark keeps the
    # provider in its offset log); transformWithState (help, resolver) needs RocksDB anyway.
    state_store: StateStore = StateStore.ROCKSDB
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
    help_latest_before_end_s: float = Field(45, ge=0)  # for the simulator it runs
