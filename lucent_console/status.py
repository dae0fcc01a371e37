"""What the web process knows about the bus and the other components."""

from __future__ import annotations

import asyncio
import time

from asgiref.sync import sync_to_async
from django.db import connection

from kernel.models import Heartbeat
from lucent_bus import jetstream as js
from lucent_bus import lease
from lucent_bus.client import web_client
from lucent_bus.config import BusConfig

STALE_AFTER_S = 60


async def bus_status(timeout: float = 2.0) -> dict:
    """Connected? Which server, how many streams. Never raises."""
    try:
        described = BusConfig.from_env().describe()
    except Exception as exc:
        return {"ok": False, "error": str(exc)}
    out = {"ok": False, **described}
    try:
        nc = await asyncio.wait_for(web_client.get(timeout), timeout + 1)
        if not nc.is_connected or getattr(nc, "unanswered_since", None):
            # Said at once from what the connection's watchdog knows: a frozen server
            # would otherwise hold every /healthz for the flush timeout below.
            since = nc.unanswered_since if nc.is_connected else web_client.state.disconnected_since
            away = f" for {time.time() - since:.0f}s" if since else ""
            doing = "reconnecting to" if not nc.is_connected else "no answer from"
            out["error"] = f"bus unreachable{away}: {doing} {', '.join(described['servers'])}"
            return out
        await nc.flush(timeout=timeout)
        info = await js.account_info(nc)
        held = await lease.read(nc, "collector")
    except Exception as exc:
        out["error"] = f"bus unreachable: {type(exc).__name__}: {exc}".rstrip(": ")
        return out
    out.update(ok=True, **js.server_summary(nc), streams=info.get("streams", 0),
               consumers=info.get("consumers", 0), storage=info.get("storage", 0),
               memory=info.get("memory", 0), leader=(held or {}).get("holder"))
    return out


def _components() -> dict:
    with connection.cursor() as cur:
        cur.execute("SELECT 1")
    out = {}
    for hb in Heartbeat.objects.all():
        age = round(hb.age_seconds(), 1)
        out[hb.component] = {"age_s": age, "stale": age > STALE_AFTER_S}
    return out


async def health() -> tuple[bool, dict]:
    body: dict = {"status": "ok"}
    problems = []
    try:
        body["components"] = await sync_to_async(_components)()
        body["database"] = "ok"
    except Exception as exc:
        body["database"] = "error"
        problems.append(f"database: {type(exc).__name__}")
    bus = await bus_status()
    body["bus"] = {k: bus.get(k) for k in ("ok", "servers", "version", "cluster_size", "streams")}
    body["leader"] = {"collector": bus.get("leader")}  # host:pid:tag of the active collector
    if not bus["ok"]:
        problems.append(bus.get("error", "bus unreachable"))
    for name, comp in body.get("components", {}).items():
        if comp["stale"]:
            body.setdefault("warnings", []).append(f"{name}: no heartbeat for {comp['age_s']}s")
    if problems:
        body["status"] = "error"
        body["reason"] = "; ".join(problems)
    return not problems, body
