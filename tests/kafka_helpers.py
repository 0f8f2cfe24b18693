"""Test helpers: unique topics on the shared broker, producing known records, reading bronze."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path

from confluent_kafka import Producer
from deltalake import DeltaTable

from pipelines.config import Settings
from pipelines.io.kafka_admin import ensure_topics


def unique_topics_env(partitions: Mapping[str, int]) -> dict[str, str]:
    """Env overrides giving a test its own topics (name -> partitions) on the shared broker."""
    tag = uuid.uuid4().hex[:8]
    names = {f"t{tag}.{name}": n for name, n in partitions.items()}
    topics = ", ".join(f"{{name: {name}, partitions: {n}}}" for name, n in names.items())
    return {"LAKEHOUSE__TOPICS": f"[{topics}]",
            "LAKEHOUSE__STREAMING__BRONZE_TOPICS": "[" + ", ".join(names) + "]"}


def topic_prefix_env() -> dict[str, str]:
    """Env giving a test its own namespace of the configured topics on the shared broker."""
    return {"LAKEHOUSE__KAFKA__TOPIC_PREFIX": f"t{uuid.uuid4().hex[:8]}."}


def produce(settings: Settings, records: list[tuple[str, bytes | None, bytes]]) -> None:
    """Produce (topic, key, value) records and fail unless every one was acknowledged."""
    ensure_topics(settings.kafka.client_options(), settings.kafka_topic_configs())
    producer = Producer({**settings.kafka.client_options(), "linger.ms": 20,
                         "enable.idempotence": False, "acks": "all"})
    failures: list[str] = []

    def on_delivery(err, _msg) -> None:
        if err is not None:
            failures.append(str(err))

    for topic, key, value in records:
        producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
        producer.poll(0)
    remaining = producer.flush(30)
    assert remaining == 0 and not failures, f"undelivered: {remaining}, errors: {failures[:3]}"


def bronze_rows(settings: Settings) -> list[dict]:
    table = DeltaTable(settings.table_path("bronze.events")).to_pyarrow_table(
        columns=["topic", "partition", "offset", "key", "value", "value_raw"])
    return table.to_pylist()


def record_bytes(row: Mapping) -> bytes:
    """The Kafka value bytes a bronze row stands for."""
    return row["value_raw"] if row["value_raw"] is not None else row["value"].encode()


def lakehouse_cli(args: list[str], env: Mapping[str, str], timeout: float = 900,
                  **kwargs) -> subprocess.CompletedProcess[str]:
    """Run the real `lakehouse` entry point in a child process."""
    exe = Path(sys.executable).with_name("lakehouse")
    return subprocess.run([str(exe), *args], env={**os.environ, **env}, text=True,
                          capture_output=True, timeout=timeout, **kwargs)
