"""The stream service layer: what web pages, the API, commands and tasks call.

Reads come from the collector's snapshot (never a bus query per page view or
scrape); the few things not in a snapshot (top subjects, stored messages) and
the admin actions go to the bus through ``lucent_bus``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

from kernel.actions import ActionError, NotFound, audited, guard_own
from lucent_bus import jetstream as js
from lucent_bus import own
from lucent_bus import sync as bus_sync

from . import topology
from .browser import positive_int, valid_subject
from .live import relay

PER_PAGE = 50
SORTS = {
    "name": lambda s: s["name"],
    "messages": lambda s: s["messages"],
    "bytes": lambda s: s["bytes"],
    "consumers": lambda s: s["consumer_count"],
    "pending": lambda s: s["pending"],
    "rate": lambda s: s["msgs_in_per_s"] or 0,
    "usage": lambda s: s["usage_pct"],
}
MAX_TOP_SUBJECTS = 20
MAX_SUBJECTS_LISTED = 10_000
# Message browser bounds not worth a setting: headers shown per message and their
# values' length, payloads small enough to indent as JSON, bytes read per bus call.


# ------------------------------------------------------------------ reads

RELAY_START_WAIT_S = 5.0


async def _relay_started() -> None:
    # Bounded: a web connection still reconnecting (the bus away, or NATS_URL changed
    # under it) must not hold a page forever; the page shows what it has and says so.
    await asyncio.wait_for(relay.ensure_started(), RELAY_START_WAIT_S)


def current_snapshot() -> dict | None:
    """The freshest snapshot this process has (starting its relay if needed)."""
    try:
        bus_sync.on_server_loop(_relay_started)
    except Exception:
        pass  # bus or collector away: pages show what they have and say so
    return relay.snapshot


def live_status() -> dict:
    return relay.status()


def stream_page(snapshot: dict | None, q: str = "", sort: str = "name", desc: bool = False,
                page: int = 1, per_page: int = PER_PAGE) -> dict:
    streams = list((snapshot or {}).get("streams", {}).values())
    q = q.strip().lower()
    if q:
        streams = [s for s in streams if q in s["name"].lower()
                   or any(q in subj.lower() for subj in s["subjects"])]
    key = SORTS.get(sort, SORTS["name"])
    streams.sort(key=lambda s: (key(s), s["name"]), reverse=desc)
    pages = max(1, math.ceil(len(streams) / per_page))
    page = min(max(1, page), pages)
    rows = streams[(page - 1) * per_page: page * per_page]
    return {"rows": rows, "total": len(streams), "page": page, "pages": pages,
            "sort": sort if sort in SORTS else "name", "desc": desc, "q": q,
            "names": [r["name"] for r in rows]}


def consumers_of(snapshot: dict | None, stream: str) -> list[dict]:
    consumers = (snapshot or {}).get("consumers", {})
    return sorted((c for c in consumers.values() if c["stream"] == stream), key=lambda c: c["name"])


# Other apps add their own bus-wide figures and overview parts (agents, services) by
# registering a function of the snapshot here, in their AppConfig.ready: streams names
# no app above it.
TOTALS: list[Callable[[dict], dict]] = []
OVERVIEW_PARTS: list[Callable[[dict], dict]] = []


def totals(snapshot: dict | None) -> dict:
    """The bus-wide figures (overview cards, 24 h trends)."""
    s = snapshot or {}
    # Business figures: the console's own streams and consumers (dead letters, advisories,
    # the leader bucket, its live views) are counted apart, not as the bus's traffic.
    every = list((s.get("streams") or {}).values())
    streams = [x for x in every if not x.get("own")]
    all_consumers = list((s.get("consumers") or {}).values())
    consumers = [c for c in all_consumers if not c.get("own")]
    figures = {
        "streams": len(streams), "consumers": len(consumers),
        "own_streams": len(every) - len(streams),
        "own_consumers": len(all_consumers) - len(consumers),
        "messages": sum(x.get("messages", 0) for x in streams),
        "bytes": sum(x.get("bytes", 0) for x in streams),
        "in_per_s": round(sum(x.get("msgs_in_per_s") or 0 for x in streams), 2),
        "pending": sum(c.get("num_pending", 0) for c in consumers),
        "ack_pending": sum(c.get("num_ack_pending", 0) for c in consumers),
        "deadletters_1h": s.get("deadletters_1h"),
    }
    for contribute in TOTALS:
        figures.update(contribute(s))
    return figures


def overview(snapshot: dict | None) -> dict:
    """Totals and what needs attention."""
    s = snapshot or {"streams": {}, "consumers": {}}
    streams, consumers = list(s["streams"].values()), list(s["consumers"].values())
    pending = sorted((c for c in consumers if c["num_pending"] > 0),
                     key=lambda c: -c["num_pending"])[:10]
    parts: dict = {}
    for contribute in OVERVIEW_PARTS:
        parts.update(contribute(s))
    return {
        **parts,
        "totals": totals(snapshot),
        "largest_pending": pending,
        "stalled": [c for c in consumers if c["stalled"]][:20],
        "floor_stuck": [c for c in consumers if c["floor_stuck"]][:20],
        "replicas": [x for x in streams if not x["replicas_ok"]][:20],
        "full": [x for x in streams if x["usage_pct"] >= 80][:20],
        "interest_without_consumers": [x for x in streams
                                       if x["retention"] == "interest" and x["consumer_count"] == 0],
    }


def lint_findings(snapshot: dict | None) -> list[topology.Finding]:
    """``topology lint`` run on the snapshot's figures (no bus round trip)."""
    if not snapshot:
        return []
    streams = [{"config": {"name": x["name"], "subjects": x["subjects"], "retention": x["retention"],
                           "num_replicas": x["replicas"], "no_ack": x["no_ack"]},
                "state": {"consumer_count": x["consumer_count"]},
                "cluster": {"replicas": [{"name": r["name"], "current": r["current"],
                                          "offline": r["offline"], "lag": r["lag"]}
                                         for r in x["cluster"]["replicas"]]}}
               for x in snapshot["streams"].values()]
    consumers: dict[str, list] = {}
    for c in snapshot["consumers"].values():
        consumers.setdefault(c["stream"], []).append(
            {"name": c["name"], "config": {"filter_subjects": c["filter_subjects"]}})
    size = (snapshot.get("server") or {}).get("cluster_size", 1)
    return topology.lint_streams(streams, consumers, size, topology.ADR_LITERAL)


