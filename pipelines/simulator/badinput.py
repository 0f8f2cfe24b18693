"""Bad-input injection: turn a seeded share of events into each kind of bad input
(contract breaches, clocks, duplicates, test-account traffic).

Runs on the time-ordered stream with its own rng, so the choice of bad events depends only on
the seed. Protected events (fault evidence, Help requests) are never touched: a corrupted Help
request would make the ground truth a lie.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import orjson

from pipelines.config import BadInputShares
from pipelines.simulator.model import GOOD, BadKind, SimEvent
from schemas.contract import EVENT_TYPES, REQUIRED_ENVELOPE_FIELDS

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
MINUTE_MS = 60_000

_UNKNOWN_TYPES = ("chat.message", "av.qualty", "wb.zoom", "signal.ping", "enter.stepp")
_BAD_VERSIONS = (0, 3, 42, 99)  # no event type supports these
# Numeric payload fields a careless client might send as strings.
_STRINGLY = ("bitrate_kbps", "packet_loss_pct", "rtt_ms", "page", "lag_ms", "duration_ms")

_RETIMED = (BadKind.LATE, BadKind.UNNATURAL_TIMESTAMP)
_dumps = orjson.dumps


class BadInputInjector:
    """Corrupts a seeded share of each tick's events; keeps the previous tick for duplicates."""

    def __init__(self, shares: BadInputShares, seed: int,
                 test_accounts: Sequence[str] = ()) -> None:
        self.test_accounts = tuple(test_accounts)
        if shares.test_account > 0 and not self.test_accounts:
            raise ValueError("a test_account share needs test accounts to send as")
        self.rng = random.Random(f"{seed}:bad")
        cum, table = 0.0, []
        for kind in BadKind:
            cum += getattr(shares, kind.value)
            table.append((cum, kind))
        if cum > 1:
            raise ValueError(f"simulator.bad_input shares add up to {cum:g} > 1")
        self.total = cum
        self.table = table
        self._log_keep = math.log(1.0 - cum) if 0 < cum < 1 else 0.0
        self.previous: list[SimEvent] = []  # the last whole tick
        self.current: list[SimEvent] = []  # this tick's events so far, when it comes in chunks
        self.skip = self._gap()

    def _gap(self) -> int:
        """Events to pass before the next bad one (geometric): only bad events cost a draw."""
        if self.total <= 0:
            return 1 << 62
        if self.total >= 1:
            return 0
        return int(math.log(1.0 - self.rng.random()) / self._log_keep)

    def process(self, chunk: list[SimEvent], end_of_tick: bool = True) -> list[SimEvent]:
        """Return the chunk's events with bad ones substituted (or, for duplicates, inserted).

        A tick may come in several consecutive chunks (the last with `end_of_tick`); the picks
        and duplicates are exactly those of the whole tick in one piece, so the chunking
        (how often the producer loop looks for actions) never changes the output.

        Events are picked as if each were drawn with probability `total` (protected ones are
        passed over to the next); a pick becomes each kind with probability share/total. A
        duplicate re-sends an earlier good event of this or the previous tick (same bytes, same
        event_id) just before the pick, which itself goes out intact.
        """
        base = len(self.current)
        window = self.current + chunk if base else chunk  # the tick so far
        n, i, rnd = len(window), base + self.skip, self.rng.random
        inserts: list[tuple[int, SimEvent]] = []
        while i < n:
            ev = window[i]
            if ev.protected:
                i += 1
                continue
            r = rnd() * self.total
            kind = next(k for cum, k in self.table if r < cum)
            if kind is BadKind.DUPLICATE:
                old = self._earlier(window, i)
                if old is not None:
                    inserts.append((i - base, SimEvent(old.topic, old.key, old.value,
                                                       old.event_time, kind, ev.sim_ms)))
            else:
                event = orjson.loads(ev.value)
                value = self._corrupt(kind, event)
                event_time = event["event_time"] if kind in _RETIMED else ev.event_time
                window[i] = SimEvent(ev.topic, ev.key, value, event_time, kind, ev.sim_ms)
            i += 1 + self._gap()
        self.skip = i - n
        if end_of_tick:
            self.previous, self.current = window, []
        else:
            self.current = list(window)  # a copy: the caller owns the list it is handed
        mine = window[base:] if base else window
        if not inserts:
            return mine
        out: list[SimEvent] = []
        start = 0
        for i, dup in inserts:
            out.extend(mine[start:i])
            out.append(dup)
            start = i
        out.extend(mine[start:])
        return out

    def _earlier(self, window: list[SimEvent], i: int) -> SimEvent | None:
        """A good, unprotected event sent before position `i` (a few tries, else none)."""
        previous = self.previous
        if i + len(previous) == 0:
            return None
        for _ in range(4):
            pick = int(self.rng.random() * (i + len(previous)))
            ev = window[pick] if pick < i else previous[pick - i]
            if ev.kind == GOOD and not ev.protected:
                return ev
        return None

    def _corrupt(self, kind: BadKind, event: dict[str, Any]) -> bytes:
        rng = self.rng
        if kind is BadKind.MALFORMED_JSON:
            return self._malformed(_dumps(event))
        if kind is BadKind.MISSING_FIELD:
            payload_required = [f.name for f in EVENT_TYPES[event["event_type"]].payload(
                event["schema_version"]).fields if f.required]
            if payload_required and rng.random() < 0.3:
                event["payload"] = dict(event["payload"])
                del event["payload"][rng.choice(payload_required)]
            else:
                del event[rng.choice(REQUIRED_ENVELOPE_FIELDS)]
        elif kind is BadKind.WRONG_TYPE:
            payload = event["payload"]
            stringly = [name for name in _STRINGLY if name in payload]
            choice = rng.randrange(4)
            if choice == 0 and stringly:
                name = rng.choice(stringly)
                event["payload"] = {**payload, name: str(payload[name])}
            elif choice <= 1:
                event["event_time"] = str(event["event_time"])
            elif choice == 2:
                event["schema_version"] = str(event["schema_version"])
            else:
                event["payload"] = [payload]
        elif kind is BadKind.UNKNOWN_EVENT_TYPE:
            event["event_type"] = rng.choice(_UNKNOWN_TYPES)
        elif kind is BadKind.UNKNOWN_SCHEMA_VERSION:
            event["schema_version"] = rng.choice(_BAD_VERSIONS)
        elif kind is BadKind.UNNATURAL_TIMESTAMP:
            if rng.random() < 0.5:  # client clock hours ahead
                event["event_time"] += 2 * HOUR_MS + rng.randrange(46 * HOUR_MS)
            else:  # or days behind
                event["event_time"] -= 2 * DAY_MS + rng.randrange(28 * DAY_MS)
        elif kind is BadKind.TEST_ACCOUNT:  # contract-valid; silver filters it by user
            event["user_id"] = rng.choice(self.test_accounts)
        elif kind is BadKind.LATE:  # well behind its neighbours, yet a plausible clock
            # 2-3 minutes: past silver's lateness (90 s), within its clock tolerance (240 s).
            event["event_time"] -= 2 * MINUTE_MS + rng.randrange(MINUTE_MS)
        return _dumps(event)

    def _malformed(self, value: bytes) -> bytes:
        """Truncated, syntactically garbled, or not UTF-8; verified not to parse."""
        rng = self.rng
        pick = rng.random()
        if pick < 0.4:
            bad = value[: 1 + rng.randrange(len(value) - 1)]
        elif pick < 0.7:  # invalid UTF-8 inside a string: latin-1 bytes or a lone 0xff
            junk = (b"\xff\xfe", b"caf\xe9", b"\xc3\x28", b"\xed\xa0\x80")[rng.randrange(4)]
            bad = value.replace(b'"role":"', b'"role":"' + junk, 1)
        else:
            bad = (value.replace(b'":', b'";', 1), value[1:], value + b",}",
                   value.replace(b",", b",,", 1), b"<html>502 Bad Gateway</html>")[rng.randrange(5)]
        try:
            orjson.loads(bad)
        except orjson.JSONDecodeError:
            return bad
        return value[: len(value) // 2]
