"""The simulator: bad input, Help faults and how simulated clients react to actions."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipelines.config.base import _Model


class BadInputShares(_Model):
    """Share of generated events the simulator turns into each kind of bad input (a duplicate
    is an extra copy of an earlier event, so its share counts against the events before it)."""

    malformed_json: float = Field(0.0, ge=0, le=1)
    missing_field: float = Field(0.0, ge=0, le=1)
    wrong_type: float = Field(0.0, ge=0, le=1)
    unknown_event_type: float = Field(0.0, ge=0, le=1)
    unknown_schema_version: float = Field(0.0, ge=0, le=1)
    unnatural_timestamp: float = Field(0.0, ge=0, le=1)
    late: float = Field(0.0, ge=0, le=1)
    duplicate: float = Field(0.0, ge=0, le=1)
    test_account: float = Field(0.0, ge=0, le=1)  # sent as one of `simulator.test_accounts`


# Corrective actions of the Help playbook (DESIGN.md "Automatic resolution"), as the simulated
# clients understand them on `classroom.help.actions`.
FixAction = Literal["switch_media_line", "prompt_unmute", "restart_video", "reload_courseware",
                    "resend_enter_link"]
DIAGNOSTICS_ACTION = "request_client_diagnostics"


class FixRule(_Model):
    """The action that clears one cause, and the share of such faults it clears (a fault's
    fixability is drawn once, at planning, so the ground truth knows it)."""

    action: FixAction
    probability: float = Field(ge=0, le=1)


class CauseFixes(_Model):
    """One rule per injected cause (lower-case names, so env overrides reach them)."""

    teacher_network: FixRule = FixRule(action="switch_media_line", probability=0.8)
    student_network: FixRule = FixRule(action="switch_media_line", probability=0.8)
    teacher_mic_muted: FixRule = FixRule(action="prompt_unmute", probability=0.95)
    student_mic_muted: FixRule = FixRule(action="prompt_unmute", probability=0.95)
    video_freeze: FixRule = FixRule(action="restart_video", probability=0.8)
    whiteboard_load_fail: FixRule = FixRule(action="reload_courseware", probability=0.9)
    teacher_not_entered: FixRule = FixRule(action="resend_enter_link", probability=0.85)
    student_not_entered: FixRule = FixRule(action="resend_enter_link", probability=0.85)

    def for_cause(self, cause: str) -> FixRule:
        return getattr(self, cause.lower())  # type: ignore[no-any-return]


class DelayRange(_Model):
    min: float = Field(1.0, ge=0)
    max: float = Field(3.0, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> DelayRange:
        if self.min > self.max:
            raise ValueError("min must not exceed max")
        return self


class FaultModelConfig(_Model):
    """How simulated clients react to `classroom.help.actions` (the closed loop)."""

    # A client takes this long (uniform, seeded per action) to act on an action.
    reaction_delay_s: DelayRange = Field(default_factory=DelayRange)
    # A diagnostics reply names the active fault with this probability, else NO_ISSUE_DETECTED.
    diagnostics_accuracy: float = Field(0.9, ge=0, le=1)
    fixes: CauseFixes = Field(default_factory=CauseFixes)


class SimulatorConfig(_Model):
    help_share: float = Field(0.10, ge=0, le=1)
    bad_input: BadInputShares = Field(default_factory=BadInputShares)
    test_accounts: list[str] = Field(default_factory=list)
    # A Help request comes no earlier than this into the lesson ...
    help_min_offset_s: float = Field(20, ge=0)
    # ... and no later than this before the run ends (the closed loop needs time to answer it
    # while the lesson still runs: `lakehouse demo` raises it to its playbook's length) ...
    help_latest_before_end_s: float = Field(2, ge=0)
    # ... and its root-cause fault starts up to this long before it ...
    fault_lead_s: float = Field(30, gt=0)
    # ... and lasts this long after it (until the closed loop fixes it).
    fault_persist_s: float = Field(60, ge=0)
    # Each participant's AV samples and heartbeat, and each lesson's whiteboard event, come once
    # per this many seconds. DESIGN.md's cadence says 2 s, which is ~5 events/s per lesson; its
    # stated average (2.5 events/s per lesson, issue 4's "10,000 lessons, about 25,000 events/s")
    # is what 4 s gives. Benches take it from the environment
    # (LAKEHOUSE__SIMULATOR__SAMPLE_INTERVAL_S) and record it in their command line.
    sample_interval_s: float = Field(2.0, ge=0.5, le=60)
    # Share of participants whose client already sends av.quality schema v2 (with `codec`).
    av_v2_share: float = Field(0.3, ge=0, le=1)
    fault_model: FaultModelConfig = Field(default_factory=FaultModelConfig)

    @property
    def sample_interval_ms(self) -> int:
        return int(self.sample_interval_s * 1000)

    @model_validator(mode="after")
    def _test_accounts_for_their_share(self) -> SimulatorConfig:
        if self.bad_input.test_account > 0 and not self.test_accounts:
            raise ValueError("simulator.bad_input.test_account > 0 needs simulator.test_accounts")
        return self
