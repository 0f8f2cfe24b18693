"""The embedded broker against a real tansu process (no mocks): lifecycle, topics, storage, CLI."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from fixtures_broker import free_port

from pipelines.broker import BrokerError, BrokerStatus, EmbeddedBroker, process_alive
from pipelines.config import Settings, load_settings
from pipelines.io.kafka_admin import (
    BrokerUnavailable,
    KafkaAdminError,
    describe_topics,
    ensure_topics,
    wait_until_ready,
)


def make_settings(root: Path, port: int, **env: str) -> Settings:
    """Settings for a broker of our own: a tmp storage root and a free port, as the CLI sees it."""
    environ = {key: value for key, value in os.environ.items()
               if not key.startswith(("LAKEHOUSE", "AWS_"))}
    environ.update(LAKEHOUSE_ROOT=str(root), LAKEHOUSE__BROKER__PORT=str(port), **env)
    return load_settings("local", environ=environ)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def processes_with(*markers: str) -> list[int]:
    """Pids of live (non-zombie) processes whose command line holds every marker."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and process_alive(int(entry.name), *markers, reap=False):
            found.append(int(entry.name))
    return found


def read_all(options: dict[str, str], topic: str, partitions: int, expected: int,
             timeout_s: float = 20) -> dict[tuple[int, int], tuple[bytes, bytes]]:
    """Every record from offset 0, keyed by (partition, offset).

    Counts by consuming, not by watermarks: tansu 0.6.0 reports the high watermark (ListOffsets
    latest) as the last *batch's* base offset + 1.
    """
    consumer = Consumer({**options, "group.id": f"read-all-{time.monotonic_ns()}",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.5):
                assert msg.error() is None, msg.error()
                got[(msg.partition(), msg.offset())] = (msg.key(), msg.value() or b"")
    finally:
        consumer.close()
    return got


def configured(settings: Settings) -> dict[str, int]:
    return {topic.name: topic.partitions for topic in settings.topics}


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, BrokerStatus]]:
    """A memory-storage broker of this module's own (the lifecycle is what is under test)."""
    settings = make_settings(tmp_path_factory.mktemp("broker"), free_port())
    manager = EmbeddedBroker(settings)
    status = manager.start()
    try:
        yield settings, status
    finally:
        manager.stop()


# ------------------------------------------------------------------------------ lifecycle
def test_start_creates_every_topic_with_its_partitions(running):
    settings, status = running
    assert status.running and status.pid is not None and not status.already_running
    assert status.bootstrap == settings.kafka.bootstrap_servers
    assert status.topics == configured(settings)
    on_broker = describe_topics(settings.kafka.client_options(), configured(settings))
    assert on_broker == configured(settings)


def test_start_records_pid_state_and_log(running):
    settings, status = running
    state_dir = Path(settings.storage.path("_broker"))
    assert int((state_dir / "tansu.pid").read_text()) == status.pid
    state = json.loads((state_dir / "state.json").read_text())
    assert state["pid"] == status.pid
    assert state["port"] == settings.broker.port
    assert state["storage"] == "memory://tansu/"
    assert state["started_at"]
    assert "listening on" in (state_dir / "tansu.log").read_text()


def test_second_start_reports_the_running_broker(running):
    settings, status = running
    again = EmbeddedBroker(settings).start()
    assert again.running and again.already_running
    assert again.pid == status.pid
    assert "already running" in again.describe()
    assert len(processes_with("--listener-url", f"tcp://{status.bootstrap}")) == 1


def test_status_reports_pid_bootstrap_storage_topics(running):
    settings, status = running
    now = EmbeddedBroker(settings).status()
    assert now.running and now.pid == status.pid
    assert now.bootstrap == status.bootstrap
    assert now.storage == "memory://tansu/"
    assert configured(settings).items() <= now.topics.items()
    text = now.describe()
    assert f"pid {status.pid}" in text and "classroom.av[4]" in text


