"""The Help fast path (tags, rules, window) and the resolver's playbooks."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import Field, field_validator

from pipelines.config.base import _Model

HELP_TAGS = ("TEACHER_NOT_ENTERED", "STUDENT_NOT_ENTERED", "TEACHER_NETWORK", "STUDENT_NETWORK",
             "TEACHER_MIC_MUTED", "STUDENT_MIC_MUTED", "WHITEBOARD_LOAD_FAIL", "VIDEO_FREEZE")
NO_ISSUE_TAG = "NO_ISSUE_DETECTED"


class HelpEngine(StrEnum):
    STATE = "state"  # per-classroom buffer (transformWithState), event-time timers
    JOIN = "join"  # stream-stream left outer join + streaming aggregation (for comparison)


class ResolverEvidence(StrEnum):
    """Where the resolver gets its classrooms' evidence (fired signals, liveness, diagnostics)."""

    TOPICS = "topics"  # the five classroom topics, read and filtered a second time
    # From the help job, which reads and filters the five topics anyway: less CPU, but each
    # piece of evidence waits for a help micro-batch (docs/RESOLVER.md, "Inputs").
    RELAY = "relay"


class HelpRulesConfig(_Model):
    """Tagging thresholds (DESIGN.md "Help tagging"); a sample counts once per event_id."""

    packet_loss_pct: float = Field(10, ge=0)  # an AV sample this lossy is a bad-network sample
    rtt_ms: int = Field(800, ge=0)  # ... and so is one this slow
    network_min_samples: int = Field(3, ge=1)  # that role's bad samples for <ROLE>_NETWORK
    network_disconnects: int = Field(1, ge=0)  # or this many signal.disconnect (0: ignore)
    mic_muted_min_samples: int = Field(1, ge=1)  # that role's audio-up samples with mic_muted
    freeze_min_count: int = Field(1, ge=1)  # a video-down sample with freeze_count >= this ...
    freeze_min_samples: int = Field(2, ge=1)  # ... in this many samples: VIDEO_FREEZE
    wb_load_fail_min_events: int = Field(1, ge=1)
    enter_fail_min_events: int = Field(1, ge=1)  # and no enter_success of that role


class HelpConfig(_Model):
    """The Help fast path: evidence window, watermark, trigger, rules and tag priority."""

    engine: HelpEngine = HelpEngine.STATE
    window_before_s: float = Field(60, ge=0)  # evidence this long before the request ...
    window_after_s: float = Field(5, ge=0)  # ... to this long after it (event time)
    watermark_delay_s: float = Field(2, ge=0)  # broker-time watermark delay
    trigger_seconds: float = Field(0.5, ge=0)
    tick_topic: str = "classroom.help.ticks"  # wall-clock ticks: the watermark moves when idle
    tick_interval_s: float = Field(0.5, gt=0)
    tags_topic: str = "classroom.help.tags"
    # With resolver.evidence = relay, the help job publishes here what the resolver reads of
    # the five topics: one message per bucket of classrooms and micro-batch.
    relay_topic: str = "classroom.help.relay"
    evidence_slack_s: float = Field(10, ge=0)  # evidence kept this long beyond the window
    max_records_per_trigger: int | None = Field(None, ge=1)  # default: kafka's cap
    state_partitions: int = Field(2, ge=1)  # shuffle partitions of the help query's state
    # Classrooms are hashed into this many state groups (one value each). Keep it while a
    # checkpoint lives: a change moves classrooms away from their state.
    key_buckets: int = Field(64, ge=1)
    rules: HelpRulesConfig = Field(default_factory=HelpRulesConfig)
    priority: list[str] = Field(default_factory=lambda: list(HELP_TAGS))
    # State engine: a request whose look-back evidence already makes one of these the primary
    # tag is tagged when it arrives, not when its window closes (empty: always wait).
    early_tags: list[str] = Field(default_factory=list)

    @field_validator("early_tags")
    @classmethod
    def _known_early_tags(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(HELP_TAGS))
        if unknown:
            raise ValueError(f"unknown tags {unknown}; known: {list(HELP_TAGS)}")
        return value

    @field_validator("priority")
    @classmethod
    def _known_tags(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(HELP_TAGS))
        if unknown or len(set(value)) != len(value):
            raise ValueError(f"must list each of {list(HELP_TAGS)} at most once; "
                             f"unknown: {unknown}")
        missing = [tag for tag in HELP_TAGS if tag not in value]
        return [*value, *missing]  # unlisted tags rank last, in their default order


