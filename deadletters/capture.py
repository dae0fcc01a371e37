"""Dead-letter capture: lossless, at least once in (exactly once out is the index's).

``capture``: a durable consumer on LUCENT_ADVISORIES (so advisories published
while the console was down wait for it) reads each MAX_DELIVERIES and
MSG_TERMINATED advisory and, for each:

1. fetches the original by stream sequence (STREAM.MSG.GET);
2. publishes a copy to ``lucent.deadletter.<stream>.<consumer>`` with the
   original headers plus ``Lucent-DL-*`` headers and ``Nats-Msg-Id`` derived
   from (stream, its generation, sequence, consumer), waiting for the PubAck;
3. only then acks the advisory.

If it stops after 2 and before 3, the advisory is redelivered and the repeated
publish is dropped by DEAD_LETTERS' duplicate window (1 day). If the original
is gone (aged out, purged, terminated on a work-queue or interest stream), the
dead letter is published anyway, empty, with ``Lucent-DL-Payload: missing``.
The source stream's generation (its ``created`` time) is in the id, so a stream
deleted and declared again is not deduplicated against its previous life.

The index of what DEAD_LETTERS holds is ``index.py`` (its loop) and ``rows.py`` (one
message to one row, whatever it holds: nothing stalls it).
"""


from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from dataclasses import dataclass, field
from datetime import datetime

from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeout

from lucent_bus import deadletters as dl
from lucent_bus import jetstream as js

log = logging.getLogger("lucent.capture")

ADVISORY_STREAM = "LUCENT_ADVISORIES"

CAPTURE_CONSUMER = "deadletter-capture"

REASONS = {"io.nats.jetstream.advisory.v1.max_deliver": dl.REASON_MAX_DELIVERIES,
           "io.nats.jetstream.advisory.v1.terminated": dl.REASON_TERMINATED}

SOURCE_INFO_TTL = 1.0  # seconds a source stream's generation is trusted without asking again



@dataclass
class _Sources:
    """Source stream generations, per bus connection (a console may be pointed at
    another bus with the same stream names): stream -> (generation, monotonic time
    read, server time read)."""

    generations: dict[str, tuple[str, float, datetime | None]] = field(default_factory=dict)


_sources: weakref.WeakKeyDictionary[Client, _Sources] = weakref.WeakKeyDictionary()



async def source_generation(nc: Client, stream: str,
                            fresh: bool = False) -> tuple[str, datetime | None]:
    """(generation of ``stream``, "" if it is gone; the server's time when that was read).

    Cached per connection for ``SOURCE_INFO_TTL``, so that a burst of thousands of
    advisories costs one STREAM.INFO a second rather than one each.
    """
    cache = _sources.setdefault(nc, _Sources()).generations
    hit = cache.get(stream)
    if hit is not None and not fresh and time.monotonic() - hit[1] < SOURCE_INFO_TTL:
        return hit[0], hit[2]
    try:
        info = await js.stream_info(nc, stream)
        gen, server_ts = dl.generation(info), js.parse_time(info.get("ts"))
    except js.JetStreamError as exc:
        if exc.err_code != js.STREAM_NOT_FOUND:
            raise
        gen, server_ts = "", None
    cache[stream] = (gen, time.monotonic(), server_ts)
    return gen, server_ts



async def capture_one(nc: Client, advisory: bytes) -> str:
    """Turn one advisory into a dead letter on DEAD_LETTERS. Returns what happened."""
    try:
        adv = json.loads(advisory)
        stream, consumer, seq = adv["stream"], adv["consumer"], int(adv["stream_seq"])
    except (ValueError, KeyError, TypeError, RecursionError):
        log.warning("capture: not an advisory, skipped: %r", advisory[:200])
        return "skipped"
    if stream == dl.STREAM:
        return "skipped"  # dead letters of dead letters would loop
    reason = REASONS.get(adv.get("type", ""), adv.get("type", "unknown"))
    generation, read_at = await source_generation(nc, stream)
    try:
        original = await js.next_message(nc, stream, seq)
        if original is not None and original["seq"] != seq:
            original = None  # deleted; next_message found a later one
    except js.JetStreamError as exc:
        if exc.err_code not in (js.STREAM_NOT_FOUND, js.NO_MESSAGE_FOUND):
            raise
        original = None
    if original is not None:
        # The generation read at server time T holds every message stored until T: one
        # stored later may be of a stream declared again since, so ask again (nats-server
        # 2.9 says no time: ask each time).
        stored_at = js.parse_time(original.get("time"))
        if read_at is None or stored_at is None or stored_at > read_at:
            generation, _ = await source_generation(nc, stream, fresh=True)
    try:
        deliveries = int(adv.get("deliveries") or 0)
    except (ValueError, TypeError):
        deliveries = 0
    headers = dl.headers(
        original["headers"] if original else {}, stream=stream, seq=seq,
        subject=original["subject"] if original else "", consumer=consumer,
        deliveries=deliveries, reason=reason,
        error=str(adv.get("reason") or ""), payload_missing=original is None,
        at=adv.get("timestamp"), generation=generation)
    ack = await js.publish(nc, dl.subject(stream, consumer), original["data"] if original else b"",
                           headers)
    return "duplicate" if ack["duplicate"] else ("missing" if original is None else "captured")



async def capture_batch(nc: Client, sub, batch: int = 256, concurrency: int = 64) -> int:
    """Capture one fetched batch; acks each advisory after its dead letter is stored."""
    try:
        msgs = await sub.fetch(batch, timeout=1)
    except (TimeoutError, NatsTimeout):
        return 0
    sem = asyncio.Semaphore(concurrency)

    async def one(msg) -> None:
        async with sem:
            try:
                await capture_one(nc, msg.data)
            except Exception as exc:  # not acked: redelivered after ack_wait
                log.warning("capture: will retry an advisory: %s", exc)
                await msg.nak(delay=1)
                return
            await msg.ack()

    await asyncio.gather(*(one(m) for m in msgs))
    return len(msgs)