def test_ensure_topics_is_idempotent_and_grows_or_explains(running):
    settings, _ = running
    options = settings.kafka.client_options()
    assert ensure_topics(options, {"test.grow": 1}) == {"test.grow": 1}
    assert ensure_topics(options, {"test.grow": 1}) == {"test.grow": 1}
    try:
        grown = ensure_topics(options, {"test.grow": 3})
    except KafkaAdminError as exc:  # the bundled tansu has no CreatePartitions
        assert "cannot add partitions" in str(exc)
    else:
        assert grown == {"test.grow": 3}


def test_a_port_held_by_another_root_broker_is_a_clear_error(running, tmp_path):
    settings, _ = running
    intruder = make_settings(tmp_path, settings.broker.port)
    with pytest.raises(BrokerError, match="Kafka-compatible broker not started from this"):
        EmbeddedBroker(intruder).start()


def test_a_port_taken_by_something_else_is_a_clear_error(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        settings = make_settings(tmp_path, port)
        with pytest.raises(BrokerError, match=rf"127\.0\.0\.1:{port} is already in use"):
            EmbeddedBroker(settings).start()
    assert not (tmp_path / "_broker" / "tansu.pid").exists()
    assert not processes_with("--listener-url", f"tcp://127.0.0.1:{port}")


def test_stop_leaves_no_process_and_closes_the_port(tmp_path):
    settings = make_settings(tmp_path, free_port())
    manager = EmbeddedBroker(settings)
    status = manager.start()
    assert port_open(settings.broker.port)
    stopped = EmbeddedBroker(settings).stop()  # a fresh manager, as a second command would be
    assert not stopped.running and f"stopped tansu pid {status.pid}" in stopped.describe()
    # With its markers: on a busy host the pid may already belong to another process.
    assert not process_alive(status.pid, "--listener-url", f"tcp://{status.bootstrap}")
    assert not port_open(settings.broker.port)
    assert not processes_with("--listener-url", f"tcp://{status.bootstrap}")
    assert not (tmp_path / "_broker" / "tansu.pid").exists()
    assert not EmbeddedBroker(settings).status().running
    assert "was not running" in EmbeddedBroker(settings).stop().describe()


def test_wait_until_ready_times_out_on_a_closed_port():
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="no Kafka broker answered"):
        wait_until_ready({"bootstrap.servers": f"127.0.0.1:{free_port()}"}, timeout_s=0.5)
    assert time.monotonic() - started < 3


def test_postgres_storage_explains_the_missing_engine(tmp_path):
    settings = make_settings(tmp_path, free_port(),
                             LAKEHOUSE__BROKER__STORAGE="postgres://u:secret@127.0.0.1/tansu")
    with pytest.raises(BrokerError, match="without the postgres storage engine") as info:
        EmbeddedBroker(settings).start()
    assert "s3://" in str(info.value) and "secret" not in str(info.value)
    assert not processes_with("--listener-url", f"tcp://{settings.broker.host}:"
                              f"{settings.broker.port}")
    assert not (tmp_path / "_broker" / "tansu.pid").exists()