def get_stream(snapshot: dict | None, name: str) -> dict:
    stream = (snapshot or {}).get("streams", {}).get(name)
    if stream is None:
        raise NotFound(f"no stream named {name!r}")
    return stream


def top_subjects(stream: dict, limit: int = MAX_TOP_SUBJECTS) -> dict:
    """Messages per subject, largest first (one STREAM.INFO call)."""
    if stream["num_subjects"] > MAX_SUBJECTS_LISTED:
        return {"rows": [], "note": f"{stream['num_subjects']:,} subjects: too many to list"}
    if stream["messages"] == 0:
        return {"rows": [], "note": ""}
    try:
        info = bus_sync.with_client(js.stream_info, stream["name"], subjects_filter=">")
    except Exception as exc:
        return {"rows": [], "note": f"could not read subjects: {exc}"}
    counts = info.get("state", {}).get("subjects") or {}
    rows = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return {"rows": rows, "note": f"top {len(rows)} of {len(counts)}" if len(counts) > limit else ""}


# ------------------------------------------------------------------ actions

def purge_params(subject=None, keep=None, seq=None) -> dict:
    params = {"subject": valid_subject(subject), "keep": positive_int(keep, "keep", 0),
              "seq": positive_int(seq, "sequence", 1)}
    if params["keep"] is not None and params["seq"] is not None:
        raise ActionError("give either keep or sequence, not both")
    return {k: v for k, v in params.items() if v is not None}


def purge_preview(stream: dict, params: dict) -> dict:
    """How many messages a purge would remove, and in words."""
    total = stream["messages"]
    subject = params.get("subject")
    if subject:
        info = bus_sync.with_client(js.stream_info, stream["name"], subjects_filter=subject)
        total = sum((info.get("state", {}).get("subjects") or {}).values())
    exact = True
    if "keep" in params:
        count = max(0, total - params["keep"])
    elif "seq" in params:
        below = max(0, min(params["seq"], stream["last_seq"] + 1) - stream["first_seq"])
        count = min(total, below)
        exact = not subject and stream["num_deleted"] == 0
    else:
        count = total
    words = f"{'' if exact else 'up to '}{count:,} message{'s' if count != 1 else ''}"
    scope = [f"on subject {subject}"] if subject else []
    if "keep" in params:
        scope.append(f"keeping the newest {params['keep']:,}")
    if "seq" in params:
        scope.append(f"below sequence {params['seq']:,}")
    return {"count": count, "exact": exact,
            "text": f"Purge {words} from {stream['name']}" + (f" ({', '.join(scope)})" if scope else "")}


def purge(user, name: str, subject=None, keep=None, seq=None,
          everything: bool | None = None, confirm_own: bool = False) -> int:
    """Purge a stream (all, by subject, keep N, up to seq). Admin only, audited.

    ``everything``: the API says whether the whole stream is meant (its ``all``): then
    nothing else may narrow it, and without it a purge with nothing to narrow it is
    refused. None (the page, whose confirmation names the stream) leaves it to the rest.
    """
    raw = {"subject": subject, "keep": keep, "seq": seq, "all": everything or None}
    with audited(user, "stream.purge", name, {k: v for k, v in raw.items() if v not in (None, "")},
                 "admin") as outcome:
        if subject is not None and not isinstance(subject, str):
            raise ActionError("subject must be text")
        params = purge_params(subject, keep, seq)
        if everything is False and not params:
            raise ActionError('give subject, keep or seq, or "all": true to purge every message')
        if everything and params:
            raise ActionError('"all": true purges every message: give it alone')
        refuse_own(name, confirm_own)
        _require_stream(name)
        purged = bus_sync.with_client(js.purge_stream, name, **params)
        outcome.detail = f"purged {purged}"
    return purged


def delete_message(user, name: str, seq, confirm_own: bool = False) -> None:
    """Delete one message by sequence. Admin only, audited."""
    with audited(user, "stream.delete_message", name, {"seq": seq}, "admin") as outcome:
        number = positive_int(seq, "sequence", 1)
        if number is None:
            raise ActionError("a sequence is required")
        refuse_own(name, confirm_own)
        _require_stream(name)
        try:
            bus_sync.with_client(js.delete_message, name, number)
        except js.JetStreamError as exc:
            raise ActionError(f"no message {number} in {name}: {exc}") from exc
        outcome.detail = f"deleted message {number}"


def refuse_own(name: str, confirmed: bool, admin: bool = True) -> None:
    """Refuse a change to one of the console's own streams unless the admin confirmed
    the warning that names what breaks (``confirm_own``). Callers already need admin."""
    guard_own(admin, f"stream {name}", own.own_stream(name), confirmed)


def _require_stream(name: str) -> None:
    if not name or any(c in name for c in " .*>\t/\\"):
        raise NotFound(f"no stream named {name!r}")
    try:
        bus_sync.with_client(js.stream_info, name)
    except js.JetStreamError as exc:
        if exc.err_code == js.STREAM_NOT_FOUND:
            raise NotFound(f"no stream named {name!r}") from None
        raise
