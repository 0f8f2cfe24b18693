"""One simulated lesson (teacher + student): identities, envelopes, and its events per tick.

Everything a lesson does is drawn from its own `random.Random`, seeded by (seed, index), so a
lesson's events do not depend on how many other lessons run beside it.

The hot path (healthy AV samples and heartbeats, ~90% of all events) never builds a dict: each
participant has its envelope pre-serialized, event ids are a per-participant random UUID prefix
plus a counter, and healthy payloads come from pools of pre-serialized JSON. One bytes `%`
format per event is all that is left. Faulted samples and rare events take the dict path.
"""

from __future__ import annotations

import random
from functools import cache
from typing import Any

import orjson

from pipelines.config import SimulatorConfig
from pipelines.simulator.faults import faulted_samples, plan_help
from pipelines.simulator.model import (
    AV_COMBOS,
    EVENT_FMT,
    GOOD,
    NEVER,
    NORMAL_STEPS,
    HelpTruth,
    SimEvent,
    new_uuid,
)
from schemas.contract import TOPIC_OF_EVENT_TYPE

_new = tuple.__new__  # SimEvent without a Python-level __new__ frame (hot path)
_FMT = b'%b%012x%b,"payload":%b}'  # EVENT_FMT with the event time already in the middle
POOL_BITS = 10  # 1024 pre-serialized healthy payloads per pool

AV_TOPIC = TOPIC_OF_EVENT_TYPE["av.quality"]
SIGNAL_TOPIC = TOPIC_OF_EVENT_TYPE["signal.heartbeat"]
WB_TOPIC = TOPIC_OF_EVENT_TYPE["wb.page_turn"]
HELP_TOPIC = TOPIC_OF_EVENT_TYPE["help.request"]
_SYNC = b'{"courseware_id":"%b","page":%d,"lag_ms":%d}'
_dumps = orjson.dumps

_TEAM_OF_PLATFORM = {"ios": "client-ios", "android": "client-android", "windows": "client-pc",
                     "mac": "client-pc", "web": "client-web"}
_PLATFORMS = {"teacher": (("windows", 0.6), ("mac", 1.0)),
              "student": (("ios", 0.35), ("android", 0.7), ("web", 0.85), ("windows", 0.95),
                          ("mac", 1.0))}
@cache
def av_pool(combo: int, codec: str | None) -> tuple[bytes, ...]:
    """Healthy AV payloads, clearly inside the thresholds (loss < 3, rtt < 300, no freeze)."""
    rng = random.Random(f"av-pool:{combo}:{codec}")
    direction, media = AV_COMBOS[combo]
    out = []
    for _ in range(1 << POOL_BITS):
        bitrate = 24 + rng.randrange(40) if media == "audio" else 300 + rng.randrange(1200)
        payload: dict[str, Any] = {
            "direction": direction, "media": media, "bitrate_kbps": bitrate,
            "packet_loss_pct": round(rng.random() * 2.5, 2), "jitter_ms": 1 + rng.randrange(25),
            "rtt_ms": 40 + rng.randrange(220), "freeze_count": 0}
        if combo == 0:
            payload["mic_muted"] = False
        elif combo == 1:
            payload["camera_on"] = True
        if codec is not None:
            payload["codec"] = codec
        out.append(_dumps(payload))
    return tuple(out)


@cache
def heartbeat_pool(network_type: str) -> tuple[bytes, ...]:
    rng = random.Random(f"hb-pool:{network_type}")
    return tuple(_dumps({"network_type": network_type, "rtt_ms": 40 + rng.randrange(220)})
                 for _ in range(1 << POOL_BITS))


