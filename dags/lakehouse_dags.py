"""Airflow DAGs for classroom-lakehouse: catch-up runs, post-class analytics, maintenance.

The streaming jobs run continuously beside these; the DAGs do the batch side. Parsing this
file touches no database, connection or Spark: every heavy import happens inside a task.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import dag, task

DEFAULT_ARGS = {"owner": "data-platform", "retries": 2, "retry_delay": timedelta(minutes=2)}


@dag(
    dag_id="lakehouse_catch_up",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    tags=["classroom-lakehouse", "backfill"],
    default_args=DEFAULT_ARGS,
)
def lakehouse_catch_up() -> None:
    """Process everything Kafka and bronze hold now through bronze, silver and gold, then stop;
    check silver against the contract's Great Expectations suites.

    For recovery after downtime, or a backfill after replaying rejects: each job resumes from
    its checkpoint and writes exactly once, so re-running this DAG is safe.
    """

    @task
    def bronze() -> str:
        from pipelines.config import load_settings
        from pipelines.jobs.bronze import run_bronze_job

        return str(run_bronze_job(load_settings(), once=True))

    @task
    def silver(_: str) -> str:
        from pipelines.config import load_settings
        from pipelines.jobs.silver import run_silver_job

        return str(run_silver_job(load_settings(), once=True))

    @task
    def gold(_: str) -> str:
        from pipelines.config import load_settings
        from pipelines.jobs.gold import run_gold_job

        return str(run_gold_job(load_settings(), once=True))

    @task
    def quality_checkpoint(_: str) -> dict[str, dict[str, int]]:
        """The contract as Great Expectations suites over every silver table; fails the run
        (after its retries) when a table breaks a rule the stream should have enforced."""
        from pipelines.config import load_settings
        from pipelines.transforms.silver import SILVER_TABLES
        from quality.expectations import check_silver_table

        settings = load_settings()
        failed = {}
        for table in SILVER_TABLES.values():
            report = check_silver_table(settings, table)
            if not report.success:
                failed[table] = {rule: n for rule, n in report.failed.items() if n}
        if failed:
            raise ValueError(f"silver breaks the contract: {failed}")
        return failed

    silvered = silver(bronze())
    gold(silvered)
    quality_checkpoint(silvered)


@dag(
    dag_id="lakehouse_maintenance",
    schedule="@daily",
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    tags=["classroom-lakehouse", "maintenance"],
    default_args=DEFAULT_ARGS,
)
def lakehouse_maintenance() -> None:
    """Compact the small files streaming leaves behind and vacuum old ones, table by table."""

    @task
    def tables() -> list[str]:
        from pipelines.maintenance import MAINTAINED_TABLES

        return list(MAINTAINED_TABLES)

    @task
    def compact(table: str) -> dict:
        from pipelines.config import load_settings
        from pipelines.maintenance import compact_table

        return compact_table(load_settings(), table)

    compact.expand(table=tables())


lakehouse_catch_up()
lakehouse_maintenance()
