"""The producer loop: generated events -> Kafka, with pacing, progress and a summary.

Kept thin on purpose: everything that decides *what* is produced lives in the pure generator,
so this loop only produces, counts, paces and reports.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path

import orjson
from confluent_kafka import KafkaError, KafkaException, Producer
from rich.console import Console, Group, RenderableType
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipelines.config import Settings
from pipelines.dimensions.store import publish_dimensions
from pipelines.simulator.generator import EventGenerator
from pipelines.simulator.model import GOOD, HelpTruth
from pipelines.simulator.react import ActionFeed, ActionFeedError, HelpOutcome, Reactor
from schemas.contract import TOPICS

PACE_STEP_MS = 20  # paced runs re-check the clock every this many simulated ms


_topic = attrgetter("topic")
_kind = attrgetter("kind")


class SimulationError(RuntimeError):
    """The simulation cannot run or lost events (broker unreachable, topics missing, ...)."""


@dataclass
class SimulationSummary:
    """What a run produced; `render()` gives the table the CLI prints."""

    events_per_topic: dict[str, int]
    total: int
    bad_by_kind: dict[str, int]
    help_requests: int
    elapsed_s: float
    rate: float
    causes: dict[str, int] = field(default_factory=dict)
    ground_truth_path: Path | None = None
    delivery_failures: int = 0
    seed: int = 0
    classrooms: int = 0
    duration_s: float = 0.0
    start_ms: int = 0
    reactions: dict[str, int] | None = None  # closed loop: actions by effect; None: not reacting

    def render(self) -> RenderableType:
        head = (f"[bold]{self.total:,}[/bold] events from {self.classrooms} classrooms, "
                f"{self.duration_s:g} simulated s, seed {self.seed}: "
                f"{self.elapsed_s:.1f} s wall, [bold]{self.rate:,.0f}[/bold] events/s")
        topics = Table(title="events per topic", show_edge=False)
        topics.add_column("topic")
        topics.add_column("events", justify="right")
        for topic, count in sorted(self.events_per_topic.items()):
            topics.add_row(topic, f"{count:,}")
        bad = Table(title="bad input injected", show_edge=False)
        bad.add_column("kind")
        bad.add_column("events", justify="right")
        bad.add_column("share", justify="right")
        for kind, count in sorted(self.bad_by_kind.items()):
            bad.add_row(kind, f"{count:,}", f"{count / max(self.total, 1):.2%}")
        helps = Table(title=f"{self.help_requests} Help requests by injected cause",
                      show_edge=False)
        helps.add_column("cause")
        helps.add_column("requests", justify="right")
        for cause, count in sorted(self.causes.items()):
            helps.add_row(cause, str(count))
        parts: list[RenderableType] = [head, topics, bad, helps]
        if self.reactions is not None:
            counts = ", ".join(f"{k} {v}" for k, v in sorted(self.reactions.items()))
            parts.append(f"closed loop: {counts or 'no actions received'}")
        if self.ground_truth_path is not None:
            parts.append(f"ground truth: {self.ground_truth_path}")
        if self.delivery_failures:
            parts.append(f"[red]{self.delivery_failures:,} deliveries failed[/red]")
        return Group(*parts)


def paced_simulate_cmd(classrooms: int, duration_s: float, seed: int, truth: Path) -> list[str]:
    """`lakehouse simulate` at real time (the closed loop: it reads the actions and reacts), as
    a child process's command line: the demo and the load benches run it beside their jobs."""
    return [sys.executable, "-m", "pipelines.cli", "simulate", "--classrooms", str(classrooms),
            "--duration", str(duration_s), "--seed", str(seed), "--rate-multiplier", "1",
            "--ground-truth", str(truth)]


def default_ground_truth_path(settings: Settings, seed: int) -> Path:
    """`<storage root>/_simulator/ground_truth_<seed>.json` (local roots only)."""
    if not settings.storage.is_local:
        raise SimulationError(f"storage root {settings.storage.root} is not a local path: "
                              "pass ground_truth_path (--ground-truth) explicitly")
    return Path(settings.storage.path("_simulator", f"ground_truth_{seed}.json"))