class Participant:
    """A teacher or student client: identity, pre-serialized envelopes, fault intervals."""

    __slots__ = ("active", "app_version", "codec_a", "codec_v", "disc0", "disc1", "enter_start",
                 "frz0", "frz1", "id_prefix", "mid_av", "mid_hb", "mid_page", "mid_sync",
                 "mute0", "mute1", "n", "net0", "net1", "net_type", "platform", "pool_hb",
                 "pools_av", "role", "steps", "team", "user_id", "v2", "wb0", "wb1")

    def __init__(self, role: str, rng: random.Random, lesson: Lesson, av_v2_share: float) -> None:
        self.role = role
        self.user_id = f"{role[:3]}-{rng.getrandbits(40):010x}"
        draw = rng.random()
        self.platform = next(name for name, cum in _PLATFORMS[role] if draw < cum)
        self.team = _TEAM_OF_PLATFORM[self.platform]
        self.app_version = f"5.{rng.randrange(8, 15)}.{rng.randrange(10)}"
        self.v2 = rng.random() < av_v2_share
        self.codec_a = "opus"
        self.codec_v = ("h264", "vp8", "vp9", "av1")[rng.randrange(4)]
        self.net_type = ("wifi", "wifi", "cellular", "ethernet")[rng.randrange(4)]
        # Event ids: a random UUID (v4 layout) whose last 48 bits count this client's events.
        self.id_prefix = b'{"event_id":"' + new_uuid(rng.getrandbits)[:24].encode()
        self.n = 0
        self.net0 = self.net1 = self.mute0 = self.mute1 = NEVER
        self.frz0 = self.frz1 = self.disc0 = self.disc1 = NEVER
        self.wb0 = self.wb1 = NEVER  # its whiteboard fails to load in [wb0, wb1)
        # The planned enter flow: start, then (step, duration) pairs before enter_success.
        self.enter_start = rng.randrange(5000)
        self.steps = [(name, lo + rng.randrange(hi - lo)) for name, lo, hi in NORMAL_STEPS]
        self.active = self.enter_start + sum(d for _, d in self.steps)
        self.mid_av = lesson.middle(self, "av.quality", "av-platform", 2 if self.v2 else 1)
        self.mid_hb = lesson.middle(self, "signal.heartbeat", self.team)
        self.mid_sync = lesson.middle(self, "wb.sync_lag", "whiteboard")
        self.mid_page = lesson.middle(self, "wb.page_turn", "whiteboard")
        self.pools_av = tuple(
            av_pool(k, (self.codec_a if k % 2 == 0 else self.codec_v) if self.v2 else None)
            for k in range(4))
        self.pool_hb = heartbeat_pool(self.net_type)

    def present(self, t: int) -> bool:
        return self.active <= t and not self.disc0 <= t < self.disc1

    def next_id(self) -> int:
        self.n += 1
        return self.n


