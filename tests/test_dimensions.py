"""Dimension rows vs the simulator, Delta dimension tables, and the stream-static enrichment."""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
from deltalake import DeltaTable
from pyspark.sql import DataFrame, Row, SparkSession

from pipelines.config import Settings, load_settings
from pipelines.dimensions.enrich import (
    LESSON_ATTRIBUTES,
    enrich_with_lessons,
    lesson_enricher,
    lessons_frame,
    read_lesson_dim,
)
from pipelines.dimensions.model import LESSON, TABLES, DimensionRows, dimension_rows
from pipelines.dimensions.store import publish_dimensions, write_delta_dimensions
from pipelines.simulator import GOOD, generate_events

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
EVENT_DDL = "event_id string, classroom_id string, lesson_id string, user_id string, role string"


def local_settings(root: Path, **env: str) -> Settings:
    return load_settings("local", environ={**os.environ, "LAKEHOUSE_ROOT": str(root), **env})


def test_dimensions_cover_every_simulated_event() -> None:
    """Every lesson_id, classroom and user an event carries (bad input included) has its row."""
    cfg = load_settings("local", environ={}).simulator
    by_lesson: dict[str, set[tuple[str, str, str]]] = defaultdict(set)
    for ev in generate_events(cfg, classrooms=25, duration_s=90, seed=11, start_ms=START_MS):
        try:
            body = orjson.loads(ev.value)
        except orjson.JSONDecodeError:
            continue  # injected malformed JSON: no lesson to look up
        if isinstance(body, dict) and isinstance(body.get("lesson_id"), str):
            ids = by_lesson[body["lesson_id"]]  # every lesson id, bad input included
            if ev.kind == GOOD:  # and every identity of a well-formed event
                ids.add((body["classroom_id"], body["role"], body["user_id"]))
    rows = dimension_rows(seed=11, classrooms=25, start_ms=START_MS)
    lessons = {r.lesson_id: r for r in rows.lessons}
    assert len(by_lesson) == 25 and set(by_lesson) == set(lessons)
    for lesson_id, seen in by_lesson.items():
        row = lessons[lesson_id]
        assert {role for _, role, _ in seen} == {"teacher", "student"}
        for classroom_id, role, user_id in seen:
            assert classroom_id == row.classroom_id
            assert user_id == {"teacher": row.teacher_id, "student": row.student_id}[role]
    assert {r.classroom_id for r in rows.classrooms} == {r.classroom_id for r in rows.lessons}
    assert {r.teacher_id for r in rows.teachers} == {r.teacher_id for r in rows.lessons}
    assert {r.student_id for r in rows.students} == {r.student_id for r in rows.lessons}
    for row in rows.lessons:
        assert row.scheduled_start.timestamp() * 1000 == START_MS
        assert row.scheduled_end > row.scheduled_start
        assert row.course and row.region and row.av_vendor_line


def test_dimension_rows_are_deterministic_and_independent_of_run_size() -> None:
    a = dimension_rows(seed=3, classrooms=40, start_ms=START_MS)
    assert a == dimension_rows(seed=3, classrooms=40, start_ms=START_MS)
    # Lesson i is the same whatever the number of classrooms beside it (as in the simulator).
    assert a.lessons[:10] == dimension_rows(seed=3, classrooms=10, start_ms=START_MS).lessons
    other = dimension_rows(seed=4, classrooms=40, start_ms=START_MS)
    assert not {r.lesson_id for r in a.lessons} & {r.lesson_id for r in other.lessons}
    for spec, table_rows in a.tables():
        assert spec.to_arrow(table_rows).num_rows == len(table_rows) == 40
        assert spec.to_arrow([]).schema == spec.arrow_schema()


def test_write_delta_dimensions_merges_by_key(tmp_path: Path) -> None:
    settings = local_settings(tmp_path)
    first = dimension_rows(seed=5, classrooms=30, start_ms=START_MS)
    assert write_delta_dimensions(settings, first) == {t.name: 30 for t in TABLES}
    lesson_path = settings.table_path("dim.lesson")
    version = DeltaTable(lesson_path).version()
    # A re-run changes nothing, not even the table version.
    assert write_delta_dimensions(settings, first) == {t.name: 30 for t in TABLES}
    assert DeltaTable(lesson_path).version() == version
    # Another seed adds its rows; a changed row is updated in place, not duplicated.
    moved = first.lessons[0].__class__(**{**_asdict(first.lessons[0]),
                                          "av_vendor_line": "vendor-z:line-9"})
    second = dimension_rows(seed=6, classrooms=10, start_ms=START_MS)
    merged = DimensionRows((moved, *second.lessons), second.classrooms, second.teachers,
                           second.students)
    assert write_delta_dimensions(settings, merged) == {t.name: 40 for t in TABLES}
    table = DeltaTable(lesson_path).to_pyarrow_table().to_pylist()
    assert len(table) == len({r["lesson_id"] for r in table}) == 40
    assert next(r for r in table if r["lesson_id"] == moved.lesson_id)["av_vendor_line"] == (
        "vendor-z:line-9")


def test_publish_dimensions_follows_conf(tmp_path: Path) -> None:
    off = local_settings(tmp_path / "off", LAKEHOUSE__DIMENSIONS__WRITE_ON_SIMULATE="false")
    assert publish_dimensions(off, classrooms=3, seed=1, start_ms=START_MS) is None
    assert not (tmp_path / "off").exists()
    on = local_settings(tmp_path / "on")
    assert publish_dimensions(on, classrooms=3, seed=1, start_ms=START_MS) == {
        t.name: 3 for t in TABLES}


