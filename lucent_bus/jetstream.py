"""The JetStream JSON API as plain dicts.

Raw replies keep every field the server sends (nats-py's dataclasses drop some,
e.g. ``num_subjects``), and list calls page through ``offset`` so they work with
ordinary account credentials and against a cluster.

Long because it is the whole JetStream JSON API the console speaks, in one place, so
that no other module builds a request.
"""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import datetime
from typing import Any

from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import NoRespondersError as NoResponders
from nats.errors import TimeoutError as NatsTimeout
from nats.js import errors as nats_js_errors

API_PREFIX = "$JS.API"


class JetStreamError(Exception):
    """An error answered by the JetStream API (or the lack of an answer)."""

    def __init__(self, description: str, code: int = 0, err_code: int = 0) -> None:
        super().__init__(description)
        self.description = description
        self.code = code
        self.err_code = err_code

    def __str__(self) -> str:
        if self.err_code:
            return f"{self.description} (err_code {self.err_code})"
        return self.description


# err_code values from nats-server's errors.json that callers test for.
STREAM_NOT_FOUND = 10059
WRONG_LAST_SEQUENCE = 10071  # a publish's expected last (subject) sequence is not the last
CONSUMER_NOT_FOUND = 10014
REPLICAS_NOT_SUPPORTED = 10074
INSUFFICIENT_RESOURCES = 10023
NO_MESSAGE_FOUND = 10037


async def api(nc: Client, op: str, payload: dict | None = None, timeout: float = 5.0) -> dict:
    """Call ``$JS.API.<op>`` and return the decoded reply, raising on an error reply."""
    data = json.dumps(payload).encode() if payload is not None else b""
    try:
        msg = await nc.request(f"{API_PREFIX}.{op}", data, timeout=timeout)
    except NoRespondersError:
        raise JetStreamError("JetStream is not enabled on this bus (no responders)") from None
    except NatsTimeout:
        raise JetStreamError(f"JetStream API {op} timed out after {timeout}s") from None
    reply = json.loads(msg.data or b"{}")
    error = reply.get("error")
    if error:
        raise JetStreamError(
            error.get("description", "unknown error"),
            error.get("code", 0),
            error.get("err_code", 0),
        )
    return reply


async def account_info(nc: Client) -> dict:
    return await api(nc, "INFO")


async def _paged(nc: Client, op: str, key: str) -> list[dict]:
    items: list[dict] = []
    while True:
        reply = await api(nc, op, {"offset": len(items)})
        page = reply.get(key) or []
        items.extend(page)
        if not page or len(items) >= reply.get("total", 0):
            return items


async def list_streams(nc: Client) -> list[dict]:
    """Every stream's info (config, state, cluster), paged."""
    return await _paged(nc, "STREAM.LIST", "streams")


async def stream_info(nc: Client, name: str, subjects_filter: str | None = None) -> dict:
    payload: dict[str, Any] = {}
    if subjects_filter:
        payload["subjects_filter"] = subjects_filter
    return await api(nc, f"STREAM.INFO.{name}", payload or None)


async def stream_exists(nc: Client, name: str) -> bool:
    try:
        await stream_info(nc, name)
    except JetStreamError as exc:
        if exc.err_code == STREAM_NOT_FOUND:
            return False
        raise
    return True


async def add_stream(nc: Client, config: dict) -> dict:
    return await api(nc, f"STREAM.CREATE.{config['name']}", config)


async def update_stream(nc: Client, config: dict) -> dict:
    return await api(nc, f"STREAM.UPDATE.{config['name']}", config)


async def delete_stream(nc: Client, name: str) -> dict:
    return await api(nc, f"STREAM.DELETE.{name}")


async def list_consumers(nc: Client, stream: str) -> list[dict]:
    return await _paged(nc, f"CONSUMER.LIST.{stream}", "consumers")


async def consumer_info(nc: Client, stream: str, name: str) -> dict:
    return await api(nc, f"CONSUMER.INFO.{stream}.{name}")


async def add_consumer(nc: Client, stream: str, config: dict) -> dict:
    """Create or update a durable consumer (idempotent for an unchanged config)."""
    name = config["durable_name"]
    payload = {"stream_name": stream, "config": config}
    return await api(nc, f"CONSUMER.CREATE.{stream}.{name}", payload)


