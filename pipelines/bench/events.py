"""Synthetic `av.quality` events for benchmarks.

A fixed generator rather than the simulator: the bench must measure the pipeline, not the
simulator, and must give the same bytes whatever the simulator's knobs say. The shape follows the
event contract v1 (envelope + av.quality payload) and the size (~400 bytes) matches real samples.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import orjson

AV_TOPIC = "classroom.av"
_PLATFORMS = ("ios", "android", "windows", "mac", "web")
_TEAMS = {"ios": "client-ios", "android": "client-android", "windows": "client-pc",
          "mac": "client-pc", "web": "client-web"}


def _sample(rng: random.Random, room: int, lesson: int) -> dict[str, object]:
    """One av.quality event without its event_id and event_time."""
    role = "teacher" if rng.random() < 0.5 else "student"
    platform = _PLATFORMS[room % len(_PLATFORMS)]
    direction = "up" if rng.random() < 0.5 else "down"
    media = "audio" if rng.random() < 0.5 else "video"
    payload: dict[str, object] = {
        "direction": direction,
        "media": media,
        "bitrate_kbps": round(rng.uniform(24, 2500), 1),
        "packet_loss_pct": round(rng.expovariate(2.0), 2),
        "jitter_ms": round(rng.uniform(1, 60), 1),
        "rtt_ms": rng.randrange(20, 900),
        "freeze_count": rng.choice((0, 0, 0, 0, 1, 2)) if media == "video" else 0,
    }
    if direction == "up":
        payload["mic_muted" if media == "audio" else "camera_on"] = rng.random() < 0.8
    return {
        "event_type": "av.quality",
        "schema_version": 1,
        "team": _TEAMS[platform],
        "classroom_id": f"cls-{room:06d}",
        "lesson_id": f"lsn-{room:06d}-{lesson:03d}",
        "user_id": f"{role[:3]}-{room:06d}",
        "role": role,
        "platform": platform,
        "app_version": "5.12.3",
        "payload": payload,
    }


def av_events(n: int, *, seed: int = 7, classrooms: int = 500, variants: int = 4096,
              start_ms: int = 1_767_225_600_000) -> Iterator[tuple[bytes, bytes]]:
    """`n` (key, value) pairs: key = classroom_id (the contract's record key), value = JSON.

    Bodies come from a pool of `variants` samples so generating 300k events takes about a second
    (the bench should not wait on its own generator); event_id and event_time are unique.
    """
    rng = random.Random(seed)
    pool = [_sample(rng, rng.randrange(classrooms), i % 7) for i in range(variants)]
    keys = [str(sample["classroom_id"]).encode() for sample in pool]
    bodies = [orjson.dumps(sample)[1:-1] for sample in pool]  # the fields without the braces
    for i in range(n):
        j = rng.randrange(variants)
        h = f"{rng.getrandbits(128):032x}"  # a UUID v4 string, without uuid.UUID's cost
        head = f'{{"event_id":"{h[:8]}-{h[8:12]}-4{h[13:16]}-8{h[17:20]}-{h[20:]}",'
        tail = f',"event_time":{start_ms + i * 10}}}'
        yield keys[j], head.encode() + bodies[j] + tail.encode()
