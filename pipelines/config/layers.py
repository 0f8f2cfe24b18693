"""The medallion jobs: bronze's stream (and its fault injection), silver and gold."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, model_validator

from pipelines.config.base import _Model


class StreamingConfig(_Model):
    trigger_seconds: float = Field(1.0, ge=0)
    bronze_topics: list[str]


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
