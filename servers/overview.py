"""The servers service layer: per-server figures and the connection listing, from the
servers' monitoring data (``lucent_bus.monitor``), for the pages, the API and the
collector (which puts ``server_rows`` into the snapshot under ``servers`` for the alert
rules).

Rates (messages and bytes a second, per server and per connection) come from two
samples: this process keeps the last counters it saw (``Rates``), so the first look
has none and every later one (the page polls, the collector sweeps) has them.

Pages and API calls share answers (``SHARED``): the same question asked again within
``FRESH_S`` of its answer, by any page open on this process, gets that answer (a
failure too) instead of another round of requests to every server, so N open pages
polling every 3 s cost about one poll a second, not N every 3 s.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import re
import threading
import time
from collections import deque
from datetime import datetime

from kernel.actions import ActionError
from lucent_bus import monitor, sync

log = logging.getLogger("lucent.servers")
SLOW_WINDOW_S = 300.0  # slow consumers counted over the last 5 minutes (the alert rule)
MAX_SCAN = 20_000  # connections read per server for a filter or a client-side sort
SLOW_PENDING_SHARE = 0.1  # a connection with this share of max_pending waiting is slow
PAGE_SIZES = (25, 50, 100, 200)


FRESH_S = 1.0  # an answer is shared this long (a third of the pages' poll)


class SharedAnswers:
    """Answers of the monitoring source by question, each for ``fresh_s`` seconds; a
    question being fetched is waited for, not asked again. Every caller gets a copy."""

    def __init__(self, fresh_s: float = FRESH_S) -> None:
        self.fresh_s = fresh_s
        self._lock = threading.Lock()
        self._answers: dict = {}  # question -> (answered at, result, Unavailable or None)

    def get(self, question, fetch):
        with self._lock:  # one fetch at a time in this process (under ASGI one thread asks)
            now = time.monotonic()
            answer = self._answers.get(question)
            if answer is None or now - answer[0] >= self.fresh_s:
                try:
                    result, failure = fetch(), None
                except Unavailable as exc:
                    result, failure = None, exc
                now = time.monotonic()
                self._answers = {q: a for q, a in self._answers.items()
                                 if now - a[0] < self.fresh_s}
                answer = self._answers[question] = (now, result, failure)
        if answer[2] is not None:
            raise Unavailable(str(answer[2]))
        return copy.deepcopy(answer[1])

    def clear(self) -> None:
        with self._lock:
            self._answers = {}


class NotConfigured(ActionError):
    """No monitoring source: the API answers 404 with what is needed (the resource does
    not exist in this deployment; not a server failure), the pages say it."""

    status = 404


class Unavailable(ActionError):
    status = 503


SHARED = SharedAnswers()


def source() -> monitor.Source:
    """The configured monitoring source; ``NotConfigured`` says what is needed."""
    try:
        src = monitor.source_from_env()
    except monitor.MonitorError as exc:
        raise NotConfigured(f"{exc}. {monitor.NEEDS}") from None
    if src is None:
        raise NotConfigured(monitor.NEEDS)
    return src


class Rates:
    """Per-second rates of counters against an earlier sample of each key at least
    ``MIN_GAP_S`` old (two looks in quick succession do not make a noisy rate);
    thread-safe (pages and API of one process share it); keys unseen for 10 minutes
    are dropped."""

    FORGET_S, MIN_GAP_S = 600.0, 0.5

    def __init__(self) -> None:
        self.last: dict = {}  # key -> [(t, counters)], at most 3, MIN_GAP_S apart
        self.lock = threading.Lock()
        self.pruned = time.monotonic()

    def rates(self, key, counters: dict, now: float | None = None) -> dict:
        now = time.monotonic() if now is None else now
        with self.lock:
            samples = self.last.setdefault(key, [])
            before = next((s for s in reversed(samples) if now - s[0] >= self.MIN_GAP_S), None)
            if not samples or now - samples[-1][0] >= self.MIN_GAP_S:
                samples.append((now, counters))
                del samples[:-3]
            if now - self.pruned > 60:
                self.pruned = now
                self.last = {k: v for k, v in self.last.items() if now - v[-1][0] < self.FORGET_S}
        if before is None:
            return {f"{k}_per_s": None for k in counters}
        dt = now - before[0]
        return {f"{k}_per_s": (v - before[1].get(k, 0)) / dt if v >= before[1].get(k, 0) else None
                for k, v in counters.items()}


class Increase:
    """How much a cumulative counter grew over the last ``window`` seconds (a restart
    that resets it counts from its new value)."""

    def __init__(self, window: float = SLOW_WINDOW_S) -> None:
        self.window, self.seen = window, {}

    def add(self, key, value: int, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        samples = self.seen.setdefault(key, deque())
        samples.append((now, value))
        while samples and now - samples[0][0] > self.window:
            samples.popleft()
        grown, prev = 0, None
        for _, v in samples:
            if prev is not None:
                grown += v - prev if v >= prev else v
            prev = v
        return grown


server_rates, conn_rates, slow_growth = Rates(), Rates(), Increase()


def _pct(used, limit) -> float | None:
    return round(100.0 * used / limit, 1) if limit else None


def _jetstream(jsz: dict | None) -> dict | None:
    if not jsz or not jsz.get("config"):
        return None
    cfg = jsz["config"]
    js = {k: jsz.get(k, 0) for k in ("memory", "storage", "reserved_memory", "reserved_storage",
                                      "streams", "consumers", "messages", "bytes")}
    js.update(max_memory=cfg.get("max_memory", 0), max_storage=cfg.get("max_storage", 0))
    js["memory_pct"] = _pct(js["memory"], js["max_memory"])
    js["storage_pct"] = _pct(js["storage"], js["max_storage"])
    return js


def _links(routez, leafz, gatewayz, varz) -> dict:
    routes = (routez or {}).get("routes") or []
    out = (gatewayz or {}).get("outbound_gateways") or {}
    inbound = (gatewayz or {}).get("inbound_gateways") or {}
    cluster = (varz.get("cluster") or {})
    return {"cluster": cluster.get("name") or "", "routes": len(routes),
            "route_names": sorted({r.get("remote_name") or r.get("remote_id", "?") for r in routes}),
            "routes_configured": len(cluster.get("urls") or []),
            "leafnodes": (leafz or {}).get("leafnodes", varz.get("leafnodes", 0)),
            "gateway": (gatewayz or {}).get("name") or (varz.get("gateway") or {}).get("name") or "",
            "gateways_out": sorted(out), "gateways_in": sorted(inbound)}


def display_name(varz: dict, origin: str) -> str:
    """The server's name; one started without ``-n`` is named by its 56-character id,
    shown instead as host:port (its client address)."""
    name = varz.get("server_name") or ""
    if not name or name == varz.get("server_id"):
        return f"{varz['host']}:{varz['port']}" if varz.get("host") and varz.get("port") else origin
    return name


def server_row(origin: str, parts: dict, now: float | None = None) -> dict:
    """One server's figures from its varz, jsz, healthz, routez, leafz, gatewayz."""
    varz = parts.get("varz") or {}
    counters = {k: varz.get(k, 0) for k in ("in_msgs", "out_msgs", "in_bytes", "out_bytes")}
    health = parts.get("healthz")
    row = {"origin": origin, "id": varz.get("server_id", ""), "name": display_name(varz, origin),
           "version": varz.get("version", ""), "start": varz.get("start"),
           "uptime": varz.get("uptime", ""), "uptime_s": _since(varz.get("start"), varz.get("now")),
           "cpu": varz.get("cpu"), "mem": varz.get("mem"), "cores": varz.get("cores"),
           "connections": varz.get("connections"), "total_connections": varz.get("total_connections"),
           "subscriptions": varz.get("subscriptions"), "slow_consumers": varz.get("slow_consumers", 0),
           "slow_consumer_stats": varz.get("slow_consumer_stats") or {},
           "max_pending": varz.get("max_pending"), **counters,
           **server_rates.rates(origin, counters, now),
           "jetstream": _jetstream(parts.get("jsz")),
           "health": (health or {}).get("status") or "unknown",
           "health_error": (health or {}).get("error") or "",
           **_links(parts.get("routez"), parts.get("leafz"), parts.get("gatewayz"), varz),
           "errors": parts.get("errors", [])}
    row["slow_consumers_5m"] = slow_growth.add(origin, row["slow_consumers"] or 0, now)
    return row


