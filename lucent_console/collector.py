"""The collector: the one process that watches the bus for every reader.

For now it keeps its bus connection, records its health (``Heartbeat`` row
read by /healthz) and announces the console on the bus like any Lucent
service (``lucent.services.console.health``). The live-streams work builds
its sweeps on this loop.
"""

from __future__ import annotations

import asyncio
import logging
import time

from asgiref.sync import sync_to_async
from nats.aio.client import Client

from lucent_console.bus import envelope
from lucent_console.bus import jetstream as js

from .models import Heartbeat

log = logging.getLogger("lucent.collector")


async def sweep(nc: Client) -> dict:
    """One look at the bus: reachable, JetStream usage. Never raises."""
    started = time.monotonic()
    health: dict = {"connected": nc.is_connected, **js.server_summary(nc)}
    if nc.is_connected:
        try:
            info = await js.account_info(nc)
            health.update(streams=info.get("streams", 0), consumers=info.get("consumers", 0),
                          memory=info.get("memory", 0), storage=info.get("storage", 0))
        except Exception as exc:
            health["error"] = f"{type(exc).__name__}: {exc}"
    health["sweep_ms"] = round((time.monotonic() - started) * 1000, 2)
    return health


async def announce(nc: Client, health: dict) -> None:
    if not nc.is_connected:
        return
    status = "ok" if "error" not in health else "degraded"
    await nc.publish("lucent.services.console.health", envelope.encode(envelope.make(
        "HealthCheck", "lucent.services.console.health", {"status": status, **health},
        sender={"serviceId": "console", "instanceId": "collector"})))


async def run(nc: Client, stop: asyncio.Event, interval: float = 5.0) -> None:
    while not stop.is_set():
        health = await sweep(nc)
        try:
            await sync_to_async(Heartbeat.beat)("collector", **health)
            await announce(nc, health)
        except Exception:
            log.exception("collector: could not record health")
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except TimeoutError:
            pass