async def get_message(nc: Client, stream: str, seq: int) -> dict:
    """``STREAM.MSG.GET`` by sequence: works on every retention, work queues included."""
    return await api(nc, f"STREAM.MSG.GET.{stream}", {"seq": seq})


def cluster_size(nc: Client) -> int:
    """How many servers the bus has, from the INFO the server sent us.

    A clustered server names its cluster and gossips the client URLs of all its
    peers (``connect_urls``, itself included, kept current by ``LucentClient``
    as the cluster changes); a lone server has neither.
    """
    info = getattr(nc, "_server_info", {}) or {}
    if not info.get("cluster"):
        return 1
    return max(1, len(set(info.get("connect_urls") or [])))


def server_summary(nc: Client) -> dict:
    info = getattr(nc, "_server_info", {}) or {}
    return {
        "server_name": info.get("server_name"),
        "version": info.get("version"),
        "cluster": info.get("cluster"),
        "jetstream": bool(info.get("jetstream")),
        "cluster_size": cluster_size(nc),
    }


async def purge_stream(nc: Client, stream: str, *, subject: str | None = None,
                       keep: int | None = None, seq: int | None = None) -> int:
    """Purge all, or by subject, keeping N, or up to (excluding) seq; returns how many went."""
    payload: dict[str, Any] = {}
    if subject:
        payload["filter"] = subject
    if keep is not None:
        payload["keep"] = keep
    if seq is not None:
        payload["seq"] = seq
    reply = await api(nc, f"STREAM.PURGE.{stream}", payload or None, timeout=30)
    return int(reply.get("purged", 0))


async def delete_message(nc: Client, stream: str, seq: int) -> None:
    await api(nc, f"STREAM.MSG.DELETE.{stream}", {"seq": seq, "no_erase": True})


async def next_message(nc: Client, stream: str, seq: int, subject: str = ">") -> dict | None:
    """The first message at or after ``seq`` whose subject matches; None past the end.

    ``STREAM.MSG.GET`` answers on every retention (work queues included, where a
    start-sequence consumer is refused) and skips deleted sequences for us.
    """
    try:
        reply = await api(nc, f"STREAM.MSG.GET.{stream}", {"seq": seq, "next_by_subj": subject})
    except JetStreamError as exc:
        if exc.err_code == NO_MESSAGE_FOUND:
            return None
        raise
    return decode_stored(reply["message"])


def parse_headers(raw: bytes | None) -> dict[str, str]:
    """``NATS/1.0`` header block -> dict (last value wins for repeated keys)."""
    if not raw:
        return {}
    out: dict[str, str] = {}
    lines = raw.decode("utf-8", errors="replace").split("\r\n")
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            out[key.strip()] = value.strip()
    status = lines[0][len("NATS/1.0"):].strip() if lines and lines[0].startswith("NATS/1.0") else ""
    if status:
        out["Status"] = status
    return out


def decode_stored(message: dict) -> dict:
    """A ``STREAM.MSG.GET`` message with its data and headers decoded from base64."""

    data = base64.b64decode(message.get("data") or "")
    hdrs = base64.b64decode(message["hdrs"]) if message.get("hdrs") else b""
    return {"subject": message.get("subject", ""), "seq": message.get("seq"),
            "time": message.get("time"), "data": data, "headers": parse_headers(hdrs)}


def parse_time(value: str | None):
    """RFC 3339 with nanoseconds (as nats-server writes it) -> aware datetime, or None."""

    if not value:
        return None
    value = value.replace("Z", "+00:00")
    if "." in value:
        head, rest = value.split(".", 1)
        count = len(rest) - len(rest.lstrip("0123456789"))
        value = f"{head}.{rest[:count][:6].ljust(6, '0')}{rest[count:]}"
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


async def message_time_search(nc: Client, stream: str, first: int, last: int, when) -> int:
    """The first sequence stored at or after the aware datetime ``when`` (binary search)."""
    lo, hi = first, last + 1
    while lo < hi:
        mid = (lo + hi) // 2
        msg = await next_message(nc, stream, mid)
        if msg is None or parse_time(msg["time"]) >= when:
            hi = mid
        else:
            lo = msg["seq"] + 1
    return lo


