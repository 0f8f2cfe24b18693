"""The delta-rs writer's exactly-once appends: a (app_id, version) pair commits at most once,
whether the rows come as a Spark frame, as Arrow from a sink, or routed to several tables."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
from deltalake import DeltaTable
from pyspark.sql import SparkSession

from pipelines.io.delta import DeltaRsWriter, RoutedTable


def _rows(path: Path) -> list[dict]:
    return sorted(DeltaTable(str(path)).to_pyarrow_table().to_pylist(), key=lambda r: r["id"])


def test_append_arrow_commits_each_version_once(spark: SparkSession, tmp_path: Path) -> None:
    writer, path = DeltaRsWriter(), str(tmp_path / "t")
    batch = pa.table({"id": [1, 2], "day": ["d1", "d2"]})
    assert writer.append_arrow(spark, batch, path, partition_by=["day"], app_id="q", version=0)
    assert not writer.append_arrow(spark, batch, path, partition_by=["day"], app_id="q",
                                   version=0)  # a replayed batch
    assert writer.append_arrow(spark, pa.table({"id": [3], "day": ["d1"]}), path,
                               partition_by=["day"], app_id="q", version=1)
    assert [r["id"] for r in _rows(tmp_path / "t")] == [1, 2, 3]
    assert DeltaTable(path).transaction_version("q") == 1
    # Another query's version 0 is its own.
    assert writer.append_arrow(spark, pa.table({"id": [4], "day": ["d2"]}), path,
                               partition_by=["day"], app_id="other", version=0)
    assert len(_rows(tmp_path / "t")) == 4


def test_append_and_append_routed_replays_write_nothing(spark: SparkSession,
                                                        tmp_path: Path) -> None:
    writer = DeltaRsWriter()
    df = spark.createDataFrame([(1, "a"), (2, "b"), (3, "a")], "id long, route string")
    tables = [RoutedTable(route=r, path=str(tmp_path / r), columns=("id",), partition_by=())
              for r in ("a", "b")]
    for _ in range(2):  # the second pass is a replay of the same batch
        writer.append_routed(df, "route", tables, app_id="q", version=5)
        writer.append(df, str(tmp_path / "all"), partition_by=[], app_id="q", version=5,
                      stamp_column="written_at")
    assert [r["id"] for r in _rows(tmp_path / "a")] == [1, 3]
    assert [r["id"] for r in _rows(tmp_path / "b")] == [2]
    written = _rows(tmp_path / "all")
    assert [r["id"] for r in written] == [1, 2, 3]
    assert len({r["written_at"] for r in written}) == 1 and written[0]["written_at"] is not None


def test_append_routed_adds_the_constants_after_the_collect(spark: SparkSession,
                                                            tmp_path: Path) -> None:
    """Per-batch values (batch id, write time) come from the driver, not the Spark plan."""
    writer = DeltaRsWriter()
    df = spark.createDataFrame([(1, "a"), (2, "b")], "id long, route string")
    tables = [RoutedTable(route="a", path=str(tmp_path / "a"), columns=("id", "batch"))]
    out = writer.append_routed(df, "route", tables, app_id="q", version=3, returning=("id",),
                               constants={"batch": pa.scalar(3, pa.int64())})
    assert out.column_names == ["id"] and out.num_rows == 2
    assert _rows(tmp_path / "a") == [{"id": 1, "batch": 3}]
