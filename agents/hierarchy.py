"""The hierarchy as a live tree: node -> cluster -> site -> global, from the events on
``lucent.hierarchy.<level>[.<id>]`` (the collector's core subscription sees them all,
work-queue stream or not).

Per node, cluster, site and the global level: events in the last minute, last event,
and whether its events propagate upward (an event one level up was caused by one of
its events: ``causationId`` -> ``messageId``, within the last 5 minutes).
"""

from __future__ import annotations

import collections
import time

from lucent_bus import envelope

from .registry import clean_text

LEVELS = ("node", "cluster", "site", "global")
WINDOW_S = 60.0
PROPAGATION_S = 300.0


class Hierarchy:
    def __init__(self) -> None:
        self.times: dict[str, collections.deque] = {}
        self.last: dict[str, float] = {}
        self.up: dict[str, float] = {}  # key -> when an upper event last cited it
        self.owner: dict[str, tuple[str, float]] = {}  # messageId -> (key, at)

    def event(self, subject: str, data: bytes, headers: dict | None = None,
              now: float | None = None) -> str | None:
        now = time.time() if now is None else now
        tokens = subject.split(".")
        if len(tokens) < 3 or tokens[2] not in LEVELS:
            return None
        level = tokens[2]
        # The id comes from whoever published: bounded, printable text.
        ident = clean_text(".".join(tokens[3:]), 200)
        key = "global" if level == "global" else f"{level}:{ident or '?'}"
        times = self.times.setdefault(key, collections.deque())
        times.append(now)
        while times and now - times[0] > WINDOW_S:
            times.popleft()
        self.last[key] = now
        decoded = envelope.decode(data, headers)
        cause = self.owner.get(decoded.causation_id or "")
        if cause and LEVELS.index(cause[0].split(":")[0]) < LEVELS.index(level):
            self.up[cause[0]] = now
        if decoded.message_id:
            self.owner[decoded.message_id] = (key, now)
            if len(self.owner) > 50_000:  # forget the oldest half
                for mid in list(self.owner)[:25_000]:
                    del self.owner[mid]
        return key

    def records(self, now: float | None = None) -> dict[str, dict]:
        now = time.time() if now is None else now
        out = {}
        for key, times in self.times.items():
            level, _, ident = key.partition(":")
            recent = sum(1 for t in times if now - t <= WINDOW_S)
            out[key] = {"key": key, "level": level, "id": ident or "global",
                        "per_min": recent, "last": round(self.last[key], 3),
                        "propagates": level == "global" or now - self.up.get(key, -1e18) <= PROPAGATION_S}
        return dict(sorted(out.items(), key=lambda kv: (LEVELS.index(kv[1]["level"]), kv[0])))

    def silent_levels(self, records: dict[str, dict]) -> list[str]:
        active = {r["level"] for r in records.values() if r["per_min"]}
        return [level for level in LEVELS if level not in active]