async def publish(nc: Client, subject: str, data: bytes, headers: dict | None = None,
                  timeout: float = 5.0) -> dict:
    """Publish to JetStream and wait for the PubAck: ``{"stream", "seq", "duplicate"}``."""

    try:
        ack = await nc.jetstream().publish(subject, data, headers=headers, timeout=timeout)
    except NoResponders:
        raise JetStreamError(f"no stream stores {subject!r}") from None
    except NatsTimeout:
        raise NoPubAck(f"no PubAck for {subject!r} within {timeout}s") from None
    except nats_js_errors.APIError as exc:  # the stream refused it (e.g. WRONG_LAST_SEQUENCE)
        raise JetStreamError(exc.description or str(exc), exc.code or 0, exc.err_code or 0) from None
    return {"stream": ack.stream, "seq": ack.seq, "duplicate": bool(ack.duplicate)}


class NoPubAck(JetStreamError):
    """The message was sent and nothing confirmed it in time: it may still be stored
    (a frozen server stores what was written to it when it wakes). Not a refusal."""

    UNKNOWN = ("the bus did not confirm in time: the message may still be stored when it "
               "answers")


async def streams_storing(nc: Client, subject: str) -> list[str]:
    """Names of the streams whose subjects match ``subject``."""
    reply = await api(nc, "STREAM.NAMES", {"subject": subject})
    return reply.get("streams") or []


# ---------------------------------------------------------------- bulk reads and publishes