def write_ground_truth(path: Path, truths: dict[str, HelpTruth],
                       outcomes: dict[str, HelpOutcome] | None = None) -> None:
    """Write {help_id: {cause, classroom_id, lesson_id, event_time, role, ..., fixable,
    fix_action, fixed_at_ms, fixed_by_action_id, actions}} atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    outcomes = outcomes or {}
    data = {help_id: {**truth.to_json(), **outcomes.get(help_id, HelpOutcome()).to_json()}
            for help_id, truth in truths.items()}
    tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    tmp.replace(path)


def producer_config(settings: Settings) -> dict[str, object]:
    """Throughput-oriented, loss-free producer settings on top of the shared client options."""
    return {
        **settings.kafka.client_options(),
        "linger.ms": 20,
        "batch.size": 1_000_000,
        "batch.num.messages": 100_000,
        "compression.type": "none",
        "acks": "all",
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        # Java-compatible key hashing: a JVM producer puts a classroom on the same partition.
        "partitioner": "murmur2_random",
        "delivery.report.only.error": True,
    }


def _check_topics(producer: Producer, timeout_s: float, topics: list[str]) -> None:
    try:
        metadata = producer.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise SimulationError(f"Kafka broker unreachable: {exc}; is it running "
                              "(`lakehouse broker start`)?") from exc
    missing = sorted(set(topics) - set(metadata.topics))
    if missing:
        raise SimulationError(f"topics missing on the broker: {', '.join(missing)} "
                              "(`lakehouse broker start` creates them)")


def run_simulation(settings: Settings, *, classrooms: int, duration_s: float, seed: int,
                   rate_multiplier: float = 0, ground_truth_path: Path | None = None,
                   progress: bool = True, start_ms: int | None = None,
                   react: bool | None = None) -> SimulationSummary:
    """Generate `classrooms` lessons for `duration_s` simulated seconds and produce them.

    Each record carries the simulated send time as its Kafka timestamp (as a real client
    stamps CreateTime), so a run faster than real time still looks like a live class to the
    pipeline: broker time and event time advance together, bad clocks stand out.

    `rate_multiplier` 0 produces as fast as possible; 1 paces simulated time to the wall
    clock; 2 runs twice as fast. `start_ms` is the event_time of simulated second 0
    (default: now; for a paced run, now + `setup_lead_ms`, so that the set-up does not make
    every event late). The Help ground truth is written even if the run is interrupted.

    `react` closes the loop (react.py): read classroom.help.actions between windows and let
    the clients react. Default: only when paced (a reaction delay means nothing faster than
    real time); if then the actions topic is missing, the run goes on without reacting.
    """
    if rate_multiplier < 0:
        raise ValueError("rate_multiplier must be >= 0")
    gt_path = ground_truth_path or default_ground_truth_path(settings, seed)
    wall_start = int(time.time() * 1000)
    paced = rate_multiplier > 0
    # A paced run's simulated second 0 is a moment on the wall clock just after the set-up
    # (dimensions, lessons), so that events go out at their event time, not that much late.
    start = (start_ms if start_ms is not None
             else wall_start + (setup_lead_ms(classrooms) if paced else 0))
    failures: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            failures.append(err)

    producer = Producer({**producer_config(settings), "on_delivery": on_delivery})
    kafka_topic = {topic: settings.kafka_topic(topic) for topic in TOPICS}
    _check_topics(producer, min(settings.kafka.read_timeout_seconds, 15),
                  list(kafka_topic.values()))
    publish_dimensions(settings, classrooms=classrooms, seed=seed, start_ms=start)

    truths: dict[str, HelpTruth] = {}
    gen = EventGenerator(settings.simulator, classrooms, duration_s, seed, start, truths)
    feed = _action_feed(settings, rate_multiplier > 0 if react is None else react,
                        explicit=react is not None)
    reactor = None if feed is None else Reactor(gen, settings.simulator.fault_model,
                                                not_before_ms=wall_start)
    per_topic: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    produce, poll = producer.produce, producer.poll
    duration_ms = int(duration_s * 1000)
    pace_next = 0
    total = 0
    bar = Progress(TextColumn("[bold]simulate[/bold]"), BarColumn(),
                   TextColumn("{task.completed:,.0f}/{task.total:,.0f} simulated ms"),
                   TextColumn("{task.fields[events]:,} events {task.fields[rate]:,.0f}/s"),
                   TimeElapsedColumn(), console=Console(stderr=True), disable=not progress)
    task = bar.add_task("simulate", total=max(duration_ms, 1), events=0, rate=0.0)
    began = t0 = time.perf_counter()
    if paced and start_ms is None:
        t0 += start / 1000 - time.time()  # pace against the wall clock from `start` on
        if began - t0 > 1:
            Console(stderr=True).print(
                f"[yellow]set-up took {began - t0:.1f} s longer than its lead: the first "
                "events go out late until the run catches up[/yellow]")
    try:
        with bar, _young_gc_relaxed():
            for window in gen.windows():
                # The hot loop: one produce per event (tuple unpacking beats attribute access).
                for topic, key, value, _, _, sim_ms, _ in window:
                    if paced and sim_ms >= pace_next:
                        pace_next = sim_ms + PACE_STEP_MS
                        _pace(poll, t0, sim_ms / 1000 / rate_multiplier)
                    try:
                        produce(kafka_topic[topic], value, key, timestamp=start + sim_ms)
                    except BufferError:  # local queue full: let librdkafka drain, then retry
                        poll(0.05)
                        produce(kafka_topic[topic], value, key, timestamp=start + sim_ms)
                per_topic.update(map(_topic, window))
                kinds.update(map(_kind, window))
                total += len(window)
                poll(0)
                if feed is not None and reactor is not None:
                    for action in feed.poll():  # between windows: the horizon is exact
                        reactor.receive(action)
                if window:
                    elapsed = time.perf_counter() - began
                    bar.update(task, completed=window[-1].sim_ms, events=total,
                               rate=total / elapsed)
            remaining = producer.flush(max(30.0, settings.kafka.read_timeout_seconds))
            elapsed = time.perf_counter() - began
            bar.update(task, completed=max(duration_ms, 1), events=total,
                       rate=total / max(elapsed, 1e-9))
    except BaseException:
        producer.flush(10)  # interrupted: deliver what is queued, so the truth file matches
        raise
    finally:
        if feed is not None and reactor is not None:
            feed.close()
            if feed.malformed:
                reactor.counts["malformed"] += feed.malformed
        write_ground_truth(gt_path, truths, reactor.outcomes if reactor else None)
    if remaining:
        raise SimulationError(f"{remaining} events still unsent after the flush timeout")
    if failures:
        raise SimulationError(f"{len(failures)} events failed delivery; first: {failures[0]}")
    return SimulationSummary(
        events_per_topic=dict(per_topic), total=total,
        bad_by_kind={str(k): v for k, v in kinds.items() if k != GOOD},
        help_requests=len(truths),
        elapsed_s=elapsed, rate=total / max(elapsed, 1e-9),
        causes=dict(Counter(t.cause.value for t in truths.values())),
        ground_truth_path=gt_path, delivery_failures=len(failures), seed=seed,
        classrooms=classrooms, duration_s=duration_s, start_ms=start,
        reactions=None if reactor is None else dict(reactor.counts))


def _action_feed(settings: Settings, react: bool, explicit: bool) -> ActionFeed | None:
    """The actions reader when reacting; a missing topic is an error only if asked for."""
    if not react:
        return None
    try:
        return ActionFeed(settings, timeout_s=min(settings.kafka.read_timeout_seconds, 15))
    except ActionFeedError as exc:
        if explicit:
            raise SimulationError(f"cannot react to actions: {exc}") from exc
        Console(stderr=True).print(f"[yellow]not reacting to actions: {exc}[/yellow]")
        return None


@contextmanager
def _young_gc_relaxed(threshold0: int = 50_000) -> Iterator[None]:
    """Collect the young generation every 50k allocations instead of 700.

    Each tick allocates tens of thousands of short-lived, cycle-free events; at the default
    threshold the collector scans them again and again (about a quarter of the loop's CPU).
    Nothing here makes cycles, so fewer collections cost only a little transient memory.
    """
    old = gc.get_threshold()
    gc.set_threshold(max(old[0], threshold0), *old[1:])
    try:
        yield
    finally:
        gc.set_threshold(*old)


def setup_lead_ms(classrooms: int) -> int:
    """How long a paced run's set-up takes at most (publishing the dimensions, building the
    lessons), measured on a 2-core machine with a margin: its event time starts this late."""
    return 1000 + classrooms // 2


def _pace(poll: Callable[[float], int], t0: float, target_s: float) -> None:
    """Wait (serving producer callbacks) until `target_s` wall seconds after `t0`."""
    while (wait := target_s - (time.perf_counter() - t0)) > 0:
        poll(min(wait, 0.1))
