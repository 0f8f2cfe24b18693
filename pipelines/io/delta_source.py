"""Spark Python streaming data source over a delta-rs table (the `local` profile's Delta reader).

Lets silver read bronze as a stream without the delta-spark jar, like
`spark.readStream.format("delta")` does in the `cluster` profile. The offset is the last table
version processed ({"table": path, "version": v}); each micro-batch reads the rows appended
by the versions after it: the executors read the Parquet files those versions' `_delta_log`
commits added. A batch is cut into partitions of about `rowsPerPartition` rows (whole row
groups where they are small enough, slices of a large one), so one large version, or one
large file, still spreads over every core. Append-only tables only (bronze is): a version
that removes data is an error; compaction (`dataChange: false`) is skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pyarrow as pa
from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import StructType

from pipelines.io.kafka_source import last_logged_offset

FORMAT_NAME = "lakehouse_delta"


class DeltaSourceError(RuntimeError):
    """The table changed in a way an append-only stream cannot follow."""


DEFAULT_ROWS_PER_PARTITION = 40_000


@dataclass(frozen=True)
class FileSlice(InputPartition):
    """Rows `[offset, offset + length)` of the row groups `row_groups` of one added file."""

    path: str
    version: int
    file: str
    partition_values: tuple[tuple[str, str | None], ...]
    row_groups: tuple[int, ...]
    offset: int = 0
    length: int | None = None


def _slices(path: str, version: int, add: dict, target_rows: int) -> list[FileSlice]:
    """One added file as partitions of about `target_rows` rows, from its Parquet footer."""
    import pyarrow.parquet as pq

    file = unquote(add["path"])
    values = tuple(sorted((add.get("partitionValues") or {}).items()))
    meta = pq.read_metadata(Path(path) / file)
    pieces: list[FileSlice] = []
    group: list[int] = []
    rows = 0
    for i in range(meta.num_row_groups):
        n = meta.row_group(i).num_rows
        if n > target_rows:  # a large group: slices of it, each reading that group alone
            parts = -(-n // target_rows)
            step = -(-n // parts)
            pieces += [FileSlice(path, version, file, values, (i,), start, min(step, n - start))
                       for start in range(0, n, step)]
            continue
        if group and rows + n > target_rows:
            pieces.append(FileSlice(path, version, file, values, tuple(group)))
            group, rows = [], 0
        group.append(i)
        rows += n
    if group:
        pieces.append(FileSlice(path, version, file, values, tuple(group)))
    return pieces


def _added_files(path: str, version: int) -> list[dict]:
    """The files a commit added, from its `_delta_log` entry; removals are not followed."""
    log = Path(path) / "_delta_log" / f"{version:020d}.json"
    added = []
    for line in log.read_text().splitlines():
        action = json.loads(line)
        if "add" in action and action["add"].get("dataChange", True):
            added.append(action["add"])
        elif "remove" in action and action["remove"].get("dataChange", True):
            raise DeltaSourceError(f"{path} v{version} removes data; the stream is append-only")
    return added


class DeltaStreamReader(DataSourceStreamReader):
    def __init__(self, schema: StructType, options: Mapping[str, str]) -> None:
        opts = {k.lower(): v for k, v in options.items()}
        self.path = opts["path"]
        self.schema = schema
        self.max_versions = max(int(opts.get("maxversionspertrigger", "10")), 1)
        self.rows_per_partition = max(
            int(opts.get("rowsperpartition", DEFAULT_ROWS_PER_PARTITION)), 1)
        self._last_end: int | None = None
        checkpoint = opts.get("checkpointlocation")
        if checkpoint:
            entry = last_logged_offset(checkpoint, lambda e: e.get("table") == self.path)
            if entry is not None:
                self._last_end = int(entry["version"])

    def _table_version(self) -> int:
        from deltalake import DeltaTable

        if not DeltaTable.is_deltatable(self.path):
            return -1
        return DeltaTable(self.path).version()

    def initialOffset(self) -> dict:
        self._last_end = -1
        return self.offset(-1)

    def offset(self, version: int) -> dict:
        """The offset JSON: the table names it, so a query reading several tables can tell
        its sources' entries apart in the offset log."""
        return {"table": self.path, "version": version}

    def latestOffset(self) -> dict:
        start = self._last_end if self._last_end is not None else -1
        end = min(self._table_version(), start + self.max_versions)
        self._last_end = max(end, start)
        return self.offset(self._last_end)

    def partitions(self, start: dict, end: dict) -> list[FileSlice]:
        return [piece
                for v in range(int(start["version"]) + 1, int(end["version"]) + 1)
                for add in _added_files(self.path, v)
                for piece in _slices(self.path, v, add, self.rows_per_partition)]

    def read(self, partition: FileSlice) -> Iterator[pa.RecordBatch]:
        import pyarrow.parquet as pq

        target = to_arrow_schema(self.schema)
        file = pq.ParquetFile(Path(self.path) / partition.file)
        wanted = [c for c in target.names if c in file.schema_arrow.names]
        data = file.read_row_groups(list(partition.row_groups), columns=wanted)
        if partition.length is not None:
            data = data.slice(partition.offset, partition.length)
        for column, value in partition.partition_values:
            if column in target.names and column not in data.column_names:
                values = pa.array([value] * data.num_rows, pa.string())
                data = data.append_column(column, values.cast(target.field(column).type))
        yield from data.select(target.names).cast(target).to_batches()

    def commit(self, end: dict) -> None:
        """Progress lives in Spark's checkpoint."""


class DeltaRsStreamSource(DataSource):
    """`spark.readStream.format("lakehouse_delta").schema(s).load(path)`."""

    @classmethod
    def name(cls) -> str:
        return FORMAT_NAME

    def schema(self) -> StructType:
        raise DeltaSourceError("give the table schema: readStream.schema(...)")

    def streamReader(self, schema: StructType) -> DeltaStreamReader:
        return DeltaStreamReader(schema, self.options)
