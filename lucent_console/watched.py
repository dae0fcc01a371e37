"""The collector's fast sweep of the streams pages are showing (a task of its own).

The web processes announce the streams their sockets show (``lucent_bus.watch_streams``,
renewed every few seconds by ``streams.live.Relay``); a name is watched until
``WATCH_TTL_S`` after its last renewal, at most ``MAX_WATCHED`` at once (the rest wait
for the full sweep, like any stream), and only if the last full sweep saw it. Every
``WATCH_INTERVAL_S`` this task reads just those streams' info and consumers and
publishes their changed rows as a delta marked ``event`` (no status, no chart point),
so an open stream page follows a publish, an ack or a pause within about that interval,
while the full sweep of everything keeps its own interval and cost.

Rows of a watched stream come from this task's own rate tracker, and the full sweep
takes them (``prefer_fresh``) while they are fresh, so the two sweeps never show two
different readings of one stream in turn. A tick whose rows differ only in rates
publishes nothing: the full sweep carries them, with the chart points. A stream the read
finds deleted is removed from the snapshot and no longer watched. When the bus is away or a read fails,
the task says so once and retries every ``RETRY_S`` seconds.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from typing import TYPE_CHECKING

from lucent_bus import cancel, live, watch_streams
from streams import snapshot as snap

if TYPE_CHECKING:
    from .collector import Collector

log = logging.getLogger("lucent.collector")
WATCH_INTERVAL_S = 0.05
WATCH_TTL_S = 10.0
MAX_WATCHED = 50
RETRY_S = 1.0
FRESH_S = 1.0  # a fast reading younger than this wins over the full sweep's
CONCURRENCY = 8
RATES = ("msgs_in_per_s", "delivered_per_s", "acked_per_s", "drain_s")


def _same_but_rates(a: dict | None, b: dict) -> bool:
    return a is not None and all(a.get(k) == v for k, v in b.items() if k not in RATES)


class WatchedStreams:
    def __init__(self, collector: Collector) -> None:
        self.collector = collector
        self.tracker = snap.Tracker()
        self.expires: dict[str, float] = {}  # name -> monotonic time its watch ends
        self.read_at: dict[str, float] = {}  # name -> wall time of the reading in the snapshot
        self.latest: dict[str, tuple[dict, dict]] = {}  # name -> its last reading (rows)
        self.keys: dict[str, set[str]] = {}  # name -> its consumer keys in the snapshot
        self.refused = 0  # announced names beyond the cap
        self.failing = False
        self.ticks = 0  # fast sweeps that read at least one stream (tests, health)
        self._sub = None

    # ------------------------------------------------------------ the watch list

    def renew(self, names: list[str]) -> None:
        now = time.monotonic()
        known = (self.collector.snapshot or {}).get("streams", {})
        for name in names:
            if name in self.expires or (name in known and len(self.expires) < MAX_WATCHED):
                self.expires[name] = now + WATCH_TTL_S
            elif name in known:
                if not self.refused:
                    log.warning("collector: more than %d streams are watched; the others are "
                                "swept at the full-sweep interval", MAX_WATCHED)
                self.refused += 1

    def watched(self) -> list[str]:
        now = time.monotonic()
        for name in [n for n, until in self.expires.items() if until <= now]:
            self.forget(name)
        return sorted(self.expires)

    def forget(self, name: str) -> None:
        for table in (self.expires, self.read_at, self.latest, self.keys):
            table.pop(name, None)

    # ------------------------------------------------------------ sweeping

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self._loop(stop)
        finally:
            if self._sub is not None:  # a later term of this process subscribes again
                try:
                    await self._sub.unsubscribe()
                except Exception as exc:
                    log.debug("collector: watch subscription not ended: %s", exc)
                self._sub = None

    async def _loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            cancel.check()
            started = time.monotonic()
            try:
                if self._sub is None:  # nats-py carries it over its reconnects
                    self._sub = await watch_streams.subscribe(self.collector.nc, self.renew)
                await self.tick()
                if self.failing:
                    log.info("collector: watched streams are swept again")
                    self.failing = False
                pause = WATCH_INTERVAL_S - (time.monotonic() - started)
            except Exception as exc:
                if not self.failing:
                    log.warning("collector: watched streams not swept (%s: %s); retrying "
                                "every %.0f s", type(exc).__name__, exc, RETRY_S)
                    self.failing = True
                pause = RETRY_S
            try:
                await asyncio.wait_for(stop.wait(), max(0.005, pause))
            except TimeoutError:
                pass

    async def tick(self) -> None:
        c = self.collector
        names = self.watched()
        if not names or not (c.snapshot or {}).get("ok") or not c.nc.is_connected:
            return
        now = time.time()
        sem = asyncio.Semaphore(CONCURRENCY)

        async def one(name: str):
            async with sem:
                return await watch_streams.read(c.nc, name)

        got = await asyncio.gather(*(one(n) for n in names), return_exceptions=True)
        results = {n: r for n, r in zip(names, got, strict=True) if not isinstance(r, BaseException)}
        if not results:
            raise next(r for r in got if isinstance(r, BaseException))
        self.ticks += 1
        async with c._lock:
            await self._publish(results, now)

    def _seed_rates(self, name: str) -> None:
        """Start from the full sweep's rate history of the stream, so its rates go on
        rather than start again from one reading."""
        full = self.collector.tracker
        for mine, theirs in ((self.tracker.rates, full.rates), (self.tracker.since, full.since)):
            for key, value in theirs.items():
                if key.split("|", 1)[0].split("/", 1)[0] == name and key not in mine:
                    mine[key] = copy.deepcopy(value)

    def _rows(self, name: str, info: dict, raw: list[dict], now: float) -> tuple[dict, dict]:
        stream = self.tracker._stream(info, now)
        consumers = {}
        for one in raw:
            record = self.tracker._consumer(name, one, now)
            consumers[f"{name}/{record['name']}"] = record
            stream["pending"] += record["num_pending"]
            stream["ack_pending"] += record["num_ack_pending"]
        return stream, consumers

    async def _publish(self, results: dict, now: float) -> None:
        """Long because it builds the delta of the watched streams by hand: a diff of the
        whole snapshot every tick would cost what the full sweep costs."""
        c = self.collector
        old = c.snapshot
        if not old or not old.get("ok"):
            return
        streams, consumers = dict(old["streams"]), dict(old["consumers"])
        delta = {"streams": {}, "consumers": {}, "removed_streams": [], "removed_consumers": [],
                 "added_streams": [], "added_consumers": []}
        for name, got in results.items():
            if name not in self.keys:
                self.keys[name] = {k for k in consumers if k.split("/", 1)[0] == name}
                self._seed_rates(name)
            before = self.keys[name]
            if got is None:  # deleted: gone from the snapshot, and no longer watched
                self.forget(name)
                if streams.pop(name, None) is not None:
                    delta["removed_streams"].append(name)
                for key in before:
                    consumers.pop(key, None)
                    delta["removed_consumers"].append(key)
                continue
            row, rows = self._rows(name, *got, now)
            self.read_at[name], self.latest[name] = now, (row, rows)
            if set(rows) == before and _same_but_rates(streams.get(name), row) and all(
                    _same_but_rates(consumers.get(k), r) for k, r in rows.items()):
                continue  # only rates moved: the full sweep carries them (prefer_fresh)
            if streams.get(name) != row:
                delta["streams"][name] = streams[name] = row
            for key in before - set(rows):
                consumers.pop(key, None)
                delta["removed_consumers"].append(key)
            for key, record in rows.items():
                if key not in before:
                    delta["added_consumers"].append(key)
                if consumers.get(key) != record:
                    delta["consumers"][key] = consumers[key] = record
            self.keys[name] = set(rows)
        self.tracker.forget(set(self.keys) | set().union(*self.keys.values()))
        if not any(delta.values()):
            return
        c.tracker.seq += 1
        new = {**old, "streams": streams, "consumers": consumers, "seq": c.tracker.seq,
               "event": True}
        delta.update({k: new[k] for k in snap.HEAD if k in new}, base=old["seq"])
        c.snapshot = new
        if c.nc.is_connected:
            c.last_delta_bytes = await live.publish_delta(c.nc, delta)

    def prefer_fresh(self, new: dict) -> None:
        """In the full sweep's snapshot ``new`` (about to be published), put the watched
        streams' rows from this task's last reading when it is recent: as fresh or fresher,
        with this task's rates. Rates that moved since the last fast delta go out with this
        full sweep, as do its chart points (a fast delta draws none)."""
        if not new.get("ok") or not self.keys:
            return
        now = time.time()
        fresh = {n for n in self.keys if n in new["streams"] and n in self.latest
                 and now - self.read_at.get(n, 0.0) < FRESH_S}
        for name in set(self.keys) - fresh:
            del self.keys[name]  # the full sweep's rows stand; the next tick starts from them
        if not fresh:
            return
        consumers = {k: v for k, v in new["consumers"].items() if k.split("/", 1)[0] not in fresh}
        for name in fresh:
            row, rows = self.latest[name]
            new["streams"][name] = row
            consumers.update(rows)
            self.keys[name] = set(rows)
        new["consumers"] = consumers
