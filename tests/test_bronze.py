"""Bronze: every Kafka record lands once, byte-identical, even across SIGKILL and restarts."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime

import pytest
from chispa import assert_df_equality
from deltalake import DeltaTable
from kafka_helpers import (
    bronze_rows,
    lakehouse_cli,
    produce,
    record_bytes,
    unique_topics_env,
)

from pipelines.io.kafka_source import KAFKA_SCHEMA
from pipelines.jobs.bronze import start_bronze
from pipelines.jobs.runner import await_query
from pipelines.transforms.bronze import kafka_to_bronze


def known_records(n: int, topics: list[str], seed: int = 1) -> list[tuple[str, bytes, bytes]]:
    """n records over `topics`: mostly JSON, some malformed, some not UTF-8 at all."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        topic = topics[i % len(topics)]
        roll = rng.random()
        if roll < 0.05:
            value = b'{"event_id": "broken' + str(i).encode()  # malformed JSON
        elif roll < 0.08:
            value = bytes([0xFF, 0xFE, 0x80, i % 256]) + b"binary"  # not UTF-8
        else:
            value = b'{"event_id":"e-%d","classroom_id":"c-%d","pad":"%s"}' % (
                i, i % 37, b"x" * rng.randint(10, 300))
        records.append((topic, b"c-%d" % (i % 37), value))
    return records


def assert_bronze_holds_exactly(settings, records) -> None:
    rows = bronze_rows(settings)
    coords = Counter((r["topic"], r["partition"], r["offset"]) for r in rows)
    assert len(rows) == len(records), f"bronze has {len(rows)} rows, produced {len(records)}"
    assert max(coords.values()) == 1, "a (topic, partition, offset) landed twice"
    landed = Counter((r["topic"], record_bytes(r)) for r in rows)
    produced = Counter((t, v) for t, _, v in records)
    assert landed == produced, "bronze values differ from the produced bytes"


def test_kafka_to_bronze_keeps_text_and_raw_bytes(spark) -> None:
    ts = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    source = spark.createDataFrame(
        [(b"c1", b'{"a":1}', "classroom.av", 0, 5, ts, 0),
         (None, b"\xff\xfe", "classroom.av", 1, 9, ts, 0)], KAFKA_SCHEMA)
    actual = source.transform(kafka_to_bronze)
    expected = spark.createDataFrame(
        [("classroom.av", 0, 5, ts, 0, "c1", '{"a":1}', None, ts.date()),
         ("classroom.av", 1, 9, ts, 0, None, None, b"\xff\xfe", ts.date())],
        "topic string, partition int, offset long, kafka_timestamp timestamp, "
        "timestamp_type int, key string, value string, value_raw binary, ingest_date date")
    assert_df_equality(actual, expected, ignore_nullable=True, ignore_row_order=True)


@pytest.mark.e2e
def test_bronze_once_in_process_lands_every_record(spark, broker, tmp_path) -> None:
    env = {**unique_topics_env({"av": 3, "help": 1}),
           "LAKEHOUSE__KAFKA__MAX_RECORDS_PER_TRIGGER": "700"}
    settings = broker.make_settings(tmp_path, env)
    records = known_records(2500, settings.streaming.bronze_topics)
    produce(settings, records)

    job = start_bronze(spark, settings, once=True)
    batches, rows = await_query(job.query, until_offsets=job.until_offsets)

    assert rows == len(records)
    assert batches >= 4, "the per-trigger cap should split 2500 records into >= 4 batches"
    assert_bronze_holds_exactly(settings, records)
    table = DeltaTable(settings.table_path("bronze.events"))
    assert table.metadata().partition_columns == ["ingest_date", "topic"]
    # The sink stamps each batch's commit time; one stamp per micro-batch.
    stamps = table.to_pyarrow_table(columns=["ingested_at"])["ingested_at"]
    assert stamps.null_count == 0
    assert 4 <= len(set(stamps.to_pylist())) <= batches

    # New records arrive; a second --once run takes exactly those.
    more = known_records(300, settings.streaming.bronze_topics, seed=2)
    produce(settings, more)
    job = start_bronze(spark, settings, once=True)
    _, rows = await_query(job.query, until_offsets=job.until_offsets)
    assert rows == len(more)
    assert_bronze_holds_exactly(settings, records + more)


@pytest.mark.e2e
@pytest.mark.fault
def test_sigkill_after_delta_commit_replays_batch_without_duplicates(broker, tmp_path) -> None:
    """Die after the Delta commit of batch 1, before Spark's commit log: the replay is skipped."""
    env = {**unique_topics_env({"av": 2, "signal": 1}),
           "LAKEHOUSE_ROOT": str(tmp_path),
           "LAKEHOUSE__BROKER__PORT": str(broker.settings.broker.port),
           "LAKEHOUSE__KAFKA__MAX_RECORDS_PER_TRIGGER": "1000"}
    settings = broker.make_settings(tmp_path, env)
    records = known_records(4000, settings.streaming.bronze_topics, seed=3)
    produce(settings, records)

    killed = lakehouse_cli(["run", "bronze", "--once"],
                           {**env, "LAKEHOUSE__FAULTS__KILL_AFTER_DELTA_COMMIT_BATCH": "1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    table = DeltaTable(settings.table_path("bronze.events"))
    assert table.count() == 2000  # batches 0 and 1 are in Delta ...
    checkpoint = tmp_path / "_checkpoints" / "bronze"
    assert not (checkpoint / "commits" / "1").exists()  # ... but Spark never finished batch 1

    done = lakehouse_cli(["run", "bronze", "--once"], env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_bronze_holds_exactly(settings, records)


@pytest.mark.e2e
@pytest.mark.fault
def test_sigkill_at_a_random_moment_loses_and_duplicates_nothing(broker, tmp_path) -> None:
    env = {**unique_topics_env({"av": 3, "whiteboard": 1}),
           "LAKEHOUSE_ROOT": str(tmp_path),
           "LAKEHOUSE__BROKER__PORT": str(broker.settings.broker.port),
           "LAKEHOUSE__KAFKA__MAX_RECORDS_PER_TRIGGER": "1500"}
    settings = broker.make_settings(tmp_path, env)
    records = known_records(12000, settings.streaming.bronze_topics, seed=4)
    produce(settings, records)
    table_path = settings.table_path("bronze.events")

    exe_env = {**__import__("os").environ, **env}
    proc = subprocess.Popen([str(lakehouse_exe()), "run", "bronze", "--once"], env=exe_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not DeltaTable.is_deltatable(table_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert DeltaTable.is_deltatable(table_path), "bronze never committed its first batch"
    time.sleep(random.Random(11).uniform(0.2, 1.5))  # somewhere inside a later micro-batch
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    landed_before = DeltaTable(table_path).count()
    assert 0 < landed_before < len(records), "the kill should land mid-run"

    done = lakehouse_cli(["run", "bronze", "--once"], env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_bronze_holds_exactly(settings, records)


def lakehouse_exe():
    import sys
    from pathlib import Path

    return Path(sys.executable).with_name("lakehouse")
