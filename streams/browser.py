"""The message browser: stored messages of a stream, decoded and bounded.

Bus data is untrusted and may be huge: a page holds a few KB of each body and a capped
total (settings ``LUCENT_BROWSE_*``), one message's page is capped too, and the raw
download is whole, as an attachment.
"""

from __future__ import annotations

from datetime import UTC, datetime

from django.conf import settings

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

LINE_CHARS = 160  # of a body's one-line preview while it is collapsed



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
        # the body on one line, for a collapsed message
        "line": " ".join((body or "")[:LINE_CHARS * 4].split())[:LINE_CHARS],
    }



def _weight(m: dict) -> int:
    return len(m["body"]) + sum(len(k) + len(v) for k, v in m["headers"].items()) + 500


# Bus reads one page's backward search may take (each finds a match or rules out a
# range): far more than a page needs, however sparse its subject.
MAX_SEARCH_READS = 2000

# A range this many times a page's want is read through instead of halved again.
SCAN_FACTOR = 4


def _when(start_time) -> datetime | None:
    if start_time in (None, ""):
        return None
    try:
        when = datetime.fromisoformat(str(start_time).replace("Z", "+00:00"))
    except ValueError:
        raise ActionError(f"{str(start_time)[:40]!r} is not a time (use 2026-11-26T10:30)") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


async def newest_before(nc, name: str, subject: str, lo: int, hi: int, want: int) -> list[int]:
    """Sequences of the newest ``want`` messages in ``[lo, hi)`` whose subject matches,
    oldest first. ``STREAM.MSG.GET`` reads forward only, so the range is halved, newer
    half first, until a part is small enough to read through: a range without a match
    costs one read, however long (a sparse subject far back is found in a few dozen)."""
    reads = 0

    async def search(lo: int, hi: int, want: int) -> list[int]:
        nonlocal reads
        if want <= 0 or lo >= hi:
            return []
        if reads >= MAX_SEARCH_READS:
            raise ActionError("this subject is too sparse to page back from here: "
                              "read from a sequence or a time instead")
        reads += 1
        msg = await js.next_message(nc, name, lo, subject)
        if msg is None or msg["seq"] >= hi:
            return []  # no match in the whole range
        lo = msg["seq"]
        if hi - lo <= SCAN_FACTOR * want:
            found = [lo]
            while True:
                reads += 1
                msg = await js.next_message(nc, name, found[-1] + 1, subject)
                if msg is None or msg["seq"] >= hi:
                    return found[-want:]
                found.append(msg["seq"])
        mid = (lo + hi + 1) // 2
        right = await search(mid, hi, want)
        if len(right) >= want:
            return right
        return await search(lo, mid, want - len(right)) + right

    return await search(max(lo, 1), hi, want)


def browse(stream: dict, start_seq=None, start_time=None, subject=None, limit=20,
           before=None) -> dict:
    """A page of stored messages, newest first, decoded and bounded.

    From ``start_seq`` or ``start_time`` (a jump) the page holds the messages from there
    on; else it holds the newest before ``before`` (by default the newest of all).
    ``newer_seq``/``older_before`` are where the next pages start (None at either end).
    Uses ``STREAM.MSG.GET`` (next by subject), which works on work-queue streams too and
    skips deleted sequences. At most ``LUCENT_BROWSE_MAX_COUNT`` messages, each body
    shown up to ``LUCENT_BROWSE_PREVIEW_BYTES``; once the page holds
    ``LUCENT_BROWSE_PAGE_BYTES`` the older ones are listed without their bodies
    (``omitted``). Messages are read a few MiB at a time and summarised as they come,
    so the web process never holds a whole page of large payloads.
    """
    from django.conf import settings  # settings read per call: tests change the bounds

    seq = positive_int(start_seq, "start sequence", 1)
    until = positive_int(before, "before sequence", 1)
    subject = valid_subject(subject) or ">"
    limit = min(positive_int(limit, "count", 1) or 20, settings.LUCENT_BROWSE_MAX_COUNT)
    when = _when(start_time)
    if until is not None and (seq is not None or when is not None):
        raise ActionError("give a start (sequence or time) or a before sequence, not both")
    name, first, last = stream["name"], stream["first_seq"], stream["last_seq"]
    page = {"messages": [], "omitted": 0, "newer_seq": None, "older_before": None,
            "first_seq": first, "last_seq": last, "jumped": seq is not None or when is not None,
            "budget": settings.LUCENT_BROWSE_PAGE_BYTES,
            "preview": settings.LUCENT_BROWSE_PREVIEW_BYTES}
    if stream["messages"] == 0:
        return page
    if page["jumped"]:
        position = (bus_sync.with_client(js.message_time_search, name, max(first, 1), last, when)
                    if when is not None else seq)
        stop = last + 1
    else:
        stop = min(until or last + 1, last + 1)
        seqs = bus_sync.with_client(newest_before, name, subject, first, stop, limit)
        if not seqs:
            return page
        position, limit = seqs[0], len(seqs)
    messages = _read(name, subject, position, stop, limit, page["preview"])
    if messages:
        page["newer_seq"] = messages[-1]["seq"] + 1 if messages[-1]["seq"] < last else None
        page["older_before"] = messages[0]["seq"] if messages[0]["seq"] > first else None
    messages.reverse()
    page["omitted"] = _fit(messages, page["budget"])
    page["messages"] = messages
    return page


def _read(name: str, subject: str, position: int, stop: int, limit: int,
          preview: int) -> list[dict]:
    """Up to ``limit`` matching messages in ``[position, stop)``, summarised, oldest first."""

    async def read(nc, position: int, want: int) -> tuple[list[dict], int, bool]:
        """Up to ``want`` messages from ``position``, stopping after ``BATCH_BYTES``."""
        out, held = [], 0
        while len(out) < want and position < stop and held < BATCH_BYTES:
            msg = await js.next_message(nc, name, max(position, 1), subject)
            if msg is None or msg["seq"] >= stop:
                return out, position, True
            out.append(msg)
            held += len(msg["data"] or b"")
            position = msg["seq"] + 1
        return out, position, False

    messages: list[dict] = []
    ended = False
    while len(messages) < limit and position < stop and not ended:
        raw, position, ended = bus_sync.with_client(read, position, limit - len(messages))
        if not raw:
            break
        messages += [summarise(raw.pop(0), preview) for _ in range(len(raw))]
    return messages


def _fit(messages: list[dict], budget: int) -> int:
    """Leave out bodies once the page holds ``budget`` bytes, in page order; how many."""
    used, omitted = 0, 0
    for m in messages:
        weight = _weight(m)
        if used + weight > budget:
            m.update(body="", headers={}, omitted=True)
            omitted += 1
        else:
            used += weight
    return omitted



def message(stream: dict, seq) -> dict:
    """One stored message, its body shown up to ``LUCENT_MESSAGE_VIEW_BYTES``."""

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

