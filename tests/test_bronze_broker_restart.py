"""Bronze keeps going through a broker restart (durable S3-backed broker storage)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from deltalake import DeltaTable
from fixtures_broker import free_port
from kafka_helpers import produce, unique_topics_env
from test_bronze import assert_bronze_holds_exactly, known_records

from pipelines.broker import EmbeddedBroker
from pipelines.config import load_settings


@pytest.mark.e2e
@pytest.mark.fault
def test_bronze_survives_a_broker_restart_with_durable_storage(tmp_path: Path) -> None:
    env = {**os.environ, **unique_topics_env({"av": 3, "signal": 1}),
           "LAKEHOUSE_ROOT": str(tmp_path),
           "LAKEHOUSE__BROKER__PORT": str(free_port()),
           "LAKEHOUSE__BROKER__S3_PORT": str(free_port()),
           "LAKEHOUSE__BROKER__STORAGE": "s3://lakehouse-test/",
           "LAKEHOUSE__KAFKA__MAX_RECORDS_PER_TRIGGER": "1000"}
    settings = load_settings("local", environ=env)
    broker = EmbeddedBroker(settings, environ=env)
    broker.start()
    try:
        records = known_records(8000, settings.streaming.bronze_topics, seed=5)
        produce(settings, records)
        table_path = settings.table_path("bronze.events")
        job = subprocess.Popen(
            [str(Path(sys.executable).with_name("lakehouse")), "run", "bronze", "--once"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 180
        while not DeltaTable.is_deltatable(table_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert DeltaTable.is_deltatable(table_path), "bronze never committed a batch"

        restarted = broker.restart(kill=True)  # SIGKILL tansu; the S3 store keeps the data
        assert restarted.running
        assert DeltaTable(table_path).count() < len(records), "restart should land mid-run"

        _, stderr = job.communicate(timeout=300)
        assert job.returncode == 0, stderr[-3000:]
        assert_bronze_holds_exactly(settings, records)
    finally:
        broker.stop(kill=True)