class ResolverAction(StrEnum):
    """Corrective actions on classroom.help.actions (DESIGN.md "Automatic resolution")."""

    SWITCH_MEDIA_LINE = "switch_media_line"
    PROMPT_UNMUTE = "prompt_unmute"
    RESTART_VIDEO = "restart_video"
    RELOAD_COURSEWARE = "reload_courseware"
    RESEND_ENTER_LINK = "resend_enter_link"
    REQUEST_CLIENT_DIAGNOSTICS = "request_client_diagnostics"


class ActionTarget(StrEnum):
    """Whose client an action addresses (and whose evidence confirms it)."""

    TEACHER = "teacher"
    STUDENT = "student"
    REQUESTER = "requester"  # the role that pressed Help
    CLASSROOM = "classroom"  # nobody in particular: target_role null, evidence of any role


class ConfirmBy(StrEnum):
    """What proves an action worked."""

    QUIET = "quiet"  # no bad signal of `signals` for healthy_span_s while the role keeps sending
    ENTER_SUCCESS = "enter_success"  # an enter_success of the role after the action
    # A page that renders: a wb.page_turn of the role after the action and its last load
    # failure (a whiteboard failure is a few events, so silence proves nothing).
    PAGE_RENDERED = "page_rendered"
    DIAGNOSTICS = "diagnostics"  # the client's help.diagnostics reply (re-tags the request)


class PlaybookConfig(_Model):
    """One primary tag's playbook: the action, whom it targets, how success shows, how long."""

    action: ResolverAction
    target: ActionTarget
    signals: list[str] = Field(default_factory=list)  # help_signals kinds that show the problem
    confirm: ConfirmBy = ConfirmBy.QUIET
    # VALIDATE may end in RESOLVED_SELF (off for one-off evidence such as a load failure, where
    # no new failure proves nothing until the client retries).
    self_resolve: bool = True
    confirm_timeout_s: float = Field(8, gt=0)
    retries: int = Field(1, ge=0)


def _playbook(action: ResolverAction, target: ActionTarget, signals: list[str],
              **kw: Any) -> dict[str, Any]:
    return {"action": action, "target": target, "signals": signals, **kw}


_NET = ["bad_network_sample", "disconnect"]
DEFAULT_PLAYBOOKS: dict[str, dict[str, Any]] = {
    "TEACHER_NETWORK": _playbook(ResolverAction.SWITCH_MEDIA_LINE, ActionTarget.TEACHER, _NET),
    "STUDENT_NETWORK": _playbook(ResolverAction.SWITCH_MEDIA_LINE, ActionTarget.STUDENT, _NET),
    "TEACHER_MIC_MUTED": _playbook(ResolverAction.PROMPT_UNMUTE, ActionTarget.TEACHER,
                                   ["mic_muted"]),
    "STUDENT_MIC_MUTED": _playbook(ResolverAction.PROMPT_UNMUTE, ActionTarget.STUDENT,
                                   ["mic_muted"]),
    "VIDEO_FREEZE": _playbook(ResolverAction.RESTART_VIDEO, ActionTarget.REQUESTER,
                              ["video_freeze"]),
    "WHITEBOARD_LOAD_FAIL": _playbook(ResolverAction.RELOAD_COURSEWARE, ActionTarget.REQUESTER,
                                      ["wb_load_fail"], confirm=ConfirmBy.PAGE_RENDERED,
                                      self_resolve=False),
    "TEACHER_NOT_ENTERED": _playbook(ResolverAction.RESEND_ENTER_LINK, ActionTarget.TEACHER,
                                     ["enter_fail"], confirm=ConfirmBy.ENTER_SUCCESS),
    "STUDENT_NOT_ENTERED": _playbook(ResolverAction.RESEND_ENTER_LINK, ActionTarget.STUDENT,
                                     ["enter_fail"], confirm=ConfirmBy.ENTER_SUCCESS),
    NO_ISSUE_TAG: _playbook(ResolverAction.REQUEST_CLIENT_DIAGNOSTICS, ActionTarget.REQUESTER,
                            [], confirm=ConfirmBy.DIAGNOSTICS, self_resolve=False),
}