def server_version(nc: Client) -> tuple[int, int, int]:
    """The connected server's version as numbers, (0, 0, 0) when unknown."""
    raw = str((getattr(nc, "_server_info", {}) or {}).get("version") or "")
    parts = []
    for token in raw.split("-")[0].split(".")[:3]:
        digits = "".join(ch for ch in token if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple((parts + [0, 0, 0])[:3])  # type: ignore[return-value]


def supports_batch_get(nc: Client) -> bool:
    """Whether the server answers ``DIRECT.GET`` with a batch (nats-server 2.11+).

    An older server ignores ``batch`` and answers one message without an
    end-of-batch marker, so callers must not ask it for one.
    """
    return server_version(nc) >= (2, 11, 0)


def _stored_from_direct(msg) -> dict:
    headers = dict(msg.headers or {})
    return {"subject": headers.get("Nats-Subject", ""), "seq": int(headers["Nats-Sequence"]),
            "time": headers.get("Nats-Time-Stamp"), "data": msg.data, "headers": headers}


async def direct_get_batch(nc: Client, stream: str, seq: int, up_to: int, batch: int = 1000,
                           timeout: float = 5.0) -> list[dict]:
    """The stored messages of ``stream`` from ``seq`` through ``up_to``, in order, as
    ``next_message`` returns them (headers include ``Nats-Sequence`` and friends).

    One ``DIRECT.GET`` request per ``batch`` messages (nats-server 2.11+, the stream
    needs ``allow_direct``); deleted sequences are skipped by the server. In a
    cluster a replica may answer and may lag: callers check what they needed.
    """
    out: list[dict] = []
    position = seq
    while position <= up_to:
        want = min(batch, up_to - position + 1)
        got, more = await _direct_get_once(nc, stream, position, want, timeout)
        out.extend(m for m in got if m["seq"] <= up_to)
        if not got or not more:
            break
        position = got[-1]["seq"] + 1
    return out


async def _direct_get_once(nc: Client, stream: str, seq: int, batch: int,
                           timeout: float) -> tuple[list[dict], bool]:
    """One batched ``DIRECT.GET``: (messages, whether the stream holds more after them)."""


    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()
    got: list[dict] = []

    async def on_msg(msg) -> None:
        status = (msg.headers or {}).get("Status")
        if status is None:
            got.append(_stored_from_direct(msg))
            return
        if not done.done():
            done.set_result((status, msg.headers or {}))

    inbox = nc.new_inbox()
    try:
        sub = await nc.subscribe(inbox, cb=on_msg)
        try:
            await nc.publish(f"{API_PREFIX}.DIRECT.GET.{stream}",
                             json.dumps({"seq": seq, "batch": batch}).encode(), reply=inbox)
            try:
                status, headers = await asyncio.wait_for(done, timeout)
            except TimeoutError:
                raise JetStreamError(f"DIRECT.GET {stream} batch timed out after {timeout}s") from None
        finally:
            await sub.unsubscribe()
    except NatsError as exc:
        raise JetStreamError(f"DIRECT.GET {stream}: {exc}") from None
    if status == "404":  # nothing at or after seq
        return got, False
    if status == "503":
        raise JetStreamError(f"DIRECT.GET {stream}: no responders (allow_direct off?)")
    if status != "204":
        raise JetStreamError(f"DIRECT.GET {stream}: status {status} {headers.get('Description', '')}")
    return got, int(headers.get("Nats-Num-Pending") or 0) > 0


class NoStream(JetStreamError):
    """A publish nobody stored (no stream's subjects match, or JetStream not ready)."""


async def publish_many(nc: Client, messages, *, in_flight: int = 1000, timeout: float = 5.0,
                       before=None) -> list:
    """Publish ``(subject, data, headers)`` messages pipelined, ``in_flight`` PubAcks
    outstanding at most; returns, per message in order, ``{"stream", "seq",
    "duplicate"}`` or a ``JetStreamError`` (``NoStream`` when nothing stored it).

    ``before`` (a coroutine function) is awaited before each publish: a rate limit.
    Raises ``JetStreamError`` when a PubAck does not come within ``timeout`` or the
    connection fails: the caller repeats the whole call (ids make it safe).

    Long because the pipelined loop, its ack callback and its cleanup share the futures,
    the slots and the subscription; it is the hot path of every bulk replay
    (bench/deadletter_replay.py), kept in one piece on purpose.
    """


    messages = list(messages)
    loop = asyncio.get_running_loop()
    prefix = nc.new_inbox()
    cut = len(prefix) + 1
    pending: dict[str, asyncio.Future] = {}
    futures: list[asyncio.Future] = []
    slots = asyncio.Semaphore(in_flight)

    async def on_ack(msg) -> None:
        fut = pending.pop(msg.subject[cut:], None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    def release(_fut) -> None:
        slots.release()

    try:
        sub = await nc.subscribe(prefix + ".*", cb=on_ack, pending_msgs_limit=4 * in_flight + 1024)
        try:
            for i, (subject, data, headers) in enumerate(messages):
                if before is not None:
                    await before()
                if slots.locked():
                    try:
                        await asyncio.wait_for(slots.acquire(), timeout)
                    except TimeoutError:
                        raise JetStreamError(
                            f"no PubAck within {timeout}s ({len(pending)} waiting)") from None
                else:
                    await slots.acquire()  # free: no suspension, publishes coalesce
                fut = loop.create_future()
                fut.add_done_callback(release)
                token = str(i)
                pending[token] = fut
                futures.append(fut)
                await nc.publish(subject, data, reply=f"{prefix}.{token}", headers=headers)
            if futures:
                _, late = await asyncio.wait(futures, timeout=timeout)
                if late:
                    raise JetStreamError(f"no PubAck within {timeout}s for {len(late)} message(s)")
        finally:
            for fut in futures:
                if not fut.done():
                    fut.cancel()
            await sub.unsubscribe()
    except NatsError as exc:
        raise JetStreamError(f"publish failed: {exc}") from None
    return [_pub_ack(fut.result(), subject) for fut, (subject, _, _) in zip(futures, messages, strict=True)]


def _pub_ack(msg, subject: str):
    headers = msg.headers or {}
    if headers.get("Status") == "503":
        return NoStream(f"no stream stores {subject!r}")
    try:
        reply = json.loads(msg.data or b"{}")
    except ValueError:
        return JetStreamError(f"unreadable PubAck for {subject!r}")
    error = reply.get("error")
    if error:
        return JetStreamError(error.get("description", "unknown error"), error.get("code", 0),
                              error.get("err_code", 0))
    return {"stream": reply.get("stream"), "seq": reply.get("seq"),
            "duplicate": bool(reply.get("duplicate"))}
