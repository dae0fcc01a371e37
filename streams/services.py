"""The stream service layer: what web pages, the API, commands and tasks call.

Reads come from the collector's snapshot (never a bus query per page view or
scrape); the few things not in a snapshot (top subjects, stored messages) and
the admin actions go to the bus through ``lucent_console.bus``.
"""

from __future__ import annotations

import math
from datetime import datetime

from asgiref.sync import async_to_sync

from agents.registry import instances_of, untracked_of
from lucent_console.actions import ActionError, NotFound, audited
from lucent_console.bus import envelope
from lucent_console.bus import jetstream as js
from lucent_console.bus import sync as bus_sync

from . import subjects, topology
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
MAX_HEADERS_SHOWN = 50
HEADER_VALUE_BYTES = 1024
PRETTY_MAX_BYTES = 64 * 1024
BATCH_BYTES = 4 * 1024 * 1024


# ------------------------------------------------------------------ reads

def current_snapshot() -> dict | None:
    """The freshest snapshot this process has (starting its relay if needed)."""
    try:
        async_to_sync(relay.ensure_started)()
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


def totals(snapshot: dict | None) -> dict:
    """The bus-wide figures (overview cards, 24 h trends)."""
    s = snapshot or {}
    streams = list((s.get("streams") or {}).values())
    consumers = list((s.get("consumers") or {}).values())
    agents = list((s.get("agents") or {}).values())
    instances = list(instances_of(s.get("services")).values())
    return {
        "streams": len(streams), "consumers": len(consumers),
        "messages": sum(x.get("messages", 0) for x in streams),
        "bytes": sum(x.get("bytes", 0) for x in streams),
        "in_per_s": round(sum(x.get("msgs_in_per_s") or 0 for x in streams), 2),
        "pending": sum(c.get("num_pending", 0) for c in consumers),
        "ack_pending": sum(c.get("num_ack_pending", 0) for c in consumers),
        "deadletters_1h": s.get("deadletters_1h"),
        **{f"agents_{k}": sum(a["status"] == k for a in agents)
           for k in ("working", "failing", "stuck", "idle")},
        **{f"services_{k}": sum(r["status"] == k for r in instances) for k in ("up", "stale", "down")},
    }


