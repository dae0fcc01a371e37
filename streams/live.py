"""The web process's copy of the collector's snapshot, kept live by deltas.

One ``Relay`` per web process subscribes to the collector's deltas on the bus,
applies them, and tells this process's websocket consumers what changed
through the channel layer (group ``relay.group``, named for this process so
that with a shared Redis layer each process still serves only its own
sockets). A gap in the deltas, or a delta on a fresh start, fetches the whole
snapshot again: like a client that lost its place, it reloads the state
rather than replaying the gap.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import time

from channels.layers import get_channel_layer
from django.conf import settings

from lucent_bus import cancel, live, notify_subjects, watch_streams
from lucent_bus.client import web_client

from . import snapshot as snap

log = logging.getLogger("lucent.live")
SPARK_POINTS = 60
REFRESH_STALE_S = 3.0  # while the data is stale and the bus answers, ask for it this often
WATCH_RENEW_S = 3.0  # the streams this process's sockets show are announced this often


class Relay:
    def __init__(self) -> None:
        self.snapshot: dict | None = None
        self.received_at: float | None = None
        self.history: dict[str, collections.deque] = {}
        self.group = f"live.{socket.gethostname()[:40]}.{os.getpid()}".replace("_", "-")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._render_cache: dict = {}
        self.alerts_version = 0  # alert transitions seen (consumers cache the alert lists by it)
        self.alerts_cache: dict = {}
        self._render_seq = None
        self._generation = 0  # of web_client's connection the subscriptions are on
        self._refreshed_at = 0.0
        self.watching: collections.Counter = collections.Counter()  # stream -> sockets showing it
        self._announced_at = 0.0
        self._announcing: set[asyncio.Task] = set()

    # ------------------------------------------------------------ lifecycle

    async def ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            if self.snapshot is None:
                await self.refresh()
            return
        if self._lock is None or self._loop is not loop:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._loop is loop:
                return
            await self._subscribe(await web_client.get())
            self._loop = loop
            await self.refresh()
            loop.create_task(self._watch(loop))

    async def _subscribe(self, nc) -> None:
        # nats-py carries subscriptions over its own reconnects; a connection the
        # watchdog replaced is a new one (``web_client.generation``) and needs them again.
        self._generation = web_client.generation()
        await live.subscribe_deltas(nc, self.on_delta)
        await nc.subscribe(notify_subjects.LIVE_DEADLETTERS, cb=self.on_deadletters)
        await nc.subscribe(notify_subjects.LIVE_SERVICES, cb=self.on_service_event)
        await nc.subscribe(notify_subjects.LIVE_ALERTS, cb=self.on_alerts)

    async def refresh(self) -> bool:
        self._refreshed_at = time.monotonic()
        try:
            nc = await web_client.get()
            self._set(await live.fetch_full(nc, timeout=3))
            return True
        except Exception as exc:
            log.debug("relay: no full snapshot: %s", exc)
            return False

    async def _watch(self, loop) -> None:
        """Tell the sockets when the data goes stale (or fresh) with no delta to say it:
        a bus that is down carries no deltas. Also subscribe again on a replaced
        connection, and ask for the whole snapshot while the data is stale and the bus
        answers (deltas resume only when the collector sweeps again)."""
        last = None
        while self._loop is loop:
            cancel.check()
            await asyncio.sleep(max(0.5, min(1.0, settings.LUCENT_SWEEP_INTERVAL)))
            try:
                await self._recover()
            except Exception as exc:
                log.debug("relay: not recovered yet: %s", exc)
            if time.monotonic() - self._announced_at >= WATCH_RENEW_S:
                await self.announce_watched()
            status = self.status()
            shown = (status["ok"], status["error"], round(status["age_s"] or 0) if not status["ok"] else 0)
            if shown != last:
                last = shown
                layer = get_channel_layer()
                if layer is not None:
                    await layer.group_send(self.group, {"type": "snapshot.updated", "changed": {
                        "full": False, "streams": [], "consumers": [], "membership": False,
                        "status_only": True}})

    def watch(self, name: str) -> bool:
        """A socket shows stream ``name``: the collector is told (now if it is new here,
        then every ``WATCH_RENEW_S``) and sweeps it fast. Only streams the snapshot knows;
        False for any other name (nothing to undo)."""
        if name not in (self.snapshot or {}).get("streams", {}):
            return False
        self.watching[name] += 1
        if self.watching[name] == 1 and self._loop is not None:
            task = self._loop.create_task(self.announce_watched())
            self._announcing.add(task)  # kept until done (the loop holds tasks weakly)
            task.add_done_callback(self._announcing.discard)
        return True

    def unwatch(self, name: str) -> None:
        self.watching[name] -= 1
        if self.watching[name] <= 0:
            del self.watching[name]  # no longer renewed: the collector's watch expires

    async def announce_watched(self) -> None:
        if not self.watching or web_client.unreachable() is not None:
            return  # nothing shown, or a bus away: the next renewal after it comes back
        self._announced_at = time.monotonic()
        try:
            await watch_streams.announce(await web_client.get(), list(self.watching))
        except Exception as exc:  # the next renewal tries again; meanwhile the full sweep
            log.debug("relay: watched streams not announced: %s", exc)

    async def _recover(self) -> None:
        if web_client.unreachable() is not None or web_client.current() is None:
            return
        if web_client.generation() != self._generation:
            log.info("relay: subscribing again on a new bus connection")
            await self._subscribe(await web_client.get())
            await self.refresh()
        elif not self.status()["ok"] and time.monotonic() - self._refreshed_at > REFRESH_STALE_S:
            await self.refresh()

    # ------------------------------------------------------------ updates

    @cancel.callback
    async def on_delta(self, delta: dict) -> None:
        new = snap.apply_delta(self.snapshot, delta)
        if new is None:
            if not await self.refresh():
                return
            changed = {"full": True, "streams": [], "consumers": [], "membership": True,
                       "ok": self.snapshot.get("ok")}
        else:
            self._set(new)
            changed = snap.changed_keys(delta)
        layer = get_channel_layer()
        if layer is not None:
            await layer.group_send(self.group, {"type": "snapshot.updated", "changed": changed,
                                                "seq": self.snapshot.get("seq")})

    @cancel.callback
    async def on_deadletters(self, msg) -> None:
        layer = get_channel_layer()
        if layer is not None:
            await layer.group_send(self.group, {"type": "deadletters.added"})

    @cancel.callback
    async def on_service_event(self, msg) -> None:
        layer = get_channel_layer()
        if layer is not None:
            await layer.group_send(self.group, {"type": "services.event"})

    @cancel.callback
    async def on_alerts(self, msg) -> None:
        self.alerts_version += 1
        layer = get_channel_layer()
        if layer is not None:
            await layer.group_send(self.group, {"type": "alerts.changed"})

    def _set(self, snapshot: dict) -> None:
        previous_seq = (self.snapshot or {}).get("seq")
        self.snapshot = snapshot
        self.received_at = time.time()
        if snapshot.get("ok") and snapshot.get("seq") != previous_seq and not snapshot.get("event"):
            for name, s in snapshot.get("streams", {}).items():
                points = self.history.setdefault(name, collections.deque(maxlen=SPARK_POINTS))
                points.append(s.get("msgs_in_per_s") or 0.0)
            for gone in set(self.history) - set(snapshot.get("streams", {})):
                del self.history[gone]

    # ------------------------------------------------------------ reading

    def status(self) -> dict:
        """Freshness of what the pages show."""
        s = self.snapshot
        if s is None:
            return {"ok": False, "error": "no data from the collector yet", "age_s": None}
        age = time.time() - s["at"] if s.get("at") else None
        silent = self.received_at and time.time() - self.received_at > 5 * settings.LUCENT_SWEEP_INTERVAL + 2
        error = s.get("error")
        if silent:
            error = error or "the collector has sent nothing for a while"
        # Our own connection cannot reach the bus: whatever the last snapshot said, it is
        # stale from now on, and pages say so at once rather than after the silence above.
        away = web_client.unreachable(self._loop) if self._loop is not None else None
        if away:
            error, silent = away, True
        return {"ok": bool(s.get("ok")) and not silent, "error": error,
                "age_s": round(age, 1) if age is not None else None,
                "sweep_ms": s.get("sweep_ms"), "seq": s.get("seq"), "server": s.get("server", {})}

    def render_once(self, key, render):
        """Render a fragment once per snapshot for all the sockets that show it."""
        seq = (self.snapshot or {}).get("seq")
        if seq != self._render_seq:
            self._render_cache, self._render_seq = {}, seq
        if key not in self._render_cache:
            self._render_cache[key] = render()
        return self._render_cache[key]


relay = Relay()
