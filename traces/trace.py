"""The correlation trace: every indexed message of one correlation id, in time order
(but never before its cause), with its causation chain (``causationId`` ->
``messageId``) and the time between steps.

A step's parent is the first earlier step carrying the same message id when there
is one (a dead letter or a replay is a copy of that message), else the step whose
message id is its causation id. A cause that is not in the trace is marked, and
looked up in the rest of the index (it may belong to another correlation).
"""

from __future__ import annotations

import heapq
from datetime import timedelta
from urllib.parse import urlencode

from django.urls import reverse

from deadletters.models import DeadLetter
from kernel.actions import ActionError
from lucent_bus import deadletters as dl

from .models import EnvelopeRecord

MAX_ID = EnvelopeRecord._meta.get_field("correlation_id").max_length
MAX_STEPS = 5000


def clean_id(value) -> str:
    value = str(value or "").strip()
    if not value:
        raise ActionError("give a correlation id")
    if len(value) > MAX_ID:
        raise ActionError(f"a correlation id has at most {MAX_ID} characters, this one {len(value)}")
    return value


def gap(seconds: float | None) -> str:
    """+0.4 ms, +12 ms, +1.3 s, +2.5 min"""
    if seconds is None:
        return ""
    ms = seconds * 1000
    if abs(ms) < 10:
        return f"{ms:+.1f} ms"
    if abs(ms) < 1000:
        return f"{ms:+.0f} ms"
    if abs(seconds) < 120:
        return f"{seconds:+.1f} s"
    return f"{seconds / 60:+.1f} min"


def trace(correlation_id, limit: int = 500) -> dict:
    """The steps of ``correlation_id`` (at most ``limit``, the earliest)."""
    cid = clean_id(correlation_id)
    try:
        limit = max(1, min(int(limit), MAX_STEPS))
    except (TypeError, ValueError):
        raise ActionError(f"limit must be a number up to {MAX_STEPS}") from None
    rows = list(EnvelopeRecord.objects.filter(correlation_id=cid)
                .order_by("at", "seq", "id")[:limit + 1])
    truncated = len(rows) > limit
    rows = rows[:limit]
    parents, known = _parents(rows)
    order = _causal_order(parents)
    position = {old: new for new, old in enumerate(order)}
    steps = []
    for i, old in enumerate(order):
        r, (parent, link) = rows[old], parents[old]
        since_previous = (r.at - rows[order[i - 1]].at).total_seconds() if i else None
        since_first = (r.at - rows[order[0]].at).total_seconds()
        steps.append({
            "index": i, "at": r.at, "stream": r.stream, "seq": r.seq, "subject": r.subject,
            "message_type": r.message_type, "sender": r.sender, "message_id": r.message_id,
            "causation_id": r.causation_id, "origin_stream": r.origin_stream,
            "origin_seq": r.origin_seq, "link": link,
            "parent": position[parent] if parent is not None else None,
            "cause_missing": bool(r.causation_id) and r.causation_id != r.message_id
            and r.causation_id not in known,
            "since_previous_s": since_previous, "since_first_s": since_first,
            "gap": gap(since_previous), "offset": gap(since_first),
        })
    for s in steps:
        s["depth"] = _depth(steps, s["index"])
    _resolve_missing(steps)
    _link(steps)
    return {"correlation_id": cid, "steps": steps, "truncated": truncated, "limit": limit}


def _parents(rows: list[EnvelopeRecord]) -> tuple[list[tuple[int | None, str]], dict[str, int]]:
    """(parent row, how) per row, and the first row of each message id."""
    first_of: dict[str, int] = {}
    for i, r in enumerate(rows):
        if r.message_id:
            first_of.setdefault(r.message_id, i)
    out: list[tuple[int | None, str]] = []
    for i, r in enumerate(rows):
        if r.message_id and first_of[r.message_id] != i:
            out.append((first_of[r.message_id], "copy of"))
        elif r.causation_id and r.causation_id != r.message_id and r.causation_id in first_of:
            out.append((first_of[r.causation_id], "caused by"))
        else:
            out.append((None, ""))
    return out, first_of


def _causal_order(parents: list[tuple[int | None, str]]) -> list[int]:
    """Time order, except that no step comes before its parent.

    Times come from different clocks (stream time; the publisher's for streams
    read live), so a reply can look a millisecond older than its cause. Steps in
    a causation cycle (bad data) follow in time order.
    """
    children: dict[int, list[int]] = {}
    ready = []
    for i, (parent, _) in enumerate(parents):
        if parent is None:
            ready.append(i)
        else:
            children.setdefault(parent, []).append(i)
    order: list[int] = []
    heapq.heapify(ready)
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for child in children.get(i, ()):
            heapq.heappush(ready, child)
    placed = set(order)
    return order + [i for i in range(len(parents)) if i not in placed]


def _depth(steps: list[dict], i: int) -> int:
    depth, seen = 0, {i}
    while steps[i]["parent"] is not None and steps[i]["parent"] not in seen:
        i = steps[i]["parent"]
        seen.add(i)
        depth += 1
    return depth


def _resolve_missing(steps: list[dict]) -> None:
    """Where a cause outside the trace was seen, if the index has it: its correlation id."""
    wanted = {s["causation_id"] for s in steps if s["cause_missing"]}
    found = dict(EnvelopeRecord.objects.filter(message_id__in=wanted)
                 .values_list("message_id", "correlation_id")[:1000]) if wanted else {}
    for s in steps:
        s["cause_elsewhere"] = found.get(s["causation_id"]) if s["cause_missing"] else None


def _link(steps: list[dict]) -> None:
    """Each step's page: its dead letter, or the stream's message browser at it (for a
    stream read live, whose sequence is unknown: at the subject from a second before)."""
    dl_seqs = [s["seq"] for s in steps if s["stream"] == dl.STREAM and s["seq"]]
    letters = dict(DeadLetter.objects.filter(dl_seq__in=dl_seqs).values_list("dl_seq", "pk"))
    for s in steps:
        s["near"] = False
        if s["stream"] == dl.STREAM and s["seq"] in letters:
            s["url"] = reverse("deadletters:detail", args=[letters[s["seq"]]])
            continue
        if s["seq"] is not None:
            query = {"seq": s["seq"]}
        else:
            since = (s["at"] - timedelta(seconds=1)).isoformat(timespec="milliseconds")
            query, s["near"] = {"time": since, "subject": s["subject"]}, True
        s["url"] = f"{reverse('streams:detail', args=[s['stream']])}?{urlencode(query)}#messages"
