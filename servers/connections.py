"""The connection listing (connz of every server): sorted, filtered, paged.

Fast path: no filter and a sort connz knows, in its own direction: each server is
asked for the first ``offset + limit`` connections in that order (connz paging), the
answers are merged and sliced, so thousands of connections cost one page each.
With one server, connz's own offset is used. Otherwise (a filter, a sort by name,
language, address, account or rate, the other direction) up to ``MAX_SCAN`` connections
per server are read, filtered and sorted here, and rows are made of the page's only;
the answer says when a server had more (``truncated``).

Per-connection rates are against this process's previous look at that connection (at
least 0.5 s before): on a page that polls, the rate over the last poll.
"""

from __future__ import annotations

import asyncio
import re

from lucent_bus import monitor, sync

from . import overview
from .overview import MAX_SCAN, SLOW_PENDING_SHARE, Unavailable, conn_rates

DEFAULT_MAX_PENDING = 64 * 1024 * 1024  # nats-server's default max_pending
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration(text) -> float | None:
    """Seconds of a Go duration string ("1.3ms", "2h3m4s"); None when unreadable."""
    if not isinstance(text, str) or not text:
        return None
    parts = re.findall(r"([\d.]+)(ns|us|µs|ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _UNITS[u] for n, u in parts)


def _num(field):
    return lambda c: c.get(field) or 0


def _text(field):
    return lambda c: (c.get(field) or "").lower()


def _rate(field):
    return lambda c: c.get(field) if c.get(field) is not None else -1.0


# public sort -> (connz sort option or None, key on a connz entry (on a row for the rates),
# connz's own direction is descending)
SORTS = {
    "cid": ("cid", _num("cid"), False),
    "subscriptions": ("subs", _num("subscriptions"), True),
    "pending_bytes": ("pending", _num("pending_bytes"), True),
    "in_msgs": ("msgs_from", _num("in_msgs"), True),
    "out_msgs": ("msgs_to", _num("out_msgs"), True),
    "in_bytes": ("bytes_from", _num("in_bytes"), True),
    "out_bytes": ("bytes_to", _num("out_bytes"), True),
    "rtt": ("rtt", lambda c: go_duration(c.get("rtt")) or 0.0, True),
    "uptime": ("uptime", lambda c: go_duration(c.get("uptime")) or 0.0, True),
    "name": (None, _text("name"), False),
    "lang": (None, _text("lang"), False),
    "ip": (None, lambda c: (c.get("ip") or "", c.get("port") or 0), False),
    "account": (None, _text("account"), False),
    "in_msgs_per_s": (None, _rate("in_msgs_per_s"), True),
    "out_msgs_per_s": (None, _rate("out_msgs_per_s"), True),
}


def connection_row(server: str, origin: str, c: dict, max_pending: int) -> dict:
    rtt = go_duration(c.get("rtt"))
    row = {"server": server, "cid": c.get("cid"), "name": c.get("name") or "",
           "lang": c.get("lang") or "", "version": c.get("version") or "",
           "ip": c.get("ip") or "", "port": c.get("port"),
           "address": f"{c.get('ip', '')}:{c.get('port', '')}",
           "account": c.get("account") or "", "user": c.get("authorized_user") or "",
           "kind": c.get("kind") or "", "subscriptions": c.get("subscriptions", 0),
           "pending_bytes": c.get("pending_bytes", 0),
           "in_msgs": c.get("in_msgs", 0), "out_msgs": c.get("out_msgs", 0),
           "in_bytes": c.get("in_bytes", 0), "out_bytes": c.get("out_bytes", 0),
           "rtt": c.get("rtt") or "", "rtt_ms": round(rtt * 1000, 3) if rtt is not None else None,
           "uptime": c.get("uptime") or "", "uptime_s": go_duration(c.get("uptime")),
           "idle": c.get("idle") or "", "start": c.get("start")}
    row.update(conn_rates.rates((origin, row["cid"], c.get("start")),
                                {"in_msgs": row["in_msgs"], "out_msgs": row["out_msgs"]}))
    row["slow"] = row["pending_bytes"] >= SLOW_PENDING_SHARE * (max_pending or DEFAULT_MAX_PENDING)
    return row


RATE_SORTS = {"in_msgs_per_s", "out_msgs_per_s"}  # need the rows (this process's samples)


def _matches(c: dict, q: str) -> bool:
    return (any(q in (c.get(f) or "").lower() for f in ("name", "account", "lang"))
            or q in f"{c.get('ip', '')}:{c.get('port', '')}")


async def gather_connections(src: monitor.Source, q: str = "", sort: str = "cid",
                             desc: bool | None = None, offset: int = 0, limit: int = 50) -> dict:
    """One page of connections over every server (see the module's docstring)."""
    option, key, natural_desc = SORTS[sort]
    desc = natural_desc if desc is None else desc
    q = q.strip().lower()
    fast = not q and option is not None and desc == natural_desc
    direct = fast and monitor.server_count(src) == 1  # one server: connz pages itself
    params = {"auth": 1, "offset": offset if direct else 0, "sort": option or "cid",
              "limit": limit if direct else offset + limit if fast else MAX_SCAN}
    replies, varz = await asyncio.gather(monitor.gather(src, "connz", params),
                                         monitor.gather(src, "varz"))
    about = {v.origin: v.data for v in varz if v.data}  # names, max_pending
    entries, errors, total, truncated = [], [], 0, []
    for r in replies:
        if r.error:
            errors.append(r.error)
            continue
        server = overview.display_name(about[r.origin], r.origin) if r.origin in about else r.name
        max_pending = (about.get(r.origin) or {}).get("max_pending") or 0
        entries += [(server, r.origin, c, max_pending) for c in r.data.get("connections") or []
                    if not q or _matches(c, q)]
        total += r.data.get("total", 0)
        if not fast and r.data.get("total", 0) > MAX_SCAN:
            truncated.append(server)
    if errors and not entries and len(errors) == len(replies):
        raise Unavailable("; ".join(errors))
    if not fast:
        total = len(entries)
    start = 0 if direct else offset
    if sort in RATE_SORTS:  # rows first: the rates are what is sorted
        rows = sorted((connection_row(*e) for e in entries), key=key, reverse=desc)
        rows = rows[start:start + limit]
    else:
        entries.sort(key=lambda e: key(e[2]), reverse=desc)
        rows = [connection_row(*e) for e in entries[start:start + limit]]
    return {"total": total, "rows": rows, "offset": offset,
            "limit": limit, "sort": sort, "desc": desc, "q": q, "errors": errors,
            "truncated": truncated, "source": src.describe()}


def connections(q: str = "", sort: str = "cid", desc: bool | None = None, offset: int = 0,
                limit: int = 50) -> dict:
    """For pages and the API (sync); raises NotConfigured / Unavailable."""
    src = overview.source()

    def fetch() -> dict:
        try:
            return sync.run(gather_connections, src, q, sort, desc, offset, limit,
                            timeout=src.timeout * 2 + 5)
        except monitor.MonitorError as exc:
            raise Unavailable(str(exc)) from None

    return overview.SHARED.get(("connections", src, q, sort, desc, offset, limit), fetch)
