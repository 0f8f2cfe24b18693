"""The delta-rs streaming source (silver's reader of bronze in the `local` profile): one
partition per table version, partition values filled in, every appended row exactly once."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
from deltalake import write_deltalake
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
    assert [p.version for p in pieces] == [0, 1, 2]
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