def _asdict(row: object) -> dict[str, object]:
    return {name: getattr(row, name) for name in LESSON.columns}


def _events(spark: SparkSession, rows: DimensionRows, extra: list[tuple]) -> DataFrame:
    data = [(f"e{i}-{role}", r.classroom_id, r.lesson_id,
             r.teacher_id if role == "teacher" else r.student_id, role)
            for i, r in enumerate(rows.lessons) for role in ("teacher", "student")]
    return spark.createDataFrame(data + extra, EVENT_DDL)


def test_delta_enrichment_keeps_and_flags_unknown_lessons(spark: SparkSession,
                                                          tmp_path: Path) -> None:
    settings = local_settings(tmp_path)
    rows = dimension_rows(seed=21, classrooms=12, start_ms=START_MS)
    write_delta_dimensions(settings, rows)
    unknown = [("u1", "cr-x", "no-such-lesson", "stu-x", "student"),
               ("u2", "cr-x", None, "stu-x", "student")]
    events = _events(spark, rows, unknown)
    out = enrich_with_lessons(read_lesson_dim(spark, settings))(events)
    assert out.columns == [*events.columns, *[c for c in LESSON_ATTRIBUTES if c not in
                                              events.columns], "lesson_known"]
    result = {r.event_id: r for r in out.collect()}
    assert len(result) == events.count() == 26
    lessons = {r.lesson_id: r for r in rows.lessons}
    for event_id in ("u1", "u2"):
        assert result[event_id].lesson_known is False
        assert result[event_id].teacher_id is None and result[event_id].course is None
        assert result[event_id].classroom_id == "cr-x"  # the event's own value is kept
    for r in (r for r in result.values() if r.event_id not in ("u1", "u2")):
        lesson = lessons[r.lesson_id]
        assert r.lesson_known is True
        assert (r.teacher_id, r.student_id, r.course, r.region, r.av_vendor_line) == (
            lesson.teacher_id, lesson.student_id, lesson.course, lesson.region,
            lesson.av_vendor_line)
        assert r.scheduled_start == lesson.scheduled_start.replace(tzinfo=None)


def test_enrichment_never_duplicates_events_on_duplicate_dimension_keys(
        spark: SparkSession) -> None:
    rows = dimension_rows(seed=22, classrooms=3, start_ms=START_MS)
    lessons = lessons_frame(spark, rows.lessons + rows.lessons)
    out = enrich_with_lessons(lessons)(_events(spark, rows, []))
    assert out.count() == 6 and out.where("lesson_known").count() == 6


def test_missing_dimension_table_flags_everything_unknown(spark: SparkSession,
                                                          tmp_path: Path) -> None:
    settings = local_settings(tmp_path)
    lessons = read_lesson_dim(spark, settings)
    assert lessons.count() == 0 and lessons.columns == list(LESSON.columns)
    rows = dimension_rows(seed=23, classrooms=2, start_ms=START_MS)
    out = enrich_with_lessons(lessons)(_events(spark, rows, []))
    assert out.count() == 4 and out.where("lesson_known").count() == 0


def test_stream_static_join_sees_lessons_published_after_the_query_started(
        spark: SparkSession, tmp_path: Path) -> None:
    """Re-reading dim.lesson per micro-batch: a lesson written between batches is found."""
    settings = local_settings(tmp_path)
    early = dimension_rows(seed=31, classrooms=2, start_ms=START_MS)
    late = dimension_rows(seed=32, classrooms=1, start_ms=START_MS)
    write_delta_dimensions(settings, early)
    inbox = tmp_path / "inbox"
    inbox.mkdir()

    def drop(name: str, lesson_ids: list[str]) -> None:
        lines = [json.dumps({"event_id": f"{name}-{i}", "classroom_id": "cr", "lesson_id": lid,
                             "user_id": "u", "role": "student"})
                 for i, lid in enumerate(lesson_ids)]
        tmp = inbox / f".{name}.tmp"
        tmp.write_text("\n".join(lines))
        tmp.rename(inbox / f"{name}.json")

    seen: list[Row] = []

    enricher = lesson_enricher(settings)  # dimensions.source: delta

    def silver_batch(batch: DataFrame, _batch_id: int) -> None:
        enrich = enricher(batch.sparkSession)  # re-reads dim.lesson every micro-batch
        seen.extend(enrich(batch).collect())

    late_id = late.lessons[0].lesson_id
    drop("b1", [early.lessons[0].lesson_id, late_id])
    query = (spark.readStream.schema(EVENT_DDL).json(str(inbox)).writeStream
             .foreachBatch(silver_batch).trigger(processingTime="0.5 seconds")
             .option("checkpointLocation", str(tmp_path / "chk")).start())
    try:
        query.processAllAvailable()
        write_delta_dimensions(settings, late)
        drop("b2", [late_id, early.lessons[1].lesson_id])
        deadline = time.monotonic() + 60
        while len(seen) < 4 and time.monotonic() < deadline:
            query.processAllAvailable()
    finally:
        query.stop()
    known = {r.event_id: r.lesson_known for r in seen}
    assert known == {"b1-0": True, "b1-1": False, "b2-0": True, "b2-1": True}


@pytest.mark.parametrize("env", [{"LAKEHOUSE__DIMENSIONS__SOURCE": "postgres"}, {}])
def test_dimension_conf_loads(env: dict[str, str]) -> None:
    settings = load_settings("local", environ=env)
    assert settings.dimensions.source.value == env.get("LAKEHOUSE__DIMENSIONS__SOURCE", "delta")
    assert settings.postgres.schema_name == "dim"
