"""Silver enrichment with the lesson dimension: a left join that keeps and flags unknowns.

Two sources, one join:
- Delta (`local`): `read_lesson_dim` reads `dim.lesson` as it is now; silver's foreachBatch calls
  it once per micro-batch (stream-static), so lessons written after the query started are seen.
- PostgreSQL (`cluster`, tests): `enrich_via_lookup` asks a `LessonLookup` for the micro-batch's
  distinct lesson ids in one batched call on the driver and joins the small result.

An event whose lesson is unknown (not yet published, mistyped, or missing) is never dropped:
it gets null lesson attributes and `lesson_known = false`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.config import DimensionSource, Settings
from pipelines.dimensions.model import LESSON, LessonRow
from pipelines.dimensions.store import dim_table
from pipelines.io.delta import delta_writer

if TYPE_CHECKING:
    from pipelines.dimensions.lookup import LessonLookup

Transform = Callable[[DataFrame], DataFrame]
LESSON_ATTRIBUTES = tuple(c for c in LESSON.columns if c != LESSON.key)
_DIM_KEY = "_dim_lesson_id"


def lessons_frame(spark: SparkSession, rows: Iterable[LessonRow]) -> DataFrame:
    """A (small) DataFrame of lesson rows with the lesson dimension's schema."""
    return spark.createDataFrame(LESSON.to_arrow(rows))


def read_lesson_dim(spark: SparkSession, settings: Settings) -> DataFrame:
    """`dim.lesson` as of now (an empty frame of the same schema when it does not exist yet).

    Call it per micro-batch: the read is what makes the stream-static join see new lessons.
    """
    writer = delta_writer(settings)
    path = settings.table_path(dim_table(LESSON))
    if not writer.exists(path):
        return lessons_frame(spark, ())
    return writer.read(spark, path).select(*LESSON.columns)


def _join_lessons(events: DataFrame, lessons: DataFrame, *, dedupe: bool) -> DataFrame:
    # Attributes the events already carry (classroom_id) keep the event's own value.
    attrs = [c for c in LESSON_ATTRIBUTES if c not in events.columns]
    dim = lessons.select(F.col(LESSON.key).alias(_DIM_KEY), *attrs)
    if dedupe:  # a duplicated key in the dimension must not duplicate events
        dim = dim.dropDuplicates([_DIM_KEY])
    joined = events.join(dim, events[LESSON.key] == dim[_DIM_KEY], "left")
    return joined.withColumn("lesson_known", F.col(_DIM_KEY).isNotNull()).drop(_DIM_KEY)


def enrich_with_lessons(lessons: DataFrame) -> Transform:
    """events -> events + lesson attributes + `lesson_known`, by a left join on lesson_id.

    Row count and event columns are unchanged; an event column of the same name as a lesson
    attribute (classroom_id) is kept as the event sent it.
    """

    def enrich(events: DataFrame) -> DataFrame:
        return _join_lessons(events, lessons, dedupe=True)

    return enrich


def distinct_lesson_ids(events: DataFrame) -> list[str]:
    """The micro-batch's distinct non-null lesson ids, collected to the driver (thousands)."""
    ids = events.where(F.col(LESSON.key).isNotNull()).select(LESSON.key).distinct()
    return [row[0] for row in ids.collect()]


def enrich_via_lookup(lookup: LessonLookup) -> Transform:
    """`enrich_with_lessons` with the lessons fetched through `lookup`, not a table scan.

    One `lookup.lookup` call per micro-batch for its distinct lesson ids (the lookup batches
    and caches them), a broadcast join of the result: no per-row round trip and no UDF. The
    events are evaluated twice (distinct ids, then the join): persist them first if costly.
    """

    def enrich(events: DataFrame) -> DataFrame:
        found = lookup.lookup(distinct_lesson_ids(events))
        lessons = lessons_frame(events.sparkSession, found.values())
        return _join_lessons(events, F.broadcast(lessons), dedupe=False)

    return enrich


def enrichment_reads_once(settings: Settings) -> bool:
    """Whether the configured enrichment evaluates its events once (the Delta join) or twice
    (the lookup collects the distinct ids first): a caller persists the events for the latter."""
    return settings.dimensions.source is not DimensionSource.POSTGRES


def lesson_enricher(settings: Settings) -> Callable[[SparkSession], Transform]:
    """The configured source's enrichment: call the result once per micro-batch.

    `dimensions.source: delta` re-reads `dim.lesson` on each call; `postgres` reuses one
    `LessonLookup` (and so its cache and connection) across micro-batches.
    """
    if settings.dimensions.source is DimensionSource.POSTGRES:
        from pipelines.dimensions.lookup import LessonLookup

        by_lookup = enrich_via_lookup(LessonLookup.from_settings(settings))
        return lambda _spark: by_lookup
    return lambda spark: enrich_with_lessons(read_lesson_dim(spark, settings))
