"""The key-value service layer: what the pages, the API and ``manage.py kv`` call.

Buckets come from one paged ``STREAM.LIST``; keys a page at a time from the server's
per-subject counts (a wildcard filter is applied by the server, a substring filter
here, over the server's pages); a value and its revisions one key at a time, decoded
as the message browser decodes messages. Put and delete are operator actions,
audited with a digest of the value (never the value), refused on the console's own
bucket unless an admin confirms the warning naming what breaks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from django.conf import settings
from nats.errors import Error as NatsError

from kernel.actions import ActionError, Conflict, NotFound, OutcomeUnknown, audited, guard_own
from kernel.models import AuditRecord
from kernel.roles import has_role
from lucent_bus import jetstream as js
from lucent_bus import kv as bus_kv
from lucent_bus import own
from lucent_bus import sync as bus_sync
from streams.browser import summarise

MAX_FILTER = 1024
MAX_SCAN = 1_000_000  # keys a substring filter reads at most (10 server pages)
WATCH_ROWS = 10


class BusError(ActionError):
    """The bus answered a read with an error, or not at all (503: try again)."""

    status = 503


def _read(fn, *args):
    """``fn(nc, *args)`` on the shared connection; a bus failure is a clear 503."""
    try:
        return bus_sync.with_client(fn, *args)
    except js.JetStreamError as exc:
        raise BusError(f"the bus could not answer: {exc}") from None
    except (NatsError, TimeoutError, OSError) as exc:
        raise BusError(f"the bus is unreachable: {type(exc).__name__}: {exc}") from None


# ------------------------------------------------------------------ reads

def bucket_row(info: dict) -> dict:
    config, state = info.get("config") or {}, info.get("state") or {}
    bucket = config.get("name", "")[3:]
    history = config.get("max_msgs_per_subject", 1)
    return {
        "bucket": bucket, "values": state.get("messages", 0), "bytes": state.get("bytes", 0),
        "history": history if history and history > 0 else None,  # None: unlimited
        "ttl": round(config.get("max_age", 0) / 1e9, 3),  # seconds; 0: kept forever
        "keys": state.get("num_subjects", 0), "storage": config.get("storage"),
        "replicas": config.get("num_replicas", 1), "last_seq": state.get("last_seq", 0),
        "first_seq": state.get("first_seq", 0), "last_ts": state.get("last_ts"),
        "own": own.own_bucket(bucket),
    }


def buckets() -> list[dict]:
    """Every bucket, by name."""
    rows = [bucket_row(i) for i in _read(bus_kv.list_buckets)]
    return sorted(rows, key=lambda r: r["bucket"])


def get_bucket(bucket: str) -> dict:
    if bus_kv.bucket_problem(bucket):
        raise NotFound(f"no bucket named {str(bucket)[:80]!r}")
    info = _read(bus_kv.bucket_info, bucket)
    if info is None:
        raise NotFound(f"no bucket named {bucket!r}")
    return bucket_row(info)


def _check_key(key: str) -> str:
    problem = bus_kv.key_problem(key)
    if problem:
        raise ActionError(problem)
    return key


def parse_filter(text: str | None) -> tuple[str, str]:
    """``("pattern", p)`` for a key pattern with ``*`` or ``>`` tokens (the server
    filters), ``("substring", s)`` for anything else, ``("pattern", ">")`` for none."""
    text = (text or "").strip()
    if not text:
        return "pattern", ">"
    if len(text) > MAX_FILTER:
        raise ActionError(f"a filter is at most {MAX_FILTER} characters")
    if "*" in text or ">" in text:  # keys hold neither: a pattern, checked as one
        problem = bus_kv.pattern_problem(text)
        if problem:
            raise ActionError(problem)
        return "pattern", text
    return "substring", text


def _counts(bucket: str, mode: str, value: str, offset: int,
            limit: int) -> tuple[list[tuple[str, int]], int, bool]:
    """(keys of the page with their stored revisions, how many match, scan cut short)."""
    try:
        if mode == "pattern":
            counts, total = bus_sync.with_client(bus_kv.key_counts, bucket, value, offset)
            return sorted(counts.items())[:limit], total, False
        matched: list[tuple[str, int]] = []
        seen, total = 0, None
        while total is None or (seen < total and seen < MAX_SCAN):
            counts, total = bus_sync.with_client(bus_kv.key_counts, bucket, ">", seen)
            if not counts:
                break
            seen += len(counts)
            matched.extend((k, n) for k, n in counts.items() if value in k)
    except js.JetStreamError as exc:
        if exc.err_code == js.STREAM_NOT_FOUND:
            raise NotFound(f"no bucket named {bucket!r}") from None
        raise BusError(f"the bus could not answer: {exc}") from None
    except (NatsError, TimeoutError, OSError) as exc:
        raise BusError(f"the bus is unreachable: {type(exc).__name__}: {exc}") from None
    matched.sort()
    return matched[offset:offset + limit], len(matched), seen < (total or 0)


def keys_page(bucket: str, text: str | None = None, offset: int = 0, limit: int = 100) -> dict:
    """One page of keys in key order: ``{"count", "rows", "truncated", "filter"}``; each
    row ``key, revision, operation, created, revisions, size, preview`` (a deleted key
    is listed with its DEL or PURGE marker until the marker ages out)."""
    if bus_kv.bucket_problem(bucket):
        raise NotFound(f"no bucket named {str(bucket)[:80]!r}")
    mode, value = parse_filter(text)
    page, count, truncated = _counts(bucket, mode, value, max(0, offset), max(1, limit))
    latest = _read(bus_kv.last_entries, bucket, [k for k, _ in page])
    rows = []
    for key, revisions in page:
        msg = latest.get(key)
        if msg is None:  # aged out between the two calls
            continue
        shown = summarise(msg, 120)
        rows.append({"key": key, "revision": msg["seq"], "operation": bus_kv.operation(msg["headers"]),
                     "created": msg["time"], "revisions": revisions, "size": shown["size"],
                     "preview": shown["body"] if bus_kv.operation(msg["headers"]) == "PUT" else ""})
    return {"count": count, "rows": rows, "truncated": truncated, "filter": (text or "").strip(),
            "mode": mode}


def _raw(data: bytes, limit: int) -> dict:
    """The value as the API gives it: UTF-8 text, or base64 when it is not text."""
    part = bytes(data[:limit])
    try:
        value, encoding = part.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        value, encoding = base64.b64encode(part).decode(), "base64"
    return {"value": value, "encoding": encoding, "clipped": len(data) > limit}


def revision_row(msg: dict, limit: int, who: dict[int, str]) -> dict:
    op = bus_kv.operation(msg["headers"])
    shown = summarise(msg, limit, full=True)
    row = {"revision": msg["seq"], "operation": op, "created": msg["time"], "size": shown["size"],
           "user": who.get(msg["seq"]) or msg["headers"].get(bus_kv.USER_HEADER) or None,
           "display": shown["body"], "format": shown["format"], "kind": shown["kind"]}
    if op == "PUT":
        row.update(_raw(msg["data"] or b"", limit))
    else:
        row.update(value=None, encoding=None, clipped=False)
    return row


def _writers(bucket: str, key: str) -> dict[int, str]:
    """revision -> who wrote it through the console (the audit's successful puts/deletes)."""
    out: dict[int, str] = {}
    records = AuditRecord.objects.filter(
        action__in=("kv.put", "kv.delete", "kv.purge"), outcome="ok",
        target=f"{bucket}/{key}").values_list("detail", "username")
    for detail, username in records:
        if detail.startswith("revision "):
            try:
                out[int(detail.split()[1])] = username
            except ValueError:
                continue  # a detail not written by put/delete below: nothing to attribute
    return out


def entry(bucket: str, key: str) -> dict:
    """The key's current value and every stored revision (newest first); 404 when the
    bucket or the key is missing (a deleted key answers, with ``value`` None)."""
    row = get_bucket(bucket)
    _check_key(key)
    msgs = _read(bus_kv.history, bucket, key, row["first_seq"])
    if not msgs:
        raise NotFound(f"no key {key!r} in bucket {bucket!r}")
    who = _writers(bucket, key)
    revisions = [revision_row(m, settings.LUCENT_BROWSE_PREVIEW_BYTES, who) for m in msgs[::-1]]
    current = revision_row(msgs[-1], settings.LUCENT_MESSAGE_VIEW_BYTES, who)
    return {"bucket": bucket, "key": key, **current, "history": revisions,
            "own": row["own"], "history_depth": row["history"]}


def changes(bucket: str, after: int | None = None) -> dict:
    """The live watch: the bucket's figures and its latest revisions (newest first)
    after ``after`` (the last sequence the page has)."""
    row = get_bucket(bucket)
    rows = _read(bus_kv.changes, bucket, after or 0, row["last_seq"], WATCH_ROWS)
    return {"bucket": row, "changes": [
        {"key": bus_kv.key_of(bucket, m["subject"]), "revision": m["seq"], "created": m["time"],
         "operation": bus_kv.operation(m["headers"]), "preview": summarise(m, 120)["body"]
         if bus_kv.operation(m["headers"]) == "PUT" else ""} for m in rows]}


# ------------------------------------------------------------------ actions

def decode_value(value: str, encoding: str | None) -> bytes:
    if encoding == "base64":
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ActionError("value is not valid base64") from None
    if encoding not in (None, "", "utf-8"):
        raise ActionError('encoding must be "base64" (or left out for text)')
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise ActionError("value is not valid text (a lone surrogate): send it as base64") from None


def _guard_own(user, bucket: str, confirm_own: bool) -> None:
    """The console's own bucket: admin only, and only once the warning is confirmed."""
    guard_own(has_role(user, "admin"), f"bucket {bucket}", own.own_bucket(bucket), confirm_own)


def _write(user, action: str, bucket: str, key: str, params: dict, confirm_own: bool,
           work, role: str = "operator") -> int:
    with audited(user, action, f"{bucket}/{key}", params, role) as outcome:
        _check_key(key)
        _guard_own(user, bucket, confirm_own)
        if bus_kv.bucket_problem(bucket) or _read(bus_kv.bucket_info, bucket) is None:
            raise NotFound(f"no bucket named {str(bucket)[:80]!r}")
        revision = work()
        outcome.detail = f"revision {revision}"
    return revision


def _send(fn, *args, **kwargs) -> int:
    """A write (put, delete, purge marker) on the shared connection; its revision. No
    PubAck in time: the outcome is unknown (the server may store it when it answers)."""
    try:
        return bus_sync.with_client(fn, *args, **kwargs)
    except js.NoPubAck:
        raise OutcomeUnknown(js.NoPubAck.UNKNOWN + ": look at the key's history before "
                             "trying again") from None
    except js.JetStreamError as exc:
        if exc.err_code == js.WRONG_LAST_SEQUENCE:
            raise _changed(kwargs.get("expected"), exc.description) from None
        raise ActionError(f"the bus refused it: {exc}") from None


def _changed(expected: int | None, description: str) -> Conflict:
    """The server's "wrong last sequence: N" said as what happened to the key."""
    latest = description.rsplit(":", 1)[-1].strip()
    if expected == 0:
        return Conflict(f"the key exists already (revision {latest}): nothing stored; read it, "
                        "then put with that revision")
    return Conflict(f"the key changed since you read revision {expected}: revision {latest} is "
                    "the latest; nothing stored; read it again (its history says who), then "
                    "decide")


def put(user, bucket: str, key: str, value: str, encoding: str | None = None,
        confirm_own: bool = False, revision: int | None = None) -> dict:
    """Store a value (operator, audited with its SHA-256 and size, never the value).
    ``revision``: only if that is still the key's latest (0: only if it was never written;
    a 409 otherwise, nothing stored): an edit made on what was read is not lost to, and
    does not silently undo, another operator's."""
    try:
        data, problem = decode_value(value, encoding), None
    except ActionError as exc:
        data, problem = str(value).encode("utf-8", "replace"), exc
    params = {"key": key, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
              "encoding": encoding or "utf-8", "confirm_own": bool(confirm_own)}
    if revision is not None:
        params["revision"] = revision
    name = getattr(user, "username", "") or ""

    def work() -> int:
        if problem is not None:
            raise problem
        return _send(bus_kv.put, bucket, key, data, {bus_kv.USER_HEADER: name} if name else None,
                     expected=revision)

    revision = _write(user, "kv.put", bucket, key, params, confirm_own, work)
    return {"bucket": bucket, "key": key, "revision": revision, "operation": "PUT"}


def delete(user, bucket: str, key: str, confirm_own: bool = False, purge: bool = False) -> dict:
    """Mark a key deleted (operator, audited); 404 when it has no live value. ``purge``
    (admin, as purging a stream is): also remove every earlier revision; a key already
    deleted can be purged."""
    name = getattr(user, "username", "") or ""

    def work() -> int:
        last = bus_sync.with_client(bus_kv.last_entries, bucket, [key])[key]
        if last is None or (not purge and bus_kv.operation(last["headers"]) != "PUT"):
            raise NotFound(f"no key {key!r} in bucket {bucket!r}")
        return _send(bus_kv.purge if purge else bus_kv.delete, bucket, key,
                     {bus_kv.USER_HEADER: name} if name else None)

    action = "kv.purge" if purge else "kv.delete"
    revision = _write(user, action, bucket, key, {"key": key, "confirm_own": bool(confirm_own)},
                      confirm_own, work, "admin" if purge else "operator")
    return {"bucket": bucket, "key": key, "revision": revision,
            "operation": "PURGE" if purge else "DEL"}
