"""Classroom event simulator: seeded lessons, injected root-cause faults, and bad input.

`generate_events` is pure and deterministic (tests use it without a broker); `run_simulation`
produces its output to Kafka and, paced, reacts to the resolver's actions (react.py).
"""

from pipelines.simulator.generator import EventGenerator, generate_events, planned_help
from pipelines.simulator.model import GOOD, BadKind, Cause, HelpTruth, SimEvent
from pipelines.simulator.react import ACTIONS_TOPIC, Action, Effect, Reactor
from pipelines.simulator.run import (
    SimulationError,
    SimulationSummary,
    default_ground_truth_path,
    producer_config,
    run_simulation,
    write_ground_truth,
)

__all__ = [
    "ACTIONS_TOPIC",
    "GOOD",
    "Action",
    "BadKind",
    "Cause",
    "Effect",
    "EventGenerator",
    "HelpTruth",
    "Reactor",
    "SimEvent",
    "SimulationError",
    "SimulationSummary",
    "default_ground_truth_path",
    "generate_events",
    "planned_help",
    "producer_config",
    "run_simulation",
    "write_ground_truth",
]
