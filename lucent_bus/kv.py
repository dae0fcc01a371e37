"""JetStream key-value buckets as the JSON API shows them (works on nats-server 2.9+).

A bucket ``B`` is the stream ``KV_B`` storing subjects ``$KV.B.<key>``; each stored
message is one revision (its stream sequence), a ``KV-Operation: DEL`` or ``PURGE``
header marks a delete. Nothing here loads a whole bucket: buckets come from one
paged ``STREAM.LIST`` (filtered to ``$KV.>``), keys from ``STREAM.INFO`` with a
``subjects_filter`` (the server answers at most ``SUBJECTS_PAGE`` subjects a call,
sorted when paged with an offset), values one key at a time.
"""

from __future__ import annotations

import asyncio
import re

from nats.aio.client import Client

from . import jetstream as js

BUCKET_RE = re.compile(r"^[-_a-zA-Z0-9]+$")
KEY_RE = re.compile(r"^[-/_=.a-zA-Z0-9]+$")
MAX_KEY = 1024  # far beyond any real key, short enough to log and audit
SUBJECTS_PAGE = 100_000  # JSMaxSubjectDetails: subjects one STREAM.INFO answers at most
USER_HEADER = "Lucent-User"  # who, on the console's own writes
OPERATION_HEADER = "KV-Operation"
EXPECTED_REVISION_HEADER = "Nats-Expected-Last-Subject-Sequence"


def bucket_problem(bucket: str) -> str | None:
    """Why ``bucket`` is not a bucket name, or None."""
    if not isinstance(bucket, str) or not bucket:
        return "a bucket name is required"
    if len(bucket) > 255 or not BUCKET_RE.match(bucket):
        return (f"{bucket[:80]!r} is not a bucket name (letters, digits, '-' and '_' only)")
    return None