def _since(start: str | None, now: str | None) -> float | None:
    try:
        return (_when(now) - _when(start)).total_seconds()
    except (TypeError, ValueError):
        return None


def _when(text: str) -> datetime:
    # nanoseconds: Python takes microseconds at most
    return datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", text).replace("Z", "+00:00"))


async def gather_servers(src: monitor.Source) -> list[dict]:
    """Every server's row, sorted by name; a server that did not answer has ``errors``."""
    endpoints = ("varz", "jsz", "healthz", "routez", "leafz", "gatewayz")
    answers = await asyncio.gather(*(monitor.gather(src, ep) for ep in endpoints),
                                   return_exceptions=True)
    parts: dict[str, dict] = {}
    failed = []
    for endpoint, replies in zip(endpoints, answers, strict=True):
        if isinstance(replies, BaseException):
            if endpoint == "varz":
                raise Unavailable(str(replies)) from replies
            failed.append(f"{endpoint}: {replies}")
            continue
        for r in replies:
            p = parts.setdefault(r.origin, {"errors": []})
            if r.error:
                p["errors"].append(r.error)
            else:
                p[endpoint] = r.data
    rows = [server_row(origin, p) for origin, p in parts.items() if p.get("varz")]
    down = [{"origin": origin, "name": origin, "down": True, "errors": p["errors"]}
            for origin, p in parts.items() if not p.get("varz")]
    if not rows:
        raise Unavailable("; ".join([e for d in down for e in d["errors"]] + failed)
                          or "no server answered")
    for row in rows:
        row["errors"] += failed
    rows.sort(key=lambda r: r["name"])
    return rows + down


