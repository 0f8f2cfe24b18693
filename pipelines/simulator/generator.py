"""The pure, deterministic event generator: no Kafka, no clock, no I/O.

Same (config, classrooms, duration, seed, start_ms) -> the same bytes in the same order, which
is what lets tests and benchmarks compare runs and lets the tagger be scored against the ground
truth.
"""

from __future__ import annotations

from collections.abc import Iterator
from operator import attrgetter

from pipelines.config import SimulatorConfig
from pipelines.simulator.badinput import BadInputInjector
from pipelines.simulator.lesson import HELP_TOPIC, Lesson, Participant
from pipelines.simulator.model import TICK_MS, HelpTruth, SimEvent

_sim_ms = attrgetter("sim_ms")


def generate_events(config: SimulatorConfig, classrooms: int, duration_s: float, seed: int,
                    start_ms: int, ground_truth: dict[str, HelpTruth] | None = None
                    ) -> Iterator[SimEvent]:
    """Every classroom's events, in simulated-time order across classrooms.

    `ground_truth`, if given, receives each Help request's injected cause as it is emitted.
    """
    for window in generate_windows(config, classrooms, duration_s, seed, start_ms, ground_truth):
        yield from window


def generate_windows(config: SimulatorConfig, classrooms: int, duration_s: float, seed: int,
                     start_ms: int, ground_truth: dict[str, HelpTruth] | None = None
                     ) -> Iterator[list[SimEvent]]:
    """`generate_events`, one 2 s tick at a time (the producer loop's cheaper form).

    A participant's periodic events (AV samples, heartbeat) and a lesson's whiteboard event
    fall at a fixed phase of each 2 s tick, so the periodic slots are sorted by phase once and
    each tick walks them in order, merging in the pre-sorted rare events (enter flows,
    disconnects, Help requests). No per-event sort. Each tick then passes the bad-input
    injector.
    """
    if classrooms < 0 or duration_s < 0:
        raise ValueError("classrooms and duration_s must be >= 0")
    duration_ms = int(duration_s * 1000)
    lessons = [Lesson(i, seed, config, duration_ms, start_ms) for i in range(classrooms)]
    by_key = {lesson.key: lesson for lesson in lessons}
    slots: list[tuple[int, int, int, Lesson, Participant | None]] = []
    for lesson in lessons:
        slots.append((lesson.phases[0], lesson.index, 0, lesson, lesson.teacher))
        slots.append((lesson.phases[1], lesson.index, 1, lesson, lesson.student))
        slots.append((lesson.wb_phase, lesson.index, 2, lesson, None))
    slots.sort(key=lambda s: s[:3])
    oneoffs = sorted((ev for lesson in lessons for ev in lesson.oneoffs), key=_sim_ms)
    injector = BadInputInjector(config.bad_input, seed)
    oi, n_oneoffs = 0, len(oneoffs)
    for w0 in range(0, duration_ms, TICK_MS):
        w1 = min(w0 + TICK_MS, duration_ms)
        window: list[SimEvent] = []
        first_oneoff = oi
        for phase, _, _, lesson, participant in slots:
            t = w0 + phase
            if t >= w1:
                break
            while oi < n_oneoffs and oneoffs[oi].sim_ms <= t:
                window.append(oneoffs[oi])
                oi += 1
            if participant is None:
                lesson.whiteboard(t, window)
            else:
                lesson.samples(participant, t, window)
        while oi < n_oneoffs and oneoffs[oi].sim_ms < w1:
            window.append(oneoffs[oi])
            oi += 1
        if ground_truth is not None:
            for ev in oneoffs[first_oneoff:oi]:
                truth = by_key[ev.key].truth
                if ev.topic == HELP_TOPIC and truth is not None:
                    ground_truth[truth.help_id] = truth
        yield injector.process(window)


def planned_help(config: SimulatorConfig, classrooms: int, duration_s: float, seed: int,
                 start_ms: int) -> dict[str, HelpTruth]:
    """The Help requests a run will make, without generating its events."""
    duration_ms = int(duration_s * 1000)
    truths = (Lesson(i, seed, config, duration_ms, start_ms).truth for i in range(classrooms))
    return {t.help_id: t for t in truths if t is not None}