class ResolverConfig(_Model):
    """`lakehouse run resolver`: the playbooks and the timing of the Help state machine."""

    actions_topic: str = "classroom.help.actions"
    escalations_topic: str = "classroom.help.escalations"
    evidence: ResolverEvidence = ResolverEvidence.TOPICS
    trigger_seconds: float = Field(1.0, ge=0)
    state_partitions: int = Field(1, ge=1)  # fixed by the checkpoint once the query ran
    # Classrooms are hashed into this many state groups. Keep it while a checkpoint lives: a
    # change moves classrooms away from their state, and Spark does not check it.
    key_buckets: int = Field(32, ge=1)
    max_records_per_trigger: int | None = Field(None, ge=1)  # default: kafka's cap
    # Request (broker time) -> a final state at the latest: ESCALATED when reached.
    total_timeout_s: float = Field(60, gt=0)
    # After an action, evidence counts from action + grace (the client's reaction) ...
    grace_s: float = Field(1, ge=0)
    # ... and is healthy once the role kept sending this long with no bad signal of the kind.
    healthy_span_s: float = Field(3, gt=0)
    # VALIDATE waits up to this long (from the tag's arrival) for a first record of a role it
    # holds no evidence of: the resolver keeps no state for a classroom that only ever looked
    # healthy, so the tag's own micro-batch may hold none of the role's (2 s) heartbeats.
    evidence_wait_s: float = Field(3, ge=0)
    evidence_ttl_s: float = Field(180, gt=0)  # a classroom's evidence state without updates
    done_ttl_s: float = Field(3600, gt=0)  # finished help_ids remembered (tag redelivery)
    # Fault injection for the exactly-once tests: SIGKILL right after the first batch from this
    # id on that published actions to Kafka, before its Delta commit. Never set in production.
    kill_after_publish_batch: int | None = None
    playbooks: dict[str, PlaybookConfig] = Field(default_factory=dict,
                                                 validate_default=True)

    @field_validator("playbooks", mode="before")
    @classmethod
    def _complete_playbooks(cls, value: Any) -> dict[str, Any]:
        """Keys are tags (any case: env overrides arrive lower-cased); missing tags and fields
        take the defaults, so an override can name one field of one playbook."""
        given: dict[str, dict[str, Any]] = {}
        for key, entry in (value or {}).items():  # YAML keys first, then the env's
            if isinstance(entry, PlaybookConfig):
                entry = entry.model_dump()
            given[str(key).upper()] = {**given.get(str(key).upper(), {}), **(entry or {})}
        unknown = sorted(set(given) - set(DEFAULT_PLAYBOOKS))
        if unknown:
            raise ValueError(f"unknown tags {unknown}; known: {list(DEFAULT_PLAYBOOKS)}")
        out: dict[str, Any] = {}
        for tag, default in DEFAULT_PLAYBOOKS.items():
            out[tag] = {**default, **given.get(tag, {})}
        return out

    def playbook(self, tag: str) -> PlaybookConfig:
        """The playbook of a primary tag (an unknown tag runs the NO_ISSUE_DETECTED one)."""
        return self.playbooks.get(tag) or self.playbooks[NO_ISSUE_TAG]