def overview(snapshot: dict | None) -> dict:
    """Totals and what needs attention."""
    s = snapshot or {"streams": {}, "consumers": {}}
    streams, consumers = list(s["streams"].values()), list(s["consumers"].values())
    pending = sorted((c for c in consumers if c["num_pending"] > 0),
                     key=lambda c: -c["num_pending"])[:10]
    return {
        "totals": totals(snapshot),
        "untracked": untracked_of(s.get("services")),
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


# ------------------------------------------------------------------ message browser

def _positive_int(value, field: str, minimum: int = 0) -> int | None:
    if value in (None, ""):
        return None
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ActionError(f"{field} must be a whole number, not {str(value)[:40]!r}") from None
    if number < minimum:
        raise ActionError(f"{field} must be at least {minimum}")
    return number


def _valid_subject(value: str | None) -> str | None:
    if value in (None, ""):
        return None
    value = value.strip()
    if not subjects.is_valid(value):
        raise ActionError(f"{value[:80]!r} is not a valid subject")
    return value


def _clip(text: str, limit: int) -> tuple[str, bool]:
    """``text`` cut to at most ``limit`` UTF-8 bytes (and made sendable: a lone
    surrogate from a JSON escape would fail the response); whether it was cut."""
    raw = text.encode("utf-8", "backslashreplace")
    if len(raw) <= limit:
        return raw.decode("utf-8"), False
    return raw[:limit].decode("utf-8", "ignore"), True


def _headers(headers: dict | None, budget: int) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in list((headers or {}).items())[:MAX_HEADERS_SHOWN]:
        out[_clip(str(key), 200)[0]] = _clip(str(value), min(budget, HEADER_VALUE_BYTES))[0]
    return out


def summarise(msg: dict, preview: int, full: bool = False) -> dict:
    """One stored message as a page shows it: its metadata, its headers and at most
    ``preview`` bytes of its body as text (indented JSON when it is small enough to
    indent, else the text, else hex). Nothing of the decoded value is kept, so a page
    of large messages holds what it shows, not what was stored."""
    data = msg.get("data") or b""
    decoded = envelope.decode(data, msg.get("headers"))
    body, fmt = None, "text"
    if decoded.kind in ("envelope", "json") and (full or decoded.size <= PRETTY_MAX_BYTES):
        body = decoded.pretty  # None when too deep to print: the text below
    if body is None and decoded.text is not None:
        body = decoded.text if not full or decoded.size <= len(decoded.text) else (
            bytes(data).decode("utf-8", "replace"))
    clipped = False
    if body is None and decoded.kind == "binary":
        fmt = "hex"
        shown = bytes(data[: max(1, preview // 3)])
        body, clipped = shown.hex(" "), len(data) > len(shown)
    elif body is not None:
        body, clipped = _clip(body, preview)
    return {
        "seq": msg["seq"], "subject": _clip(str(msg.get("subject") or ""), 1000)[0],
        "time": msg.get("time"), "size": decoded.size, "kind": decoded.kind,
        "message_type": _clip(decoded.message_type or "", 200)[0],
        "correlation_id": _clip(decoded.correlation_id or "", 200)[0],
        "problems": [_clip(p, 300)[0] for p in decoded.problems[:10]],
        "headers": _headers(msg.get("headers"), preview),
        "header_count": len(msg.get("headers") or {}),
        "body": body or "", "format": fmt, "clipped": clipped, "omitted": False,
    }


def _weight(m: dict) -> int:
    return len(m["body"]) + sum(len(k) + len(v) for k, v in m["headers"].items()) + 500


def browse(stream: dict, start_seq=None, start_time=None, subject=None, limit=20) -> dict:
    """Stored messages from a sequence, a time or for a subject, decoded and bounded.

    Uses ``STREAM.MSG.GET`` (next by subject), which works on work-queue streams too
    and skips deleted sequences. At most ``LUCENT_BROWSE_MAX_COUNT`` messages, each
    body shown up to ``LUCENT_BROWSE_PREVIEW_BYTES``; once the page holds
    ``LUCENT_BROWSE_PAGE_BYTES`` the rest are listed without their bodies
    (``omitted``). Messages are read from the bus a few MiB at a time and summarised
    as they come, so the web process never holds a whole page of large payloads.
    """
    from django.conf import settings

    seq = _positive_int(start_seq, "start sequence", 1)
    subject = _valid_subject(subject) or ">"
    limit = min(_positive_int(limit, "count", 1) or 20, settings.LUCENT_BROWSE_MAX_COUNT)
    preview, budget = settings.LUCENT_BROWSE_PREVIEW_BYTES, settings.LUCENT_BROWSE_PAGE_BYTES
    when = None
    if start_time not in (None, ""):
        try:
            when = datetime.fromisoformat(str(start_time).replace("Z", "+00:00"))
        except ValueError:
            raise ActionError(f"{str(start_time)[:40]!r} is not a time (use 2026-11-26T10:30)") from None
        if when.tzinfo is None:
            from datetime import UTC

            when = when.replace(tzinfo=UTC)
    first, last = stream["first_seq"], stream["last_seq"]

    async def start(nc) -> int:
        if when is not None:
            return await js.message_time_search(nc, stream["name"], max(first, 1), last, when)
        return seq if seq is not None else first

    async def read(nc, position: int, want: int) -> tuple[list[dict], int, bool]:
        """Up to ``want`` messages from ``position``, stopping after ``BATCH_BYTES``."""
        out, held = [], 0
        while len(out) < want and position <= last and held < BATCH_BYTES:
            msg = await js.next_message(nc, stream["name"], max(position, 1), subject)
            if msg is None:
                return out, position, True
            out.append(msg)
            held += len(msg["data"] or b"")
            position = msg["seq"] + 1
        return out, position, False

    if stream["messages"] == 0:
        return {"messages": [], "next_seq": None, "omitted": 0}
    position = bus_sync.with_client(start)
    messages: list[dict] = []
    used, omitted, ended = 0, 0, False
    while len(messages) < limit and position <= last and not ended:
        raw, position, ended = bus_sync.with_client(read, position, limit - len(messages))
        if not raw:
            break
        while raw:
            m = summarise(raw.pop(0), preview)
            weight = _weight(m)
            if used + weight > budget:
                m.update(body="", headers={}, omitted=True)
                omitted += 1
            else:
                used += weight
            messages.append(m)
    return {"messages": messages, "omitted": omitted, "budget": budget, "preview": preview,
            "next_seq": position if position <= last and messages else None}


def message(stream: dict, seq) -> dict:
    """One stored message, its body shown up to ``LUCENT_MESSAGE_VIEW_BYTES``."""
    from django.conf import settings

    number = _positive_int(seq, "sequence", 1)
    if number is None:
        raise ActionError("a sequence is required")
    msg = raw_message(stream, number)
    return summarise(msg, settings.LUCENT_MESSAGE_VIEW_BYTES, full=True)


def raw_message(stream: dict, seq) -> dict:
    """The stored message ``seq`` as it is (``data`` bytes, ``headers``, ``subject``)."""
    number = _positive_int(seq, "sequence", 1)
    if number is None:
        raise ActionError("a sequence is required")
    msg = bus_sync.with_client(js.next_message, stream["name"], number)
    if msg is None or msg["seq"] != number:
        raise NotFound(f"no message {number} in {stream['name']}")
    return msg


# ------------------------------------------------------------------ actions

def purge_params(subject=None, keep=None, seq=None) -> dict:
    params = {"subject": _valid_subject(subject), "keep": _positive_int(keep, "keep", 0),
              "seq": _positive_int(seq, "sequence", 1)}
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
          everything: bool | None = None) -> int:
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
        _require_stream(name)
        purged = bus_sync.with_client(js.purge_stream, name, **params)
        outcome.detail = f"purged {purged}"
    return purged


def delete_message(user, name: str, seq) -> None:
    """Delete one message by sequence. Admin only, audited."""
    with audited(user, "stream.delete_message", name, {"seq": seq}, "admin") as outcome:
        number = _positive_int(seq, "sequence", 1)
        if number is None:
            raise ActionError("a sequence is required")
        _require_stream(name)
        try:
            bus_sync.with_client(js.delete_message, name, number)
        except js.JetStreamError as exc:
            raise ActionError(f"no message {number} in {name}: {exc}") from exc
        outcome.detail = f"deleted message {number}"


def _require_stream(name: str) -> None:
    if not name or any(c in name for c in " .*>\t/\\"):
        raise NotFound(f"no stream named {name!r}")
    try:
        bus_sync.with_client(js.stream_info, name)
    except js.JetStreamError as exc:
        if exc.err_code == js.STREAM_NOT_FOUND:
            raise NotFound(f"no stream named {name!r}") from None
        raise
