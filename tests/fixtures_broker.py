"""One embedded broker for the whole test session (tansu, memory storage, a free loopback port).

Starting tansu is cheap, but sharing one keeps the suite fast and leaves a single process to
clean up. Wire into tests/conftest.py with:

    from fixtures_broker import broker, broker_settings  # noqa: F401

`broker` (session) yields a `SessionBroker`; `broker_settings` (per test) is a factory returning
`Settings` that point at that broker, with the storage root defaulting to the test's tmp_path.
Tests must not start or stop brokers with those settings: the session owns this one.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipelines.broker import BrokerStatus, EmbeddedBroker
from pipelines.config import Settings, load_settings


def free_port(host: str = "127.0.0.1") -> int:
    """A loopback port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class SessionBroker:
    """The session's running broker and how to build settings that use it."""

    settings: Settings
    status: BrokerStatus
    environ: dict[str, str]

    @property
    def bootstrap(self) -> str:
        return self.status.bootstrap

    def client_options(self) -> dict[str, str]:
        return {"bootstrap.servers": self.bootstrap}

    def make_settings(self, root: Path | str | None = None,
                      extra_env: Mapping[str, str] | None = None,
                      profile: str = "local") -> Settings:
        """Settings for this broker; `root` overrides the storage root, `extra_env` anything."""
        env = {**os.environ, **self.environ,
               "LAKEHOUSE__KAFKA__BOOTSTRAP_SERVERS": self.bootstrap}
        if root is not None:
            env["LAKEHOUSE_ROOT"] = str(root)
        env.update(extra_env or {})
        return load_settings(profile, environ=env)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionBroker]:
    """Start one memory-storage broker for the session; stop it (and its process) at the end."""
    root = tmp_path_factory.mktemp("session-broker")
    environ = {
        "LAKEHOUSE_ROOT": str(root),
        "LAKEHOUSE__BROKER__PORT": str(free_port()),
        "LAKEHOUSE__BROKER__STORAGE": "memory://tansu/",
    }
    settings = load_settings("local", environ={**os.environ, **environ})
    manager = EmbeddedBroker(settings)
    status = manager.start()
    try:
        yield SessionBroker(settings=settings, status=status, environ=environ)
    finally:
        manager.stop()


@pytest.fixture
def broker_settings(broker: SessionBroker, tmp_path: Path) -> Callable[..., Settings]:
    """Factory: `broker_settings(root=None, extra_env=None, profile="local") -> Settings`."""

    def make(root: Path | str | None = None, extra_env: Mapping[str, str] | None = None,
             profile: str = "local") -> Settings:
        return broker.make_settings(tmp_path if root is None else root, extra_env, profile)

    return make
