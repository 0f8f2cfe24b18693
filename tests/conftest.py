"""Shared fixtures: one SparkSession and one embedded broker for the whole test session."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

sys.path.insert(0, str(Path(__file__).parent))

from fixtures_broker import broker, broker_settings  # noqa: F401
from resolver_loop import loop_settings  # noqa: F401

from pipelines.config import load_settings
from pipelines.spark import build_spark


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    """One local Spark session (2 cores, few shuffle partitions, no UI) for every test."""
    root = tmp_path_factory.mktemp("spark-root")
    settings = load_settings("local", environ={**os.environ, "LAKEHOUSE_ROOT": str(root),
                                               "LAKEHOUSE__SPARK__SHUFFLE_PARTITIONS": "2"})
    session = build_spark(settings, app_name="lakehouse-tests")
    # Stateful operators run in batch mode in some tests (transformWithState); their state
    # store needs the coordinator that the streaming query manager starts.
    session.streams.active  # noqa: B018
    yield session
    session.stop()
