"""The delta-rs streaming source (silver's reader of bronze in the `local` profile): partitions
of about `rowsPerPartition` rows cut from the versions' files, partition values filled in, every
appended row exactly once."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
from deltalake import WriterProperties, write_deltalake
from pyspark.sql import SparkSession
from pyspark.sql.types import LongType, StringType, StructField, StructType

from pipelines.io.delta_source import FORMAT_NAME, DeltaStreamReader

SCHEMA = StructType([StructField("id", LongType()), StructField("day", StringType())])


def _append(path: str, ids: range) -> None:
    days = [f"d{i % 2}" for i in ids]
    write_deltalake(path, pa.table({"id": pa.array(list(ids), pa.int64()), "day": days}),
                    mode="append", partition_by=["day"])


def test_each_appended_row_is_read_once(spark: SparkSession, tmp_path: Path) -> None:
    path = str(tmp_path / "events")
    _append(path, range(0, 7))      # v0: two files (d0, d1)
    _append(path, range(7, 8))      # v1: one file
    _append(path, range(8, 20))     # v2: two files

    reader = DeltaStreamReader(SCHEMA, {"path": path})
    pieces = reader.partitions({"version": -1}, {"version": 2})
    assert [p.version for p in pieces] == [0, 0, 1, 2, 2]  # one per file: all are small
    read = [r for p in pieces for b in reader.read(p) for r in b.to_pylist()]
    assert sorted(r["id"] for r in read) == list(range(20))
    assert all(r["day"] == f"d{r['id'] % 2}" for r in read)  # partition value filled in

    # Through Spark: every row once, one version per trigger.
    rows: list[tuple[int, int]] = []
    query = (spark.readStream.format(FORMAT_NAME).schema(SCHEMA)
             .option("maxVersionsPerTrigger", "1").load(path)
             .writeStream.trigger(processingTime="100 milliseconds")
             .option("checkpointLocation", str(tmp_path / "checkpoint"))
             .foreachBatch(lambda df, batch_id: rows.extend(
                 (batch_id, r.id) for r in df.collect()))
             .start())
    deadline = time.monotonic() + 120
    try:  # (processAllAvailable returns after one batch of a Python source in Spark 4.1)
        while len(rows) < 20 and time.monotonic() < deadline and query.isActive:
            time.sleep(0.2)
        _append(path, range(20, 23))  # a version appended while the stream runs
        while len(rows) < 23 and time.monotonic() < deadline and query.isActive:
            time.sleep(0.2)
    finally:
        query.stop()
    assert sorted(i for _, i in rows) == list(range(23))
    assert len({b for b, _ in rows}) == 4  # one version per trigger


def test_large_files_are_cut_into_partitions_of_about_the_target_size(tmp_path: Path) -> None:
    """A file of one large row group is sliced; a file of small row groups is read as groups
    of them; either way each row comes once, with its partition value."""
    path = str(tmp_path / "events")
    write_deltalake(path, pa.table({"id": pa.array(range(1000), pa.int64()),
                                    "day": ["d0"] * 1000}), mode="append", partition_by=["day"])
    rows = pa.table({"id": pa.array(range(1000, 1600), pa.int64()), "day": ["d1"] * 600})
    write_deltalake(path, rows, mode="append", partition_by=["day"],  # row groups of 100
                    writer_properties=WriterProperties(max_row_group_size=100))

    reader = DeltaStreamReader(SCHEMA, {"path": path, "rowsPerPartition": "300"})
    pieces = reader.partitions({"version": -1}, {"version": 1})
    sliced = [p for p in pieces if p.version == 0]
    grouped = [p for p in pieces if p.version == 1]
    assert [(p.row_groups, p.offset, p.length) for p in sliced] == [
        ((0,), 0, 250), ((0,), 250, 250), ((0,), 500, 250), ((0,), 750, 250)]
    assert [p.row_groups for p in grouped] == [(0, 1, 2), (3, 4, 5)]
    read = [r for p in pieces for b in reader.read(p) for r in b.to_pylist()]
    assert sorted(r["id"] for r in read) == list(range(1600))
    assert all(r["day"] == ("d0" if r["id"] < 1000 else "d1") for r in read)
