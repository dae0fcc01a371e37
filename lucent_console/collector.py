"""The collector: the one process that sweeps the bus for every reader,
and captures and indexes dead letters (``streams.capture``).

Each sweep (every ``LUCENT_SWEEP_INTERVAL`` seconds, 1 by default) builds one
snapshot (``streams.snapshot``), publishes what changed on the bus for the web
processes (``bus.live``) and answers their full-snapshot requests. Every few
seconds it records its health (``Heartbeat``, read by /healthz) and announces
the console on ``lucent.services.console.health`` like any Lucent service.

If the bus goes away, sweeps fail fast, the last data is republished marked
``ok: false`` (pages then say how old it is) and nats-py reconnects with
backoff; the first good sweep after that carries everything that changed.
"""

from __future__ import annotations

import asyncio
import logging
import time

from asgiref.sync import sync_to_async
from django.conf import settings
from nats.aio.client import Client

from lucent_console.bus import envelope, live
from lucent_console.bus import jetstream as js
from streams import snapshot as snap

from .models import Heartbeat

log = logging.getLogger("lucent.collector")
SERVICES_NOTIFY = "lucent.console.live.services"


class Collector:
    def __init__(self, nc: Client, interval: float | None = None) -> None:
        self.nc = nc
        self.interval = interval or settings.LUCENT_SWEEP_INTERVAL
        self.tracker = snap.Tracker()
        from agents.registry import ServiceRegistry

        self.services = ServiceRegistry()
        from agents.hierarchy import Hierarchy

        self.hierarchy = Hierarchy()
        self.snapshot: dict | None = None
        self.last_delta_bytes = 0

    async def sweep_once(self) -> dict:
        """Sweep, build, publish the delta. Never raises."""
        try:
            if not self.nc.is_connected:
                raise ConnectionError("bus unreachable (reconnecting)")
            new = await self.tracker.collect(self.nc, js.server_summary(self.nc))
        except Exception as exc:
            new = snap.failed(self.snapshot, f"{type(exc).__name__}: {exc}")
        new["services"] = self.services.records()
        new["hierarchy"] = self.hierarchy.records()
        delta = snap.diff(self.snapshot, new)
        self.snapshot = new
        if self.nc.is_connected:
            try:
                self.last_delta_bytes = await live.publish_delta(self.nc, delta)
            except Exception as exc:
                log.warning("collector: could not publish the delta: %s", exc)
        return new

    async def watch_services(self) -> None:
        """Heartbeats update the registry; alerts and config updates are kept."""
        from agents import registry

        async def on_heartbeat(msg):
            self.services.heartbeat(msg.subject, msg.data, msg.headers)

        async def on_event(msg):
            try:
                await sync_to_async(registry.store_event)(
                    registry.event_from(msg.subject, msg.data, msg.headers))
                await self.nc.publish(SERVICES_NOTIFY, b"")
            except Exception:
                log.exception("collector: could not keep a service event")

        async def on_hierarchy(msg):
            self.hierarchy.event(msg.subject, msg.data, msg.headers)

        await self.nc.subscribe("lucent.services.*.health", cb=on_heartbeat)
        await self.nc.subscribe("lucent.hierarchy.>", cb=on_hierarchy)
        await self.nc.subscribe("lucent.services.*.alerts", cb=on_event)
        await self.nc.subscribe("lucent.services.*.config", cb=on_event)

    def health(self) -> dict:
        s = self.snapshot or {}
        return {"connected": self.nc.is_connected, "ok": s.get("ok", False),
                "error": s.get("error"), "seq": s.get("seq", 0), "sweep_ms": s.get("sweep_ms"),
                "streams": len(s.get("streams", {})), "consumers": len(s.get("consumers", {})),
                "delta_bytes": self.last_delta_bytes, **js.server_summary(self.nc)}

    async def announce(self) -> None:
        health = self.health()
        try:
            await sync_to_async(Heartbeat.beat)("collector", **health)
        except Exception:
            log.exception("collector: could not record its heartbeat")
        if self.nc.is_connected:
            await self.nc.publish("lucent.services.console.health", envelope.encode(envelope.make(
                "HealthCheck", "lucent.services.console.health",
                {"status": "ok" if health["ok"] else "degraded", **health},
                sender={"serviceId": "console", "instanceId": "collector"})))

    async def run(self, stop: asyncio.Event, heartbeat_every: float = 5.0) -> None:
        from streams import capture

        await live.serve_full(self.nc, lambda: self.snapshot)
        await self.watch_services()
        capturing = asyncio.create_task(capture.run(self.nc, stop))
        last_beat = 0.0
        while not stop.is_set():
            started = time.monotonic()
            await self.sweep_once()
            if started - last_beat >= heartbeat_every:
                last_beat = started
                await self.announce()
            elapsed = time.monotonic() - started
            try:
                await asyncio.wait_for(stop.wait(), max(0.05, self.interval - elapsed))
            except TimeoutError:
                pass
        await capturing


async def run(nc: Client, stop: asyncio.Event, interval: float | None = None) -> None:
    await Collector(nc, interval).run(stop)
