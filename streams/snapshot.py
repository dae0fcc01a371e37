"""The snapshot: one sweep of the bus that feeds every reader.

``sweep`` pages through ``STREAM.LIST`` and ``CONSUMER.LIST`` (raw replies, so
fields nats-py drops, like ``num_subjects`` and ``first_ts``, are kept) and
``Tracker.build`` turns the replies into one plain, JSON-able dict with derived
rates, time-to-drain and stall flags. ``diff``/``apply_delta`` carry only what
changed from the collector to the web processes.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

from nats.aio.client import Client

from lucent_bus import jetstream as js
from lucent_bus import own

RATE_WINDOW_S = 5.0
STALL_AFTER_S = 30.0
CONCURRENCY = 16


async def sweep(nc: Client) -> tuple[list[dict], dict[str, list[dict]]]:
    """Raw stream infos and consumer infos by stream. CONSUMER.LIST is asked only
    of streams that have consumers, a few at a time."""
    streams = await js.list_streams(nc)
    sem = asyncio.Semaphore(CONCURRENCY)

    async def consumers_of(name: str) -> tuple[str, list[dict]]:
        async with sem:
            return name, await js.list_consumers(nc, name)

    wanted = [s["config"]["name"] for s in streams if s.get("state", {}).get("consumer_count")]
    pairs = await asyncio.gather(*(consumers_of(n) for n in wanted))
    return streams, dict(pairs)


def _ns_to_s(value: Any) -> float | None:
    return value / 1e9 if isinstance(value, (int, float)) and value > 0 else None


class Rate:
    """Per-second rate of a counter over the last ``RATE_WINDOW_S`` seconds."""

    __slots__ = ("points",)

    def __init__(self) -> None:
        self.points: collections.deque = collections.deque()

    def add(self, t: float, value: float) -> float | None:
        if self.points and value < self.points[-1][1]:
            self.points.clear()  # counter went back (stream recreated)
        self.points.append((t, value))
        while len(self.points) > 2 and t - self.points[0][0] > RATE_WINDOW_S:
            self.points.popleft()
        if len(self.points) < 2:
            return None
        (t0, v0), (t1, v1) = self.points[0], self.points[-1]
        return round((v1 - v0) / (t1 - t0), 3) if t1 > t0 else None


class Since:
    """When did a value last change?"""

    __slots__ = ("value", "at")

    def __init__(self, value: Any, at: float) -> None:
        self.value, self.at = value, at

    def update(self, value: Any, at: float) -> float:
        if value != self.value:
            self.value, self.at = value, at
        return self.at


class Tracker:
    """Collector-side memory between sweeps: rates and how long things stood still."""

    def __init__(self) -> None:
        self.seq = 0
        self.rates: dict[str, Rate] = {}
        self.since: dict[str, Since] = {}
        self._live: set[str] = set()

    def rate(self, key: str, t: float, value: float) -> float | None:
        tracker = self.rates.get(key)
        if tracker is None:
            tracker = self.rates[key] = Rate()
        return tracker.add(t, value)

    def unchanged_for(self, key: str, value: Any, t: float) -> float:
        since = self.since.get(key)
        if since is None:
            since = self.since[key] = Since(value, t)
        return t - since.update(value, t)

    def forget(self, live_keys: set[str]) -> None:
        if live_keys == self._live:
            return  # nothing came or went since the last sweep
        self._live = live_keys
        for table in (self.rates, self.since):
            for key in [k for k in table if k.split("|")[0] not in live_keys]:
                del table[key]

    def build(self, streams: list[dict], consumers: dict[str, list[dict]], server: dict,
              now: float | None = None, sweep_ms: float = 0.0) -> dict:
        """One snapshot from raw STREAM.LIST and CONSUMER.LIST replies."""
        now = time.time() if now is None else now
        out_streams = {info["config"]["name"]: self._stream(info, now) for info in streams}
        out_consumers = {}
        for name in out_streams:
            for c in consumers.get(name, []):
                record = self._consumer(name, c, now)
                out_consumers[f"{name}/{record['name']}"] = record
        return self.assemble(out_streams, out_consumers, server, now, sweep_ms)

    def assemble(self, streams: dict[str, dict], consumers: dict[str, dict], server: dict,
                 now: float, sweep_ms: float) -> dict:
        for record in consumers.values():
            stream = streams.get(record["stream"])
            if stream is not None:
                stream["pending"] += record["num_pending"]
                stream["ack_pending"] += record["num_ack_pending"]
        self.forget(set(streams) | set(consumers))
        self.seq += 1
        return {"seq": self.seq, "at": now, "ok": True, "error": None, "server": server,
                "sweep_ms": round(sweep_ms, 2), "streams": streams, "consumers": consumers}

    async def collect(self, nc: Client, server: dict) -> dict:
        """Sweep and build at once: each CONSUMER.LIST reply is turned into records
        as it arrives, so building overlaps the server answering the next ones."""
        started, now = time.monotonic(), time.time()
        raw_streams = await js.list_streams(nc)
        consumers: dict[str, dict] = {}
        sem = asyncio.Semaphore(CONCURRENCY)

        async def consumers_of(name: str) -> None:
            async with sem:
                raw = await js.list_consumers(nc, name)
            for c in raw:
                record = self._consumer(name, c, now)
                consumers[f"{name}/{record['name']}"] = record

        tasks = [asyncio.ensure_future(consumers_of(s["config"]["name"])) for s in raw_streams
                 if s.get("state", {}).get("consumer_count")]
        streams = {info["config"]["name"]: self._stream(info, now) for info in raw_streams}
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            raise
        ordered = {k: consumers[k] for k in sorted(consumers)}
        return self.assemble(streams, ordered, server,
                             now, (time.monotonic() - started) * 1000)

    def _stream(self, info: dict, now: float) -> dict:
        config, state = info.get("config", {}), info.get("state", {})
        name = config["name"]
        cluster = info.get("cluster") or {}
        replicas = [{"name": r.get("name"), "current": bool(r.get("current")),
                     "active_s": _ns_to_s(r.get("active")), "lag": r.get("lag", 0),
                     "offline": bool(r.get("offline"))} for r in cluster.get("replicas") or []]
        max_msgs, max_bytes = config.get("max_msgs", -1), config.get("max_bytes", -1)
        usage = [state.get("messages", 0) / max_msgs * 100 if max_msgs and max_msgs > 0 else 0,
                 state.get("bytes", 0) / max_bytes * 100 if max_bytes and max_bytes > 0 else 0]
        num_replicas = config.get("num_replicas", 1)
        return {
            "name": name,
            "subjects": config.get("subjects") or [],
            "retention": config.get("retention"),
            "storage": config.get("storage"),
            "replicas": num_replicas,
            "max_msgs": max_msgs, "max_bytes": max_bytes,
            "max_age_s": _ns_to_s(config.get("max_age")),
            "max_msgs_per_subject": config.get("max_msgs_per_subject", -1),
            "discard": config.get("discard"),
            "no_ack": bool(config.get("no_ack")),
            "duplicate_window_s": _ns_to_s(config.get("duplicate_window")),
            "messages": state.get("messages", 0),
            "bytes": state.get("bytes", 0),
            "first_seq": state.get("first_seq", 0),
            "last_seq": state.get("last_seq", 0),
            "first_ts": state.get("first_ts"),
            "last_ts": state.get("last_ts"),
            "consumer_count": state.get("consumer_count", 0),
            "num_subjects": state.get("num_subjects", 0),
            "num_deleted": state.get("num_deleted", 0),
            "cluster": {"name": cluster.get("name"), "leader": cluster.get("leader"),
                        "replicas": replicas},
            "replicas_ok": bool(cluster.get("leader") or num_replicas == 1)
            and all(r["current"] and not r["offline"] for r in replicas),
            "usage_pct": round(max(usage), 2),
            "msgs_in_per_s": self.rate(f"{name}|in", now, state.get("last_seq", 0)),
            "created": info.get("created"),
            "own": own.own_stream(name),  # the console's own stream: what breaks, or None
            "pending": 0,
            "ack_pending": 0,
        }

    def _consumer(self, stream: str, info: dict, now: float) -> dict:
        config = info.get("config", {})
        name = info.get("name") or config.get("durable_name") or config.get("name")
        key = f"{stream}/{name}"
        delivered, floor = info.get("delivered", {}), info.get("ack_floor", {})
        filters = list(config.get("filter_subjects") or [])
        if config.get("filter_subject"):
            filters.append(config["filter_subject"])
        pending, ack_pending = info.get("num_pending", 0), info.get("num_ack_pending", 0)
        delivered_rate = self.rate(f"{key}|delivered", now, delivered.get("consumer_seq", 0))
        acked_rate = self.rate(f"{key}|acked", now, floor.get("consumer_seq", 0))
        idle = self.unchanged_for(f"{key}|delivered", delivered.get("consumer_seq", 0), now)
        floor_idle = self.unchanged_for(f"{key}|floor", floor.get("stream_seq", 0), now)
        backlog = pending + ack_pending
        drain_s = None
        if backlog == 0:
            drain_s = 0.0
        elif acked_rate:
            drain_s = round(backlog / acked_rate, 1)
        return {
            "name": name, "stream": stream,
            "durable": bool(config.get("durable_name")),
            "filter_subjects": filters,
            "ack_policy": config.get("ack_policy"),
            "deliver_policy": config.get("deliver_policy"),
            "max_deliver": config.get("max_deliver", -1),
            "ack_wait_s": _ns_to_s(config.get("ack_wait")),
            "backoff_s": [b / 1e9 for b in config.get("backoff") or []],
            "max_ack_pending": config.get("max_ack_pending", -1),
            "push": bool(config.get("deliver_subject")),
            # Paused (nats-server 2.11+): until when (config pause_until, ISO), else None.
            "paused": bool(info.get("paused")),
            "pause_until": config.get("pause_until") if info.get("paused") else None,
            # The console's own consumer (what breaks, or None); own_live: one of its
            # ordered consumers (a live view), recognised by its delivery subject.
            "own": own.own_consumer(stream, name, config),
            "own_live": (config.get("deliver_subject") or "").startswith(own.INBOX_PREFIX + "."),
            "num_pending": pending,
            "num_ack_pending": ack_pending,
            "num_redelivered": info.get("num_redelivered", 0),
            "num_waiting": info.get("num_waiting", 0),
            "delivered_stream_seq": delivered.get("stream_seq", 0),
            "delivered_consumer_seq": delivered.get("consumer_seq", 0),
            "ack_floor_stream_seq": floor.get("stream_seq", 0),
            "ack_floor_consumer_seq": floor.get("consumer_seq", 0),
            "last_active": delivered.get("last_active"),
            "delivered_per_s": delivered_rate,
            "acked_per_s": acked_rate,
            "drain_s": drain_s,
            # When deliveries last moved (stable while idle, so an idle consumer
            # is not "changed" in every delta); pages show it as a time.
            "active_at": round(now - idle, 3),
            "stalled": pending > 0 and idle >= STALL_AFTER_S,
            "floor_stuck": floor.get("stream_seq", 0) < delivered.get("stream_seq", 0)
            and floor_idle >= STALL_AFTER_S,
        }


def failed(previous: dict | None, error: str, now: float | None = None) -> dict:
    """The snapshot to publish when the bus cannot be swept: last data, marked stale."""
    base = dict(previous or {"seq": 0, "streams": {}, "consumers": {}, "server": {}})
    base.update(ok=False, error=error, at=base.get("at"), failed_at=now or time.time())
    return base


# ------------------------------------------------------------------ deltas

HEAD = ("seq", "at", "ok", "error", "server", "sweep_ms", "failed_at", "event", "deadletters_1h",
        "deadletters_1m")
# Tables filled by events between sweeps (a delta marked ``event`` changes only these).
EVENT_TABLES = ("services", "hierarchy", "agents", "agent_feed")
TABLES = ("streams", "consumers") + EVENT_TABLES

def diff(old: dict | None, new: dict) -> dict:
    """What changed from ``old`` to ``new``; ``full`` when there is no base."""
    head = {k: new[k] for k in HEAD if k in new}
    if not old:
        return {**head, "full": True, **{t: new[t] for t in TABLES if t in new}}
    delta = {**head, "base": old.get("seq")}
    for table in TABLES:
        before, after = old.get(table, {}), new.get(table, {})
        delta[table] = {k: v for k, v in after.items() if before.get(k) != v}
        delta[f"removed_{table}"] = [k for k in before if k not in after]
        delta[f"added_{table}"] = [k for k in after if k not in before]
    return delta


def apply_delta(snapshot: dict | None, delta: dict) -> dict | None:
    """The next snapshot, or None when the delta does not follow ``snapshot``."""
    if delta.get("full"):
        return {k: v for k, v in delta.items() if k != "full"}
    if not snapshot or delta.get("base") != snapshot.get("seq"):
        return None
    out = {k: v for k, v in snapshot.items() if k not in HEAD}
    out.update({k: delta[k] for k in HEAD if k in delta})
    for table in TABLES:
        if table not in snapshot and not delta.get(table):
            continue
        merged = {**snapshot.get(table, {}), **delta.get(table, {})}
        for gone in delta.get(f"removed_{table}", []):
            merged.pop(gone, None)
        out[table] = merged
    return out


def changed_keys(delta: dict) -> dict:
    """Names of what a delta touches, for consumers deciding what to re-render."""
    return {
        "full": bool(delta.get("full")),
        "streams": sorted(set(delta.get("streams", {})) | set(delta.get("removed_streams", []))),
        "consumers": sorted(set(delta.get("consumers", {})) | set(delta.get("removed_consumers", []))),
        **{table: bool(delta.get("full") or delta.get(table) or delta.get(f"removed_{table}"))
           for table in EVENT_TABLES},
        "event": bool(delta.get("event")),
        # Streams or consumers came or went: lists must be re-rendered whole.
        "membership": bool(delta.get("full") or delta.get("removed_streams")
                           or delta.get("added_streams") or delta.get("removed_consumers")
                           or delta.get("added_consumers")),
        "ok": delta.get("ok"),
    }
