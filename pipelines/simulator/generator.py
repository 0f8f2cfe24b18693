"""The pure, deterministic event generator: no Kafka, no clock, no I/O.

Same (config, classrooms, duration, seed, start_ms) -> the same bytes in the same order, which
is what lets tests and benchmarks compare runs and lets the tagger be scored against the ground
truth. The closed loop (react.py) may change lessons between windows; without it, nothing does.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator
from operator import attrgetter

from pipelines.config import SimulatorConfig
from pipelines.simulator.badinput import BadInputInjector
from pipelines.simulator.lesson import HELP_TOPIC, Lesson, Participant
from pipelines.simulator.model import WINDOW_MS, HelpTruth, SimEvent

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
    """`generate_events`, one window at a time (the producer loop's cheaper form)."""
    return EventGenerator(config, classrooms, duration_s, seed, start_ms, ground_truth).windows()


class EventGenerator:
    """The lessons of one run, generated window by window.

    A participant's periodic events (AV samples, heartbeat) and a lesson's whiteboard event
    fall at a fixed phase of each tick (`sample_interval_s`, 2 s by default), so the periodic
    slots are sorted by phase once and each tick walks them in order, merging in the pre-sorted
    rare events (enter flows, disconnects, Help requests). No per-event sort. A tick is cut
    into windows of `window_ms` (a window boundary changes no byte: the bad-input injector sees
    the tick as one piece), so that between two windows the closed loop can change a lesson
    (`lesson`) or add events at or after `horizon` (`schedule`) and have them take effect on
    time.
    """

    def __init__(self, config: SimulatorConfig, classrooms: int, duration_s: float, seed: int,
                 start_ms: int, ground_truth: dict[str, HelpTruth] | None = None,
                 window_ms: int = WINDOW_MS) -> None:
        if classrooms < 0 or duration_s < 0:
            raise ValueError("classrooms and duration_s must be >= 0")
        if window_ms <= 0:
            raise ValueError("window_ms must be > 0")
        self.duration_ms = int(duration_s * 1000)
        self.tick_ms = config.sample_interval_ms
        self.start_ms = start_ms
        self.seed = seed
        self.window_ms = window_ms
        self.ground_truth = ground_truth
        self.lessons = [Lesson(i, seed, config, self.duration_ms, start_ms)
                        for i in range(classrooms)]
        self.by_key = {lesson.key: lesson for lesson in self.lessons}
        self.oneoffs = sorted((ev for lesson in self.lessons for ev in lesson.oneoffs),
                              key=_sim_ms)
        self.injector = BadInputInjector(config.bad_input, seed,
                                         config.test_accounts)
        self.horizon = 0  # simulated ms: every event before it has been generated

    def lesson(self, classroom_id: str) -> Lesson | None:
        return self.by_key.get(classroom_id.encode())

    def schedule(self, events: Iterable[SimEvent]) -> None:
        """Add rare events (a reaction to an action); each must lie at or after `horizon`."""
        for ev in events:
            if ev.sim_ms < self.horizon:
                raise ValueError(f"event at {ev.sim_ms} ms is before the horizon {self.horizon}")
            insort(self.oneoffs, ev, key=_sim_ms)  # after every generated one: sim_ms >= horizon

    def windows(self) -> Iterator[list[SimEvent]]:
        """The events of each window, in simulated-time order, after bad-input injection."""
        slots: list[tuple[int, int, int, Lesson, Participant | None]] = []
        for lesson in self.lessons:
            slots.append((lesson.phases[0], lesson.index, 0, lesson, lesson.teacher))
            slots.append((lesson.phases[1], lesson.index, 1, lesson, lesson.student))
            slots.append((lesson.wb_phase, lesson.index, 2, lesson, None))
        slots.sort(key=lambda s: s[:3])
        phases = [s[0] for s in slots]
        oneoffs, by_key, truths = self.oneoffs, self.by_key, self.ground_truth
        duration_ms, oi = self.duration_ms, 0
        tick = self.tick_ms
        for w0 in range(0, duration_ms, tick):
            w1 = min(w0 + tick, duration_ms)
            for c0 in range(w0, w1, self.window_ms):
                c1 = min(c0 + self.window_ms, w1)
                n_oneoffs = len(oneoffs)  # `schedule` may have added some since the last window
                window: list[SimEvent] = []
                first_oneoff = oi
                for phase, _, _, lesson, participant in slots[bisect_left(phases, c0 - w0):
                                                              bisect_left(phases, c1 - w0)]:
                    t = w0 + phase
                    while oi < n_oneoffs and oneoffs[oi].sim_ms <= t:
                        window.append(oneoffs[oi])
                        oi += 1
                    if participant is None:
                        lesson.whiteboard(t, window)
                    else:
                        lesson.samples(participant, t, window)
                while oi < n_oneoffs and oneoffs[oi].sim_ms < c1:
                    window.append(oneoffs[oi])
                    oi += 1
                if truths is not None:
                    for ev in oneoffs[first_oneoff:oi]:
                        truth = by_key[ev.key].truth
                        if ev.topic == HELP_TOPIC and truth is not None:
                            truths.setdefault(truth.help_id, truth)
                self.horizon = c1
                yield self.injector.process(window, end_of_tick=c1 == w1)


def planned_help(config: SimulatorConfig, classrooms: int, duration_s: float, seed: int,
                 start_ms: int) -> dict[str, HelpTruth]:
    """The Help requests a run will make, without generating its events."""
    duration_ms = int(duration_s * 1000)
    truths = (Lesson(i, seed, config, duration_ms, start_ms).truth for i in range(classrooms))
    return {t.help_id: t for t in truths if t is not None}
