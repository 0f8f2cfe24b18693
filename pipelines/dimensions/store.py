"""Writing dimension rows: Delta tables `dim.<name>` or PostgreSQL `<schema>.<name>`.

Both writers merge by key, so re-running a simulation (or two runs with different seeds into
the same store) never duplicates a row and never loses one. Spark is not needed here: the rows
are small and built on one machine, and the simulator calls `publish_dimensions`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import astuple
from typing import Any

from pipelines.config import DeltaEngine, DimensionSource, Settings
from pipelines.dimensions.model import DimensionRows, TableSpec, dimension_rows
from pipelines.io.postgres import (
    PgSession,
    RetryPolicy,
    conninfo_from_settings,
    create_table,
    upsert_rows,
)


def dim_table(spec: TableSpec) -> str:
    """The table name in the lakehouse: `dim.lesson`, ..."""
    return f"dim.{spec.name}"


def write_delta_dimensions(settings: Settings, rows: DimensionRows) -> dict[str, int]:
    """Merge each dimension into its Delta table under the storage root, by key.

    Returns the number of rows per table after the write.
    """
    if settings.delta.engine is DeltaEngine.DELTA_SPARK:  # pragma: no cover - needs the jars
        return _write_delta_spark(settings, rows)
    from deltalake import DeltaTable, write_deltalake

    counts: dict[str, int] = {}
    for spec, table_rows in rows.tables():
        path = settings.table_path(dim_table(spec))
        data = spec.to_arrow(table_rows)
        if not DeltaTable.is_deltatable(path):
            write_deltalake(path, data, mode="error")
        elif data.num_rows:
            changed = " OR ".join(f"(t.{c} IS DISTINCT FROM s.{c})" for c in spec.columns
                                  if c != spec.key)
            (DeltaTable(path)
             .merge(data, predicate=f"t.{spec.key} = s.{spec.key}", source_alias="s",
                    target_alias="t")
             .when_matched_update_all(predicate=changed)
             .when_not_matched_insert_all()
             .execute())
        counts[spec.name] = DeltaTable(path).to_pyarrow_dataset().count_rows()
    return counts


def _write_delta_spark(settings: Settings, rows: DimensionRows
                       ) -> dict[str, int]:  # pragma: no cover - needs the jars
    """The same merge through delta-spark, on the active session (cluster profile)."""
    from delta.tables import DeltaTable
    from pyspark.sql import SparkSession

    spark = SparkSession.getActiveSession()
    if spark is None:
        raise RuntimeError("the delta-spark engine needs an active SparkSession")
    counts: dict[str, int] = {}
    for spec, table_rows in rows.tables():
        path = settings.table_path(dim_table(spec))
        data = spark.createDataFrame(spec.to_arrow(table_rows))
        if not DeltaTable.isDeltaTable(spark, path):
            data.write.format("delta").mode("errorifexists").save(path)
        else:
            (DeltaTable.forPath(spark, path).alias("t")
             .merge(data.alias("s"), f"t.{spec.key} = s.{spec.key}")
             .whenMatchedUpdateAll().whenNotMatchedInsertAll().execute())
        counts[spec.name] = spark.read.format("delta").load(path).count()
    return counts


def load_postgres_dimensions(conninfo: str, rows: DimensionRows, schema: str,
                             policy: RetryPolicy | None = None) -> dict[str, int]:
    """Create the tables if needed and upsert every dimension (COPY + ON CONFLICT), all in one
    transaction, retried as a whole if the server goes away. Returns rows changed per table."""

    def load(conn: Any) -> dict[str, int]:
        changed: dict[str, int] = {}
        with conn.transaction():
            for spec, table_rows in rows.tables():
                create_table(conn, schema, spec.name, spec.pg_columns(), spec.key)
                changed[spec.name] = upsert_rows(conn, schema, spec.name, spec.columns,
                                                 spec.key, (astuple(r) for r in table_rows))
        return changed

    session = PgSession(conninfo, policy)
    try:
        return session.run(load)
    finally:
        session.close()


def publish_dimensions(settings: Settings, *, classrooms: int, seed: int, start_ms: int,
                       environ: Mapping[str, str] | None = None) -> dict[str, int] | None:
    """Write the dimensions of a simulated run to the configured store (`dimensions.source`).

    Called by the simulator before it produces, so silver finds the lessons of the first
    events. None when `dimensions.write_on_simulate` is off.
    """
    cfg = settings.dimensions
    if not cfg.write_on_simulate:
        return None
    rows = dimension_rows(seed=seed, classrooms=classrooms, start_ms=start_ms)
    if cfg.source is DimensionSource.POSTGRES:
        return load_postgres_dimensions(conninfo_from_settings(settings.postgres, environ), rows,
                                        settings.postgres.schema_name,
                                        RetryPolicy.from_config(cfg))
    return write_delta_dimensions(settings, rows)