# ------------------------------------------------------------------------------ s3 storage
def test_s3_storage_keeps_records_and_offsets_across_a_broker_restart(tmp_path):
    pytest.importorskip("moto")
    settings = make_settings(tmp_path, free_port(), LAKEHOUSE__BROKER__STORAGE="s3://tansu/",
                             LAKEHOUSE__BROKER__S3_PORT=str(free_port()))
    manager = EmbeddedBroker(settings)
    try:
        first = manager.start()
        assert first.s3_pid is not None and first.topics == configured(settings)
        options = manager.client_options()
        rng = random.Random(11)
        sent = {}
        producer = Producer({**options, "linger.ms": 5})

        def delivered(err, msg):
            assert err is None, err
            sent[(msg.partition(), msg.offset())] = (msg.key(), msg.value())

        for i in range(1000):
            value = rng.randbytes(rng.randint(0, 600))  # binary, including empty values
            producer.produce("classroom.av", key=f"k{i}".encode(), value=value,
                             on_delivery=delivered)
        assert producer.flush(20) == 0
        assert len(sent) == 1000
        del producer  # tansu drains connected clients for ~5 s on SIGTERM
        committer = Consumer({**options, "group.id": "restart-test",
                              "enable.auto.commit": False})
        committer.commit(offsets=[TopicPartition("classroom.av", p, 3) for p in range(4)],
                         asynchronous=False)
        committer.close()

        second = manager.restart()
        assert second.pid != first.pid and not process_alive(first.pid)
        assert second.s3_pid == first.s3_pid  # the S3 server (and the data) stayed up

        consumer = Consumer({**options, "group.id": "restart-test",
                             "enable.auto.commit": False})
        committed = consumer.committed([TopicPartition("classroom.av", p) for p in range(4)],
                                       timeout=10)
        consumer.close()
        assert [tp.offset for tp in committed] == [3, 3, 3, 3]
        expected = {pos: (key, value or b"") for pos, (key, value) in sent.items()}
        assert read_all(options, "classroom.av", 4, len(expected)) == expected

        crashed = manager.restart(kill=True)  # SIGKILL: acknowledged records must survive too
        assert crashed.s3_pid == first.s3_pid
        assert read_all(options, "classroom.av", 4, len(expected)) == expected
    finally:
        stopped = manager.stop()
    assert "stopped local S3 server" in stopped.describe()
    assert not processes_with("moto.server", f"-p {settings.broker.s3_port}")
    assert not processes_with("--listener-url", f"tcp://{manager.bootstrap}")
    assert not port_open(settings.broker.s3_port) and not port_open(settings.broker.port)


# ------------------------------------------------------------------------------ CLI
def test_cli_broker_start_status_stop(tmp_path):
    exe = Path(sys.executable).with_name("lakehouse")
    if not exe.exists():
        pytest.skip("the lakehouse entry point is not installed in this environment")
    port = free_port()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("LAKEHOUSE", "AWS_"))}
    env.update(LAKEHOUSE_ROOT=str(tmp_path), LAKEHOUSE__BROKER__PORT=str(port),
               LAKEHOUSE_PROFILE="local", COLUMNS="200")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(exe), "broker", *args], env=env, capture_output=True,
                              text=True, timeout=60)

    try:
        before = cli("status")
        assert before.returncode == 1 and "not running" in before.stdout + before.stderr

        started = cli("start")
        out = started.stdout + started.stderr
        assert started.returncode == 0, out
        assert "broker running" in out and f"127.0.0.1:{port}" in out
        pid = int((tmp_path / "_broker" / "tansu.pid").read_text())
        assert f"pid {pid}" in out and process_alive(pid)

        again = cli("start")
        assert again.returncode == 0 and f"already running (pid {pid}" in again.stderr

        status = cli("status")
        assert status.returncode == 0 and f"pid {pid}" in status.stderr
        assert "classroom.av[4]" in status.stderr

        stopped = cli("stop")
        assert stopped.returncode == 0 and f"stopped tansu pid {pid}" in stopped.stderr
        assert not process_alive(pid) and not port_open(port)

        after = cli("status")
        assert after.returncode == 1 and "not running" in after.stderr
    finally:
        EmbeddedBroker(make_settings(tmp_path, port)).stop()


# ------------------------------------------------------------------------------ session fixture
def test_session_broker_fixture(request):
    try:
        session = request.getfixturevalue("broker")
        make = request.getfixturevalue("broker_settings")
    except pytest.FixtureLookupError:
        pytest.skip("fixtures_broker is not wired into conftest.py")
    settings = make()
    assert settings.kafka.bootstrap_servers == session.bootstrap
    assert str(request.getfixturevalue("tmp_path")) in settings.storage.root
    assert configured(settings).items() <= describe_topics(session.client_options()).items()