def key_problem(key: str) -> str | None:
    """Why ``key`` is not a key (KV rules: ``[-/_=.a-zA-Z0-9]``, no leading, trailing or
    doubled dot), or None."""
    if not isinstance(key, str) or not key:
        return "a key is required"
    if len(key) > MAX_KEY:
        return f"a key is at most {MAX_KEY} characters"
    if not KEY_RE.match(key):
        return (f"{key[:80]!r} is not a valid key: use letters, digits and - / _ = . only")
    if key.startswith(".") or key.endswith("."):
        return f"{key[:80]!r} is not a valid key: it may not start or end with a dot"
    if ".." in key:
        return f"{key[:80]!r} is not a valid key: two dots in a row make an empty token"
    return None


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` (a key with ``*`` / ``>`` wildcard tokens) is not a key pattern."""
    tokens = pattern.split(".")
    for i, token in enumerate(tokens):
        if token == ">" and i != len(tokens) - 1:
            return "'>' may only be the last token of a pattern"
        if token in ("*", ">"):
            continue
        if not token or not KEY_RE.match(token) or "*" in token or ">" in token:
            return (f"{pattern[:80]!r} is not a key pattern: tokens of letters, digits and "
                    "- / _ =, or * and a final >")
    return None


def subject(bucket: str, key: str) -> str:
    return f"$KV.{bucket}.{key}"


def key_of(bucket: str, subj: str) -> str:
    return subj[len(f"$KV.{bucket}."):]


def operation(headers: dict | None) -> str:
    """PUT, DEL or PURGE, from a stored revision's headers."""
    op = (headers or {}).get(OPERATION_HEADER, "").upper()
    return op if op in ("DEL", "PURGE") else "PUT"


async def list_buckets(nc: Client) -> list[dict]:
    """Every bucket's stream info (config, state): ``STREAM.LIST`` filtered to ``$KV.>``,
    paged (256 a page), so hundreds of buckets cost a few requests, not one each."""
    items: list[dict] = []
    while True:
        reply = await js.api(nc, "STREAM.LIST", {"offset": len(items), "subject": "$KV.>"})
        page = reply.get("streams") or []
        items.extend(page)
        if not page or len(items) >= reply.get("total", 0):
            break
    return [s for s in items if s.get("config", {}).get("name", "").startswith("KV_")]


async def bucket_info(nc: Client, bucket: str) -> dict | None:
    """The bucket's stream info, or None when there is no such bucket."""
    try:
        info = await js.stream_info(nc, f"KV_{bucket}")
    except js.JetStreamError as exc:
        if exc.err_code == js.STREAM_NOT_FOUND:
            return None
        raise
    return info


async def key_counts(nc: Client, bucket: str, pattern: str = ">",
                     offset: int = 0) -> tuple[dict[str, int], int]:
    """Stored revisions per key matching ``pattern``, from the ``offset``-th key in key
    order, at most ``SUBJECTS_PAGE``; and how many keys match in all."""
    payload: dict = {"subjects_filter": subject(bucket, pattern)}
    if offset:
        payload["offset"] = offset
    reply = await js.api(nc, f"STREAM.INFO.KV_{bucket}", payload, timeout=15)
    subjects = (reply.get("state") or {}).get("subjects") or {}
    total = reply.get("total")
    if total is None:  # a server that does not page: it sent them all
        total = len(subjects)
    return {key_of(bucket, s): n for s, n in subjects.items()}, int(total)


async def last_entries(nc: Client, bucket: str, keys: list[str]) -> dict[str, dict | None]:
    """The latest stored revision of each key (None when it has none), asked at once."""

    async def one(key: str) -> dict | None:
        try:
            reply = await js.api(nc, f"STREAM.MSG.GET.KV_{bucket}",
                                 {"last_by_subj": subject(bucket, key)})
        except js.JetStreamError as exc:
            if exc.err_code == js.NO_MESSAGE_FOUND:
                return None
            raise
        return js.decode_stored(reply["message"])

    found = await asyncio.gather(*(one(k) for k in keys))
    return dict(zip(keys, found, strict=True))


async def history(nc: Client, bucket: str, key: str, first_seq: int,
                  limit: int = 200) -> list[dict]:
    """The key's stored revisions, oldest first (a bucket keeps at most 64 a key)."""
    out: list[dict] = []
    position = max(first_seq, 1)
    while len(out) < limit:
        msg = await js.next_message(nc, f"KV_{bucket}", position, subject(bucket, key))
        if msg is None:
            break
        out.append(msg)
        position = msg["seq"] + 1
    return out


async def changes(nc: Client, bucket: str, after: int, last_seq: int,
                  limit: int = 20) -> list[dict]:
    """The latest revisions of any key stored after sequence ``after``, newest first,
    at most ``limit`` (the live watch)."""
    start = max(after + 1, last_seq - limit + 1, 1)
    out: list[dict] = []
    position = start
    while position <= last_seq and len(out) < limit:
        msg = await js.next_message(nc, f"KV_{bucket}", position, f"$KV.{bucket}.>")
        if msg is None:
            break
        out.append(msg)
        position = msg["seq"] + 1
    return out[::-1]


async def put(nc: Client, bucket: str, key: str, value: bytes,
              headers: dict[str, str] | None = None, expected: int | None = None) -> int:
    """Store a revision; its revision number (stream sequence). ``expected``: only if the
    key's latest revision is that one (0: the key was never written), else the server
    refuses it (``js.WRONG_LAST_SEQUENCE``), as ``nats kv update`` does."""
    if expected is not None:
        headers = {**(headers or {}), EXPECTED_REVISION_HEADER: str(expected)}
    ack = await js.publish(nc, subject(bucket, key), value, headers=headers or None)
    return int(ack["seq"])


async def delete(nc: Client, bucket: str, key: str, headers: dict[str, str] | None = None) -> int:
    """A delete marker (the history stays, as ``nats kv del`` leaves it); its revision."""
    return await put(nc, bucket, key, b"", {**(headers or {}), OPERATION_HEADER: "DEL"})


async def purge(nc: Client, bucket: str, key: str, headers: dict[str, str] | None = None) -> int:
    """A purge marker that rolls up the key (``nats kv purge``): every earlier revision
    is removed by the server, the marker stays; its revision. Buckets made by nats
    clients allow roll-ups; one that does not is refused by the server."""
    return await put(nc, bucket, key, b"", {**(headers or {}), OPERATION_HEADER: "PURGE",
                                            "Nats-Rollup": "sub"})
