"""`LessonLookup`: lesson rows from PostgreSQL by id, batched, TTL-cached, retrying.

Silver asks once per micro-batch for that batch's distinct lesson ids. Most are the same
lessons as in the last batch, so a TTL cache answers them without the database; the rest go in
as few round trips as possible (`WHERE lesson_id = ANY(%s)`, `max_batch` ids each). Ids the
database does not know are cached as unknown for a shorter time (a lesson published a moment
later is found soon; a bogus id does not cost a query per batch). If the database is down,
the session reconnects and retries with backoff for `retry_total_s`, then raises
`PostgresUnavailable`; no key is lost, because a key is cached only from a completed query.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from psycopg import sql
from psycopg.rows import class_row

from pipelines.config import Settings
from pipelines.dimensions.model import LESSON, LessonRow
from pipelines.io.postgres import PgSession, RetryPolicy, conninfo_from_settings

Clock = Callable[[], float]


@dataclass
class LookupStats:
    """Counters for tests and metrics."""

    requested: int = 0  # ids asked for (after dedup within a call)
    hits: int = 0  # answered from the cache (found or known-unknown)
    fetched: int = 0  # ids sent to the database
    round_trips: int = 0  # completed SELECT round trips
    found: int = 0  # ids the database returned
    unknown: int = 0  # ids the database did not have


class LessonLookup:
    """Lesson rows by id from `<schema>.lesson`, with positive and negative TTL caching."""

    def __init__(self, conninfo: str, schema: str, ttl_s: float = 300.0, max_batch: int = 5000,
                 *, negative_ttl_s: float = 15.0, max_entries: int = 500_000,
                 retry: RetryPolicy | None = None, clock: Clock = time.monotonic) -> None:
        if max_batch < 1 or ttl_s <= 0 or negative_ttl_s < 0 or max_entries < 1:
            raise ValueError("need max_batch >= 1, ttl_s > 0, negative_ttl_s >= 0, "
                             "max_entries >= 1")
        self.schema = schema
        self.ttl_s = ttl_s
        self.negative_ttl_s = negative_ttl_s
        self.max_batch = max_batch
        self.max_entries = max_entries
        self.session = PgSession(conninfo, retry)
        self.stats = LookupStats()
        self._clock = clock
        self._lock = threading.Lock()
        # id -> (expires_at, row or None for "the database has no such lesson")
        self._cache: dict[str, tuple[float, LessonRow | None]] = {}
        self._query = sql.SQL("SELECT {cols} FROM {table} WHERE {key} = ANY(%s)").format(
            cols=sql.SQL(", ").join(map(sql.Identifier, LESSON.columns)),
            table=sql.Identifier(schema, LESSON.name), key=sql.Identifier(LESSON.key))

    @classmethod
    def from_settings(cls, settings: Settings, environ: Mapping[str, str] | None = None,
                      clock: Clock = time.monotonic) -> LessonLookup:
        cfg = settings.dimensions
        return cls(conninfo_from_settings(settings.postgres, environ),
                   settings.postgres.schema_name, cfg.ttl_s, cfg.max_batch,
                   negative_ttl_s=cfg.negative_ttl_s, max_entries=cfg.cache_max_entries,
                   retry=RetryPolicy.from_config(cfg), clock=clock)

    def lookup(self, lesson_ids: Iterable[str]) -> dict[str, LessonRow]:
        """The known lessons among `lesson_ids` (unknown ids are absent from the result)."""
        with self._lock:
            now = self._clock()
            result: dict[str, LessonRow] = {}
            missing: list[str] = []
            for lesson_id in dict.fromkeys(lesson_ids):
                entry = self._cache.get(lesson_id)
                if entry is not None and entry[0] > now:
                    if entry[1] is not None:
                        result[lesson_id] = entry[1]
                    self.stats.hits += 1
                else:
                    missing.append(lesson_id)
                self.stats.requested += 1
            for start in range(0, len(missing), self.max_batch):
                chunk = missing[start:start + self.max_batch]
                rows = self.session.run(lambda conn, ids=chunk: self._fetch(conn, ids))
                self._remember(chunk, rows, self._clock())
                result.update(rows)
            return result

    def invalidate(self, lesson_ids: Iterable[str] | None = None) -> None:
        """Forget cached entries (all of them when `lesson_ids` is None)."""
        with self._lock:
            if lesson_ids is None:
                self._cache.clear()
            else:
                for lesson_id in lesson_ids:
                    self._cache.pop(lesson_id, None)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> LessonLookup:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._cache)

    def _fetch(self, conn: Any, ids: list[str]) -> dict[str, LessonRow]:
        with conn.cursor(row_factory=class_row(LessonRow)) as cur:
            cur.execute(self._query, (ids,))
            rows = cur.fetchall()
        self.stats.round_trips += 1
        self.stats.fetched += len(ids)
        return {row.lesson_id: row for row in rows}

    def _remember(self, ids: list[str], rows: dict[str, LessonRow], now: float) -> None:
        cache = self._cache
        for lesson_id in ids:
            cache.pop(lesson_id, None)  # re-insert: dict order is then oldest-refreshed first
            row = rows.get(lesson_id)
            ttl = self.ttl_s if row is not None else self.negative_ttl_s
            cache[lesson_id] = (now + ttl, row)
        self.stats.found += len(rows)
        self.stats.unknown += len(ids) - len(rows)
        if len(cache) > self.max_entries:
            self._evict(now)

    def _evict(self, now: float) -> None:
        """Drop expired entries, then the least recently fetched ones, down to max_entries."""
        cache = self._cache
        for lesson_id in [k for k, (expires, _) in cache.items() if expires <= now]:
            del cache[lesson_id]
        excess = len(cache) - self.max_entries
        if excess > 0:
            for lesson_id in list(cache)[:excess]:
                del cache[lesson_id]
