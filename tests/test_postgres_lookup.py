"""The PostgreSQL dimension path against a real server: upserts, the batched TTL-cached lookup,
outages (terminated backends, refused connections), and the Spark join built on it."""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from fixtures_postgres import PgServer, TcpProxy, pg_schema, pg_server  # noqa: F401
from psycopg import sql
from pyspark.sql import SparkSession

from pipelines.config import ConfigError, conf_dir, load_settings
from pipelines.dimensions.enrich import enrich_via_lookup, lesson_enricher
from pipelines.dimensions.lookup import LessonLookup
from pipelines.dimensions.model import DimensionRows, dimension_rows
from pipelines.dimensions.store import load_postgres_dimensions, publish_dimensions
from pipelines.io.postgres import (
    PASSWORD_ENV,
    PostgresUnavailable,
    RetryPolicy,
    conninfo_from_settings,
    describe,
)

START_MS = 1_767_225_600_000
FAST_RETRY = RetryPolicy(total_s=20, initial_backoff_s=0.05, max_backoff_s=0.2)


class FakeClock:
    """The lookup's TTL clock, moved by hand: TTL tests need no sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def dims(pg_server: PgServer, pg_schema: str) -> DimensionRows:  # noqa: F811
    rows = dimension_rows(seed=41, classrooms=25, start_ms=START_MS)
    load_postgres_dimensions(pg_server.conninfo(), rows, pg_schema)
    return rows


@pytest.fixture
def proxy(pg_server: PgServer) -> Iterator[TcpProxy]:  # noqa: F811
    px = TcpProxy(pg_server.host, pg_server.port)
    yield px
    px.shutdown()


def via(pg_server: PgServer, proxy: TcpProxy, **extra: object) -> str:  # noqa: F811
    """A conninfo through the proxy (plain protocol, so the proxy can count round trips)."""
    return pg_server.conninfo(port=proxy.port, sslmode="disable", gssencmode="disable", **extra)


def execute(pg_server: PgServer, query: sql.Composable, *params: object) -> None:  # noqa: F811
    with psycopg.connect(pg_server.conninfo(), autocommit=True) as conn:
        conn.execute(query, params or None)


def test_load_postgres_dimensions_upserts(pg_server: PgServer, pg_schema: str,  # noqa: F811
                                          dims: DimensionRows) -> None:
    again = load_postgres_dimensions(pg_server.conninfo(), dims, pg_schema)
    assert again == {"lesson": 0, "classroom": 0, "teacher": 0, "student": 0}
    moved = replace(dims.lessons[3], av_vendor_line="vendor-z:line-9")
    more = dimension_rows(seed=42, classrooms=5, start_ms=START_MS)
    changed = load_postgres_dimensions(
        pg_server.conninfo(), DimensionRows((moved, *more.lessons), (), (), ()), pg_schema)
    assert changed["lesson"] == 6
    with psycopg.connect(pg_server.conninfo()) as conn:
        count, line = conn.execute(sql.SQL(
            "SELECT count(*), max(av_vendor_line) FILTER (WHERE lesson_id = %s) FROM {}"
        ).format(sql.Identifier(pg_schema, "lesson")), (moved.lesson_id,)).fetchone()
    assert (count, line) == (30, "vendor-z:line-9")


def test_lookup_batches_and_caches(pg_server: PgServer, pg_schema: str,  # noqa: F811
                                   dims: DimensionRows, proxy: TcpProxy) -> None:
    known = [r.lesson_id for r in dims.lessons]
    unknown = [f"nope-{i}" for i in range(5)]
    asked = known + unknown + known[:7]  # duplicates are asked once
    with LessonLookup(via(pg_server, proxy), pg_schema, ttl_s=60, max_batch=10) as lookup:
        found = lookup.lookup(asked)
        assert found == {r.lesson_id: r for r in dims.lessons}
        assert lookup.stats.round_trips == 3 == proxy.round_trips  # 30 distinct ids / 10
        assert lookup.stats.unknown == 5
        again = lookup.lookup(reversed(asked))
        assert again == found
        assert lookup.stats.round_trips == 3 == proxy.round_trips  # all from the cache
        # Only the ids not cached yet go to the database, in one round trip.
        lookup.lookup([*known, "fresh-1", "fresh-2"])
        assert lookup.stats.round_trips == 4 == proxy.round_trips
        assert lookup.stats.fetched == 32
        assert proxy.connections == 1


def test_ttl_expiry_refetches(pg_server: PgServer, pg_schema: str,  # noqa: F811
                              dims: DimensionRows) -> None:
    clock = FakeClock()
    lesson = dims.lessons[0]
    with LessonLookup(pg_server.conninfo(), pg_schema, ttl_s=30, clock=clock) as lookup:
        assert lookup.lookup([lesson.lesson_id])[lesson.lesson_id] == lesson
        execute(pg_server, sql.SQL("UPDATE {} SET av_vendor_line = 'vendor-b:line-2' "
                                   "WHERE lesson_id = %s").format(
                                       sql.Identifier(pg_schema, "lesson")), lesson.lesson_id)
        clock.now += 29
        assert lookup.lookup([lesson.lesson_id])[lesson.lesson_id] == lesson  # still cached
        assert lookup.stats.round_trips == 1
        clock.now += 2
        refreshed = lookup.lookup([lesson.lesson_id])[lesson.lesson_id]
        assert refreshed.av_vendor_line == "vendor-b:line-2"
        assert lookup.stats.round_trips == 2


def test_unknown_ids_are_cached_for_the_shorter_negative_ttl(
        pg_server: PgServer, pg_schema: str, dims: DimensionRows) -> None:  # noqa: F811
    clock = FakeClock()
    late = dimension_rows(seed=43, classrooms=1, start_ms=START_MS)
    late_id = late.lessons[0].lesson_id
    with LessonLookup(pg_server.conninfo(), pg_schema, ttl_s=300, negative_ttl_s=10,
                      clock=clock) as lookup:
        assert lookup.lookup([late_id]) == {}
        load_postgres_dimensions(pg_server.conninfo(), late, pg_schema)  # published just after
        clock.now += 9
        assert lookup.lookup([late_id]) == {}  # negative entry still valid: no query
        assert lookup.stats.round_trips == 1
        clock.now += 2
        assert lookup.lookup([late_id]) == {late_id: late.lessons[0]}
        assert lookup.stats.round_trips == 2
        clock.now += 200  # now a positive entry: the long TTL applies
        lookup.lookup([late_id])
        assert lookup.stats.round_trips == 2


def test_cache_stays_bounded(pg_server: PgServer, pg_schema: str,  # noqa: F811
                             dims: DimensionRows) -> None:
    with LessonLookup(pg_server.conninfo(), pg_schema, max_entries=10) as lookup:
        found = lookup.lookup(r.lesson_id for r in dims.lessons)
        assert len(found) == 25 and len(lookup) == 10


def test_reconnects_after_the_backend_was_terminated(
        pg_server: PgServer, pg_schema: str, dims: DimensionRows) -> None:  # noqa: F811
    app = f"lookup-test-{uuid.uuid4().hex[:8]}"
    ids = [r.lesson_id for r in dims.lessons]
    with LessonLookup(pg_server.conninfo(application_name=app), pg_schema,
                      retry=FAST_RETRY) as lookup:
        assert len(lookup.lookup(ids[:10])) == 10
        with psycopg.connect(pg_server.conninfo(), autocommit=True) as admin:
            killed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM "
                                   "pg_stat_activity WHERE application_name = %s",
                                   (app,)).fetchone()
        assert killed == (1,)
        assert lookup.lookup(ids) == {r.lesson_id: r for r in dims.lessons}  # none lost
        assert lookup.session.connects == 2 and lookup.session.retries >= 1


def test_retries_while_connections_are_refused_then_succeeds(
        pg_server: PgServer, pg_schema: str, dims: DimensionRows,  # noqa: F811
        proxy: TcpProxy) -> None:
    ids = [r.lesson_id for r in dims.lessons]
    with LessonLookup(via(pg_server, proxy), pg_schema, max_batch=10,
                      retry=FAST_RETRY) as lookup:
        assert len(lookup.lookup(ids[:5])) == 5
        proxy.close()  # the open connection is cut and new ones are refused ...
        back = threading.Timer(1.0, proxy.reopen)  # ... for a second
        back.start()
        t0 = time.monotonic()
        try:
            found = lookup.lookup([*ids, "nope"])
        finally:
            back.join()
        assert time.monotonic() - t0 >= 0.9
        assert found == {r.lesson_id: r for r in dims.lessons}
        assert lookup.session.retries >= 2 and lookup.session.connects == 2
        assert lookup.stats.round_trips == 1 + 3  # 5, then the 21 others in batches of 10


def test_gives_up_with_a_clear_error_and_loses_nothing(
        pg_server: PgServer, pg_schema: str, dims: DimensionRows,  # noqa: F811
        proxy: TcpProxy) -> None:
    ids = [r.lesson_id for r in dims.lessons]
    policy = RetryPolicy(total_s=0.6, initial_backoff_s=0.05, max_backoff_s=0.1)
    conninfo = via(pg_server, proxy, password="not-for-logs")
    with LessonLookup(conninfo, pg_schema, retry=policy) as lookup:
        proxy.close()
        t0 = time.monotonic()
        with pytest.raises(PostgresUnavailable) as err:
            lookup.lookup(ids)
        assert 0.5 <= time.monotonic() - t0 < 10
        message = str(err.value)
        assert f"127.0.0.1:{proxy.port}" in message and "gave up after 0.6 s" in message
        assert "not-for-logs" not in message
        assert len(lookup) == 0  # nothing cached from the failed call
        proxy.reopen()
        assert lookup.lookup(ids) == {r.lesson_id: r for r in dims.lessons}


def test_enrich_via_lookup_one_round_trip_per_micro_batch(
        spark: SparkSession, pg_server: PgServer, pg_schema: str,  # noqa: F811
        dims: DimensionRows, proxy: TcpProxy) -> None:
    lessons = dims.lessons[:20]
    data = [(f"e{i}-{k}", r.classroom_id, r.lesson_id, r.student_id, "student")
            for i, r in enumerate(lessons) for k in range(50)]
    data += [("u1", "cr-x", "no-such-lesson", "stu-x", "student"),
             ("u2", "cr-x", None, "stu-x", "student")]
    events = spark.createDataFrame(
        data, "event_id string, classroom_id string, lesson_id string, user_id string, "
              "role string")
    with LessonLookup(via(pg_server, proxy), pg_schema) as lookup:
        enrich = enrich_via_lookup(lookup)
        out = enrich(events)
        rows = out.collect()
        assert lookup.stats.round_trips == 1 == proxy.round_trips
        assert len(rows) == 1002
        by_id = {r.event_id: r for r in rows}
        assert not by_id["u1"].lesson_known and not by_id["u2"].lesson_known
        assert sum(r.lesson_known for r in rows) == 1000
        expected = {r.lesson_id: r for r in lessons}
        for r in rows:
            if r.lesson_known:
                assert (r.teacher_id, r.course) == (expected[r.lesson_id].teacher_id,
                                                     expected[r.lesson_id].course)
        enrich(events).count()  # the next micro-batch: the same lessons come from the cache
        assert lookup.stats.round_trips == 1 == proxy.round_trips


def test_publish_to_postgres_and_lookup_from_settings(
        spark: SparkSession, pg_server: PgServer, pg_schema: str,  # noqa: F811
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**os.environ, "LAKEHOUSE_ROOT": str(tmp_path), "LAKEHOUSE__DIMENSIONS__SOURCE":
           "postgres", **pg_server.env(pg_schema)}
    settings = load_settings("local", environ=env)
    assert publish_dimensions(settings, classrooms=4, seed=44, start_ms=START_MS,
                              environ=env) == {"lesson": 4, "classroom": 4, "teacher": 4,
                                               "student": 4}
    assert not (tmp_path / "dim").exists()  # nothing went to Delta
    rows = dimension_rows(seed=44, classrooms=4, start_ms=START_MS)
    with LessonLookup.from_settings(settings, environ=env) as lookup:
        assert lookup.ttl_s == settings.dimensions.ttl_s
        assert lookup.lookup(r.lesson_id for r in rows.lessons) == {
            r.lesson_id: r for r in rows.lessons}
    # The configured enricher goes through PostgreSQL (silver calls it once per micro-batch).
    if pg_server.password:  # the enricher takes the password from the process environment
        monkeypatch.setenv(PASSWORD_ENV, pg_server.password)
    enrich = lesson_enricher(settings)(spark)
    events = spark.createDataFrame([(r.lesson_id,) for r in rows.lessons] + [("nope",)],
                                   "lesson_id string")
    assert sorted(r.lesson_known for r in enrich(events).collect()) == [False] + [True] * 4


def test_password_only_from_the_environment(tmp_path: Path) -> None:
    cfg = load_settings("local", environ={}).postgres
    assert "password" not in conninfo_from_settings(cfg, environ={})
    conninfo = conninfo_from_settings(cfg, environ={PASSWORD_ENV: "s3cret"})
    assert "password=s3cret" in conninfo and "s3cret" not in describe(conninfo)
    conf = tmp_path / "conf"
    shutil.copytree(conf_dir(), conf)
    with (conf / "local.yaml").open("a") as fh:
        fh.write("\npostgres:\n  password: s3cret\n")
    with pytest.raises(ConfigError, match=r"postgres\.password is a secret"):
        load_settings("local", environ={"LAKEHOUSE_CONF_DIR": str(conf)})
