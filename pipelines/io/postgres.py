"""PostgreSQL access for the dimension store: conninfo from settings, a reconnecting session
with bounded retry, and COPY-based upserts.

Why a session object rather than a pool: the lookups run on the Spark driver, one micro-batch
at a time, so one connection suffices; what matters is surviving a server that went away (a
restart, a failover, an idle-connection reaper) without losing the work in hand.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pipelines.config import DimensionsConfig, PostgresConfig

PASSWORD_ENV = "LAKEHOUSE_POSTGRES_PASSWORD"
# Errors that mean "the server or the connection is gone": reconnect and try again.
RETRYABLE = (psycopg.OperationalError, psycopg.InterfaceError)

T = TypeVar("T")


class PostgresUnavailable(RuntimeError):
    """The database stayed unreachable for the whole configured retry time."""


def conninfo_from_settings(cfg: PostgresConfig, environ: Mapping[str, str] | None = None) -> str:
    """A libpq conninfo string; the password, if any, only from LAKEHOUSE_POSTGRES_PASSWORD."""
    env = os.environ if environ is None else environ
    params: dict[str, Any] = {
        "host": cfg.host, "port": cfg.port, "user": cfg.user, "dbname": cfg.database,
        "sslmode": cfg.sslmode, "connect_timeout": cfg.connect_timeout_s,
        "application_name": cfg.application_name,
        # Notice a silently dead peer (no FIN/RST) within about a minute, not hours.
        "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
        "keepalives_count": 3,
    }
    if env.get(PASSWORD_ENV):
        params["password"] = env[PASSWORD_ENV]
    return make_conninfo(**params)


def describe(conninfo: str) -> str:
    """`user@host:port/dbname`, never the password: safe for logs and error messages."""
    params = conninfo_to_dict(conninfo)
    return (f"{params.get('user', '?')}@{params.get('host', 'localhost')}:"
            f"{params.get('port', 5432)}/{params.get('dbname', '?')}")


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff from `initial_backoff_s`, capped, for at most `total_s` in all."""

    total_s: float = 60.0
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0

    @classmethod
    def from_config(cls, cfg: DimensionsConfig) -> RetryPolicy:
        return cls(cfg.retry_total_s, cfg.retry_initial_backoff_s, cfg.retry_max_backoff_s)


class PgSession:
    """One lazily opened autocommit connection that reconnects and retries on server loss.

    `run(fn)` calls `fn(connection)`; if the server is unreachable or drops the connection,
    the connection is discarded and `fn` runs again on a new one, with backoff, until
    `policy.total_s` has passed since the first failure; then `PostgresUnavailable`. So `fn`
    must be safe to repeat: a read, or a write in one transaction that is idempotent.
    """

    def __init__(self, conninfo: str, policy: RetryPolicy | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.conninfo = conninfo
        self.policy = policy or RetryPolicy()
        self._sleep = sleep
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.RLock()
        self.connects = 0  # connections opened (the first one and every reconnect)
        self.retries = 0  # attempts repeated after a retryable failure

    def run(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        with self._lock:
            deadline: float | None = None
            backoff = self.policy.initial_backoff_s
            attempts = 0
            while True:
                attempts += 1
                try:
                    return fn(self._connection())
                except RETRYABLE as exc:
                    self._discard()
                    now = time.monotonic()
                    if deadline is None:
                        deadline = now + self.policy.total_s
                    if now >= deadline:
                        raise PostgresUnavailable(
                            f"PostgreSQL {describe(self.conninfo)} unreachable: gave up after "
                            f"{self.policy.total_s:g} s of retries ({attempts} attempts); "
                            f"last error: {str(exc).strip()}") from exc
                    self.retries += 1
                    self._sleep(min(backoff, deadline - now))
                    backoff = min(backoff * 2, self.policy.max_backoff_s)

    def close(self) -> None:
        with self._lock:
            self._discard()

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.conninfo, autocommit=True)
            self.connects += 1
        return self._conn

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):  # closing a dead connection
                conn.close()


def create_table(conn: psycopg.Connection[Any], schema: str, table: str,
                 columns: Sequence[tuple[str, str]], key: str) -> None:
    """`CREATE SCHEMA/TABLE IF NOT EXISTS` with `key` as the primary key."""
    cols = [sql.SQL("{} {}{}").format(sql.Identifier(name), sql.SQL(pg_type),
                                      sql.SQL(" PRIMARY KEY" if name == key else ""))
            for name, pg_type in columns]
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {}.{} ({})").format(
        sql.Identifier(schema), sql.Identifier(table), sql.SQL(", ").join(cols)))


def upsert_rows(conn: psycopg.Connection[Any], schema: str, table: str,
                columns: Sequence[str], key: str, rows: Iterable[Sequence[Any]]) -> int:
    """COPY `rows` into a temp table, then one `INSERT ... ON CONFLICT (key) DO UPDATE`.

    Runs in the caller's transaction. Unchanged rows are not rewritten, so a re-run of the
    same rows is a no-op. Returns the number of rows inserted or changed.
    """
    target = sql.Identifier(schema, table)
    stage = sql.Identifier(f"_stage_{table}")
    col_list = sql.SQL(", ").join(map(sql.Identifier, columns))
    others = [c for c in columns if c != key]
    conn.execute(sql.SQL("CREATE TEMP TABLE {} (LIKE {}) ON COMMIT DROP").format(stage, target))
    copy_sql = sql.SQL("COPY {} ({}) FROM STDIN").format(stage, col_list)
    with conn.cursor() as cur, cur.copy(copy_sql) as copy:
        for row in rows:
            copy.write_row(row)
    changed = sql.SQL(" OR ").join(
        sql.SQL("t.{0} IS DISTINCT FROM EXCLUDED.{0}").format(sql.Identifier(c))
        for c in others) if others else sql.SQL("false")
    update = sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c))
                                for c in others)
    action = (sql.SQL("DO UPDATE SET {} WHERE {}").format(update, changed) if others
              else sql.SQL("DO NOTHING"))
    cur = conn.execute(sql.SQL(
        "INSERT INTO {target} AS t ({cols}) SELECT {cols} FROM {stage} "
        "ON CONFLICT ({key}) {action}").format(
            target=target, cols=col_list, stage=stage, key=sql.Identifier(key), action=action))
    return cur.rowcount
