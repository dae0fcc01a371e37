"""The message browser: stored messages of a stream, decoded and bounded.

Bus data is untrusted and may be huge: a page holds a few KB of each body and a capped
total (settings ``LUCENT_BROWSE_*``), one message's page is capped too, and the raw
download is whole, as an attachment.
"""

from __future__ import annotations

from datetime import datetime

from kernel.actions import ActionError, NotFound
from lucent_bus import envelope, subjects
from lucent_bus import jetstream as js
from lucent_bus import sync as bus_sync

# Message browser bounds not worth a setting: headers shown per message and their
# values' length, payloads small enough to indent as JSON, bytes read per bus call.
MAX_HEADERS_SHOWN = 50

HEADER_VALUE_BYTES = 1024

PRETTY_MAX_BYTES = 64 * 1024

BATCH_BYTES = 4 * 1024 * 1024



def positive_int(value, field: str, minimum: int = 0) -> int | None:
    if value in (None, ""):
        return None
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ActionError(f"{field} must be a whole number, not {str(value)[:40]!r}") from None
    if number < minimum:
        raise ActionError(f"{field} must be at least {minimum}")
    return number



def valid_subject(value: str | None) -> str | None:
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

    seq = positive_int(start_seq, "start sequence", 1)
    subject = valid_subject(subject) or ">"
    limit = min(positive_int(limit, "count", 1) or 20, settings.LUCENT_BROWSE_MAX_COUNT)
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

    number = positive_int(seq, "sequence", 1)
    if number is None:
        raise ActionError("a sequence is required")
    msg = raw_message(stream, number)
    return summarise(msg, settings.LUCENT_MESSAGE_VIEW_BYTES, full=True)



def raw_message(stream: dict, seq) -> dict:
    """The stored message ``seq`` as it is (``data`` bytes, ``headers``, ``subject``)."""
    number = positive_int(seq, "sequence", 1)
    if number is None:
        raise ActionError("a sequence is required")
    msg = bus_sync.with_client(js.next_message, stream["name"], number)
    if msg is None or msg["seq"] != number:
        raise NotFound(f"no message {number} in {stream['name']}")
    return msg