class Lesson:
    """A classroom with one lesson: its scheduled `oneoffs`, and per tick `samples` of each
    participant and one `whiteboard` event."""

    def __init__(self, index: int, seed: int, cfg: SimulatorConfig, duration_ms: int,
                 start_ms: int) -> None:
        self.rng = rng = random.Random(f"{seed}:{index}")
        self.index = index
        self.start_ms = start_ms
        self.classroom_id = f"cr-{seed}-{index:05d}"
        self.key = self.classroom_id.encode()
        self.lesson_id = new_uuid(rng.getrandbits)
        self.courseware_id = f"cw-{rng.randrange(10_000, 100_000)}"
        self.cw = self.courseware_id.encode()
        self.page = 1
        tick = cfg.sample_interval_ms
        self.wb_phase = rng.randrange(tick)
        self.teacher = Participant("teacher", rng, self, cfg.av_v2_share)
        self.student = Participant("student", rng, self, cfg.av_v2_share)
        self.phases = (rng.randrange(tick), rng.randrange(tick))
        self.oneoffs: list[SimEvent] = []
        self.truth: HelpTruth | None = None
        self.requester: Participant | None = None  # who asks for Help (plan_help sets both)
        self.victim: Participant | None = None  # whose client carries the fault
        failed = plan_help(self, cfg, duration_ms)
        for p in (self.teacher, self.student):
            if p is not failed:
                self.enter_flow(p, p.enter_start, p.steps, None)
        self.oneoffs.sort(key=lambda ev: ev.sim_ms)

    # ------------------------------------------------------------------ building events
    def envelope(self, p: Participant, event_type: str, team: str, version: int = 1
                 ) -> dict[str, Any]:
        """The static part of `p`'s events of one type (everything but id, time, payload)."""
        return {"event_type": event_type, "schema_version": version, "team": team,
                "classroom_id": self.classroom_id, "lesson_id": self.lesson_id,
                "user_id": p.user_id, "role": p.role, "platform": p.platform,
                "app_version": p.app_version}

    def middle(self, p: Participant, event_type: str, team: str, version: int = 1) -> bytes:
        """The pre-serialized envelope between the event id and the event time."""
        return b'",' + _dumps(self.envelope(p, event_type, team, version))[1:-1] + b',"event_time":'

    def oneoff(self, p: Participant, event_type: str, team: str, t: int,
               payload: dict[str, Any], protected: bool) -> None:
        """Schedule a rare event (enter steps, disconnects, load failures, Help requests)."""
        et = self.start_ms + t
        value = EVENT_FMT % (p.id_prefix, p.next_id(), self.middle(p, event_type, team), et,
                          _dumps(payload))
        self.oneoffs.append(SimEvent(TOPIC_OF_EVENT_TYPE[event_type], self.key, value, et, GOOD,
                                     t, protected))

    def enter_flow(self, p: Participant, t: int, steps: list[tuple[str, int]],
                   error: str | None) -> int:
        """Emit the steps (each at its end, with its duration); end in success or `error`."""
        begin = t
        for name, duration in steps:
            t += duration
            self.oneoff(p, "enter.step", p.team, t, {"step": name, "duration_ms": duration},
                        error is not None)
        if error is None:
            self.oneoff(p, "enter.step", p.team, t,
                        {"step": "enter_success", "duration_ms": t - begin}, False)
        else:
            self.oneoff(p, "enter.step", p.team, t,
                        {"step": "enter_fail", "duration_ms": t - begin, "error_code": error},
                        True)
        return t

    # ------------------------------------------------------------------ per tick
    def samples(self, p: Participant, t: int, out: list[SimEvent]) -> None:
        """Four AV samples (up/down x audio/video) and a heartbeat, all stamped `t`."""
        if not (p.active <= t and not p.disc0 <= t < p.disc1):
            return
        et, key = self.start_ms + t, self.key
        if p.net0 <= t < p.net1 or p.mute0 <= t < p.mute1 or p.frz0 <= t < p.frz1:
            faulted_samples(self, p, t, out)
            return
        bits, pre, n, pb = self.rng.getrandbits, p.id_prefix, p.n, POOL_BITS
        au, vu, ad, vd = p.pools_av
        append = out.append
        p.n = n + 5
        head = p.mid_av + b"%d" % et  # the envelope up to the payload, shared by the 4 samples
        append(_new(SimEvent, (AV_TOPIC, key, _FMT % (pre, n + 1, head, au[bits(pb)]),
                               et, GOOD, t, False)))
        append(_new(SimEvent, (AV_TOPIC, key, _FMT % (pre, n + 2, head, vu[bits(pb)]),
                               et, GOOD, t, False)))
        append(_new(SimEvent, (AV_TOPIC, key, _FMT % (pre, n + 3, head, ad[bits(pb)]),
                               et, GOOD, t, False)))
        append(_new(SimEvent, (AV_TOPIC, key, _FMT % (pre, n + 4, head, vd[bits(pb)]),
                               et, GOOD, t, False)))
        append(_new(SimEvent, (SIGNAL_TOPIC, key, EVENT_FMT % (
            pre, n + 5, p.mid_hb, et, p.pool_hb[bits(pb)]), et, GOOD, t, False)))

    def whiteboard(self, t: int, out: list[SimEvent]) -> None:
        """One whiteboard event per tick: a teacher page turn or a sync-lag sample."""
        rnd = self.rng.random
        teacher, student = self.teacher, self.student
        t_in, s_in = teacher.present(t), student.present(t)
        if not (t_in or s_in):
            return
        if t_in and rnd() < 0.15:
            if teacher.wb0 <= t < teacher.wb1:
                return  # a whiteboard that does not load turns no page
            self.page = self.page % 40 + 1
            p, mid = teacher, teacher.mid_page
            payload = b'{"courseware_id":"%b","page":%d}' % (self.cw, self.page)
        else:
            p = teacher if t_in and (not s_in or rnd() < 0.5) else student
            mid = p.mid_sync
            payload = _SYNC % (self.cw, self.page, 20 + int(rnd() * 300))
        et = self.start_ms + t
        value = EVENT_FMT % (p.id_prefix, p.next_id(), mid, et, payload)
        out.append(_new(SimEvent, (WB_TOPIC, self.key, value, et, GOOD, t, False)))
