"""Carrying snapshots from the collector to the web processes, over the bus.

The collector publishes a delta per sweep on ``DELTA_SUBJECT`` and answers
full-snapshot requests on ``FULL_SUBJECT``. Bodies are zlib-compressed JSON,
split into parts below the server's max payload; parts carry
``Lucent-Seq`` and ``Lucent-Part: i/n`` headers. Every web process (however
many, on however many machines) keeps its own copy: no database or Redis
round trip on the live path, and no extra load on the bus per browser.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from . import notify_subjects

DELTA_SUBJECT = notify_subjects.LIVE_DELTA
FULL_SUBJECT = notify_subjects.LIVE_FULL
H_SEQ = "Lucent-Seq"
H_PART = "Lucent-Part"


def encode(obj: dict) -> bytes:
    return zlib.compress(json.dumps(obj, separators=(",", ":"), default=str).encode(), 1)


def decode(raw: bytes) -> dict:
    return json.loads(zlib.decompress(raw))


def _parts(nc: Client, body: bytes) -> list[bytes]:
    size = max(1024, (nc.max_payload or 1024 * 1024) - 4096)
    return [body[i:i + size] for i in range(0, len(body), size)] or [b""]


async def _send(nc: Client, subject: str, seq: int, body: bytes) -> None:
    parts = _parts(nc, body)
    for i, part in enumerate(parts, 1):
        await nc.publish(subject, part, headers={H_SEQ: str(seq), H_PART: f"{i}/{len(parts)}"})


class Assembler:
    """Puts multi-part bodies back together; drops incomplete older ones."""

    def __init__(self) -> None:
        self.pending: dict[int, dict[int, bytes]] = {}

    def add(self, msg) -> bytes | None:
        headers = msg.headers or {}
        seq = int(headers.get(H_SEQ) or 0)
        index, _, total = headers.get(H_PART, "1/1").partition("/")
        index, total = int(index), int(total or 1)
        if total == 1:
            return msg.data
        parts = self.pending.setdefault(seq, {})
        parts[index] = msg.data
        if len(parts) < total:
            for other in [s for s in self.pending if s != seq and s < seq]:
                del self.pending[other]
            return None
        del self.pending[seq]
        return b"".join(parts[i] for i in range(1, total + 1))


async def publish_delta(nc: Client, delta: dict) -> int:
    body = encode(delta)
    await _send(nc, DELTA_SUBJECT, delta.get("seq", 0), body)
    return len(body)


async def serve_full(nc: Client, current: Callable[[], dict | None]):
    """Answer full-snapshot requests: the parts go to the inbox named in the
    request, then the reply says how many were sent (so a requester gets
    "no responders" at once when no collector runs)."""

    async def on_request(msg):
        snap = current()
        if not msg.reply:
            return
        if snap is None:
            await msg.respond(json.dumps({"error": "no snapshot yet"}).encode())
            return
        inbox = json.loads(msg.data or b"{}").get("inbox")
        body = encode(snap)
        if inbox:
            await _send(nc, inbox, snap.get("seq", 0), body)
        await msg.respond(json.dumps({"seq": snap.get("seq", 0), "bytes": len(body)}).encode())

    return await nc.subscribe(FULL_SUBJECT, "collector", cb=on_request)


class NoSnapshot(Exception):
    """No collector answered, or it has no snapshot yet."""


async def fetch_full(nc: Client, timeout: float = 5.0) -> dict:
    """Ask the collector for its whole current snapshot."""
    inbox = nc.new_inbox()
    done: asyncio.Future = asyncio.get_running_loop().create_future()
    assembler = Assembler()

    async def on_part(msg):
        body = assembler.add(msg)
        if body is not None and not done.done():
            done.set_result(body)

    sub = await nc.subscribe(inbox, cb=on_part)
    try:
        try:
            reply = await nc.request(FULL_SUBJECT, json.dumps({"inbox": inbox}).encode(),
                                     timeout=timeout)
        except NoRespondersError:
            raise NoSnapshot("no collector is running") from None
        except NatsTimeout:
            raise NoSnapshot(f"the collector did not answer in {timeout}s") from None
        answer = json.loads(reply.data)
        if "error" in answer:
            raise NoSnapshot(answer["error"])
        return decode(await asyncio.wait_for(done, timeout))
    finally:
        await sub.unsubscribe()


async def subscribe_deltas(nc: Client, on_delta: Callable[[dict], Awaitable[None]]):
    assembler = Assembler()

    async def on_msg(msg):
        body = assembler.add(msg)
        if body is not None:
            await on_delta(decode(body))

    return await nc.subscribe(DELTA_SUBJECT, cb=on_msg)