def servers() -> list[dict]:
    """For pages and the API (sync): the rows, or NotConfigured / Unavailable."""
    src = source()

    def fetch() -> list[dict]:
        try:
            return sync.run(gather_servers, src, timeout=src.timeout * 3 + 5)
        except monitor.MonitorError as exc:
            raise Unavailable(str(exc)) from None

    return SHARED.get(("servers", src), fetch)


class ServerSampler:
    """The collector's part: every ``LUCENT_SERVERS_EVERY_S`` seconds (5) it starts a
    fetch of every server's row in the background and puts the last answer into the
    snapshot under ``servers`` (by name) for the alert rules; a fetch still running is
    never waited for, so a dead monitoring port never delays a sweep (the fetch itself
    gives up after the source's timeout). A failed fetch leaves ``servers`` out and says
    why in ``servers_error``. Without a monitoring source it does nothing."""

    def __init__(self, every_s: float | None = None) -> None:
        self.every_s = every_s or float(os.getenv("LUCENT_SERVERS_EVERY_S") or 5.0)
        self.started_at = -1e9
        self.task: asyncio.Task | None = None
        self.rows: dict | None = None
        self.error: str | None = None

    async def fill(self, snapshot: dict) -> None:
        try:
            src = monitor.source_from_env()
        except monitor.MonitorError as exc:
            snapshot["servers_error"] = str(exc)
            return
        if src is None:
            return
        if self.task is not None and self.task.done():
            self._take(self.task)
            self.task = None
        if self.task is None and time.monotonic() - self.started_at >= self.every_s:
            self.started_at = time.monotonic()
            self.task = asyncio.create_task(asyncio.wait_for(gather_servers(src),
                                                             src.timeout * 3 + 1))
        if self.rows is not None:
            snapshot["servers"] = self.rows
        elif self.error:
            snapshot["servers_error"] = self.error

    def _take(self, task: asyncio.Task) -> None:
        try:
            rows = task.result()
        except Exception as exc:  # reported in the snapshot (the pages say it too)
            self.rows, self.error = None, f"{type(exc).__name__}: {exc}"
            log.warning("collector: server monitoring data: %s", self.error)
            return
        self.rows = {r["name"]: r for r in rows if not r.get("down")}
        self.error = "; ".join(e for r in rows if r.get("down") for e in r["errors"]) or None
