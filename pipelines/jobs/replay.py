"""`lakehouse rejects replay`: re-publish chosen rejects to their topic after a fix."""

from __future__ import annotations

from datetime import datetime

from confluent_kafka import Producer
from deltalake import DeltaTable

from pipelines.config import Settings
from pipelines.transforms.silver import REJECTS_TABLE


class ReplayError(RuntimeError):
    """The ledger is missing or a replayed record was not acknowledged."""


def replay_rejects(settings: Settings, *, reason: str | None, since: datetime | None,
                   dry_run: bool = False) -> dict[str, int]:
    """Produce the exact bytes and key of each matching reject back to its topic.

    Returns records per topic. Replayed records enter bronze again as new Kafka records, so the
    ledger keeps the old row (history) and silver judges the record afresh.
    """
    path = settings.table_path(REJECTS_TABLE)
    if not DeltaTable.is_deltatable(path):
        raise ReplayError(f"no reject ledger at {path}")
    rows = DeltaTable(path).to_pyarrow_table(
        columns=["topic", "key", "value", "value_raw", "reject_reason", "kafka_timestamp"]
    ).to_pylist()
    chosen = [r for r in rows
              if (reason is None or r["reject_reason"] == reason)
              and (since is None or r["kafka_timestamp"] >= since)]
    counts: dict[str, int] = {}
    for row in chosen:
        counts[row["topic"]] = counts.get(row["topic"], 0) + 1
    if dry_run or not chosen:
        return counts
    producer = Producer({**settings.kafka.client_options(), "linger.ms": 20, "acks": "all"})
    failures: list[str] = []

    def delivered(err, _msg) -> None:
        if err is not None:
            failures.append(str(err))

    for row in chosen:
        value = row["value_raw"] if row["value_raw"] is not None else row["value"].encode()
        key = row["key"].encode() if row["key"] is not None else None
        producer.produce(row["topic"], key=key, value=value, on_delivery=delivered)
        producer.poll(0)
    left = producer.flush(30)
    if left or failures:
        raise ReplayError(f"{left} records unacknowledged, {len(failures)} failed: {failures[:3]}")
    return counts
