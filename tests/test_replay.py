"""`lakehouse rejects replay`: chosen ledger rows go back to their topic, byte for byte."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
from confluent_kafka import Consumer, TopicPartition
from deltalake import write_deltalake
from kafka_helpers import lakehouse_cli, topic_prefix_env

from pipelines.io.kafka_admin import ensure_topics
from pipelines.transforms.silver import REJECTS_TABLE

T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


def ledger_row(topic: str, offset: int, reason: str, value: str | None, raw: bytes | None,
               minutes: int) -> dict:
    return {"topic": topic, "partition": 0, "offset": offset,
            "kafka_timestamp": T0 + timedelta(minutes=minutes), "key": f"c-{offset}",
            "value": value, "value_raw": raw, "reject_reason": reason, "reject_rule": "x"}


def consume_all(settings, topic: str, expect: int) -> list[tuple[bytes, bytes]]:
    consumer = Consumer({**settings.kafka.client_options(), "group.id": "replay-test",
                         "enable.auto.commit": False})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    got: list[tuple[bytes, bytes]] = []
    for _ in range(50):
        for msg in consumer.consume(100, timeout=0.2):
            if msg.error() is None:
                got.append((msg.key(), msg.value()))
        if len(got) >= expect:
            break
    consumer.close()
    return got


def test_replay_republishes_exact_bytes_of_the_chosen_rejects(broker, tmp_path) -> None:
    env = topic_prefix_env()
    settings = broker.make_settings(tmp_path, env)
    ensure_topics(settings.kafka.client_options(), settings.kafka_topic_configs())
    av, enter = settings.kafka_topic("classroom.av"), settings.kafka_topic("classroom.enter")
    rows = [
        ledger_row(av, 1, "malformed_json", '{"event_id": "trunc', None, 0),
        ledger_row(av, 2, "malformed_json", None, b"\xff\xfebinary", 10),
        ledger_row(enter, 3, "malformed_json", '{"x": 1', None, 20),
        ledger_row(av, 4, "late", '{"event_id": "late-one"}', None, 20),
        ledger_row(av, 5, "malformed_json", '{"old": ', None, -30),  # before --since
    ]
    write_deltalake(settings.table_path(REJECTS_TABLE), pa.Table.from_pylist(rows))
    cli_env = {**env, "LAKEHOUSE_ROOT": str(tmp_path),
               "LAKEHOUSE__BROKER__PORT": str(settings.broker.port)}
    args = ["rejects", "replay", "--reason", "malformed_json", "--since", "2026-11-26T09:00:00"]

    dry = lakehouse_cli([*args, "--dry-run"], cli_env)
    assert dry.returncode == 0, dry.stderr
    assert "would replay 3 rejects" in dry.stderr
    assert consume_all(settings, av, 0) == []

    done = lakehouse_cli(args, cli_env)
    assert done.returncode == 0, done.stderr
    assert sorted(consume_all(settings, av, 2)) == [(b"c-1", b'{"event_id": "trunc'),
                                                   (b"c-2", b"\xff\xfebinary")]
    assert consume_all(settings, enter, 1) == [(b"c-3", b'{"x": 1')]
