"""Topic administration shared by the embedded broker, the simulator, jobs and tests.

Everything takes plain librdkafka client options (`KafkaConfig.client_options()`), so it works
against the embedded tansu broker and a real Kafka cluster alike. Calls are idempotent: topics
that already exist are fine, which is what a restart or a second `broker start` needs.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

DEFAULT_TIMEOUT_S = 10.0


class KafkaAdminError(RuntimeError):
    """A topic could not be created, grown or inspected; the message says which and why."""


class BrokerUnavailable(KafkaAdminError):
    """No broker answered a metadata request in time."""


class _TopicLike(Protocol):
    name: str
    partitions: int


TopicSpec = Mapping[str, int] | Iterable[_TopicLike]


def _admin(client_options: Mapping[str, Any]) -> Any:
    from confluent_kafka.admin import AdminClient

    return AdminClient(dict(client_options))


def _wanted(topics: TopicSpec) -> dict[str, int]:
    """`{name: partitions}` from a mapping or from `TopicConfig`-like objects."""
    if isinstance(topics, Mapping):
        return {str(name): int(count) for name, count in topics.items()}
    return {topic.name: int(topic.partitions) for topic in topics}


def _addresses(client_options: Mapping[str, Any]) -> list[tuple[str, int]]:
    servers = str(client_options.get("bootstrap.servers", ""))
    out = []
    for item in servers.split(","):
        host, _, port = item.strip().rpartition(":")
        if host and port.isdigit():
            out.append((host.strip("[]"), int(port)))
    return out


def _any_port_open(addresses: list[tuple[str, int]], timeout_s: float = 0.5) -> bool:
    """Cheap TCP probe, so waiting for a broker that is not up yet does not spam librdkafka logs."""
    if not addresses:
        return True  # nothing we can probe; let the metadata request decide
    for host, port in addresses:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                return True
        except OSError:
            continue
    return False


def wait_until_ready(
    client_options: Mapping[str, Any],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    *,
    interval_s: float = 0.1,
    request_timeout_s: float = 2.0,
    check: Callable[[], None] | None = None,
) -> float:
    """Block until a broker answers a metadata request; return the seconds waited.

    `check` runs before every attempt and may raise to abort early (the embedded broker uses it
    to stop waiting as soon as its process has died). Raises `BrokerUnavailable` on timeout.
    """
    from confluent_kafka import KafkaException

    started = time.monotonic()
    deadline = started + timeout_s
    addresses = _addresses(client_options)
    admin = None
    last_error = "nothing listens on the port"
    while True:
        if check is not None:
            check()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrokerUnavailable(
                f"no Kafka broker answered at {client_options.get('bootstrap.servers')} "
                f"within {timeout_s:g}s (last error: {last_error})")
        if _any_port_open(addresses, timeout_s=min(0.5, remaining)):
            admin = admin or _admin(client_options)
            try:
                metadata = admin.list_topics(timeout=max(0.1, min(request_timeout_s, remaining)))
            except KafkaException as exc:
                last_error = str(exc.args[0] if exc.args else exc)
            else:
                if metadata.brokers:
                    return time.monotonic() - started
                last_error = "metadata lists no brokers"
        time.sleep(min(interval_s, max(0.0, deadline - time.monotonic())))


def describe_topics(
    client_options: Mapping[str, Any],
    names: Iterable[str] | None = None,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    include_internal: bool = False,
) -> dict[str, int]:
    """`{topic: partition count}` for `names` (those that exist), or for every topic.

    Internal topics (`__consumer_offsets` ...) are left out unless asked for or named.
    """
    from confluent_kafka import KafkaException

    try:
        metadata = _admin(client_options).list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise BrokerUnavailable(
            f"cannot list topics at {client_options.get('bootstrap.servers')}: "
            f"{exc.args[0] if exc.args else exc}") from exc
    found = {
        name: len(meta.partitions)
        for name, meta in metadata.topics.items()
        if meta.error is None
    }
    if names is not None:
        wanted = list(names)
        return {name: found[name] for name in wanted if name in found}
    if include_internal:
        return dict(sorted(found.items()))
    return {name: n for name, n in sorted(found.items()) if not name.startswith("__")}


def _raise_failures(futures: Mapping[str, Any], action: str, timeout_s: float,
                    tolerated: frozenset[str] = frozenset()) -> None:
    from confluent_kafka import KafkaException

    problems = []
    for name, future in futures.items():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else exc
            code = error.name() if hasattr(error, "name") else str(error)
            if code in tolerated:
                continue
            hint = ""
            if code == "_UNSUPPORTED_FEATURE" and action == "grow":
                hint = (" -- this broker cannot add partitions to an existing topic (the bundled "
                        "tansu lacks CreatePartitions); delete the topic or start from empty "
                        "storage to get the configured partition count")
            problems.append(f"{name}: {error.str() if hasattr(error, 'str') else error}{hint}")
        except Exception as exc:  # a timed-out future
            problems.append(f"{name}: {type(exc).__name__}: {exc}")
    if problems:
        verb = "create" if action == "create" else "add partitions to"
        raise KafkaAdminError(f"could not {verb} topic(s): " + "; ".join(problems))


def ensure_topics(
    client_options: Mapping[str, Any],
    topics: TopicSpec,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    replication_factor: int = 1,
) -> dict[str, int]:
    """Create missing topics and grow under-partitioned ones; return `{topic: partitions}`.

    Idempotent. A topic with *more* partitions than asked for is left alone (Kafka cannot
    shrink a topic). Returns once the metadata shows every topic with at least its count.
    """
    from confluent_kafka.admin import NewPartitions, NewTopic

    wanted = _wanted(topics)
    if not wanted:
        return {}
    admin = _admin(client_options)
    existing = describe_topics(client_options, wanted, timeout_s=timeout_s)

    missing = [NewTopic(name, num_partitions=count, replication_factor=replication_factor)
               for name, count in wanted.items() if name not in existing]
    if missing:
        futures = admin.create_topics(missing, operation_timeout=timeout_s,
                                      request_timeout=timeout_s)
        _raise_failures(futures, "create", timeout_s, frozenset({"TOPIC_ALREADY_EXISTS"}))

    short = [NewPartitions(name, count) for name, count in wanted.items()
             if name in existing and existing[name] < count]
    if short:
        futures = admin.create_partitions(short, operation_timeout=timeout_s,
                                          request_timeout=timeout_s)
        _raise_failures(futures, "grow", timeout_s)

    deadline = time.monotonic() + timeout_s
    while True:
        current = describe_topics(client_options, wanted, timeout_s=timeout_s)
        lagging = {name: count for name, count in wanted.items()
                   if current.get(name, 0) < count}
        if not lagging:
            return current
        if time.monotonic() >= deadline:
            raise KafkaAdminError(
                f"topics not visible with their partitions after {timeout_s:g}s: "
                + ", ".join(f"{n} (want {c}, see {current.get(n, 0)})"
                            for n, c in lagging.items()))
        time.sleep(0.1)
