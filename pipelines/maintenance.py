"""Table maintenance for the delta-rs profile: compact small files, vacuum old ones."""

from __future__ import annotations

from deltalake import DeltaTable

from pipelines.config import Settings

MAINTAINED_TABLES = (
    "bronze.events", "silver.av_quality", "silver.signal", "silver.whiteboard",
    "silver.enter_flow", "silver.help_requests", "silver.rejects", "gold.classroom_health_1m",
    "gold.help_tags", "ops.quality_metrics", "ops.stream_progress",
)


def compact_table(settings: Settings, table: str, *, retention_hours: int = 168) -> dict:
    """Compact a table's small files, then vacuum files older than the retention.

    Streaming micro-batches write many small files; readers of the compacted table see the same
    rows (compaction commits carry dataChange=false, which the Delta stream source skips).
    """
    path = settings.table_path(table)
    if not DeltaTable.is_deltatable(path):
        return {"table": table, "skipped": "does not exist"}
    dt = DeltaTable(path)
    metrics = dt.optimize.compact()
    removed = dt.vacuum(retention_hours=retention_hours, dry_run=False,
                        enforce_retention_duration=True)
    return {"table": table, "files_added": metrics.get("numFilesAdded"),
            "files_removed": metrics.get("numFilesRemoved"), "vacuumed": len(removed)}
