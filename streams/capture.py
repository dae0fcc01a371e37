"""Dead-letter capture and indexing: lossless, at least once in, exactly once out.

``capture``: a durable consumer on LUCENT_ADVISORIES (so advisories published
while the console was down wait for it) reads each MAX_DELIVERIES and
MSG_TERMINATED advisory and, for each:

1. fetches the original by stream sequence (STREAM.MSG.GET);
2. publishes a copy to ``lucent.deadletter.<stream>.<consumer>`` with the
   original headers plus ``Lucent-DL-*`` headers and ``Nats-Msg-Id`` derived
   from (stream, sequence, consumer), waiting for the PubAck;
3. only then acks the advisory.

If it stops after 2 and before 3, the advisory is redelivered and the repeated
publish is dropped by DEAD_LETTERS' duplicate window (1 day). If the original
is gone (aged out, purged, terminated on a work-queue or interest stream), the
dead letter is published anyway, empty, with ``Lucent-DL-Payload: missing``.

``index``: a durable consumer on DEAD_LETTERS writes each dead letter (captured
here, or published by a service itself before term()) to the ``DeadLetter``
table, keyed by its DEAD_LETTERS sequence, so a repeat is a no-op; then acks.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime

from asgiref.sync import sync_to_async
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeout

from lucent_console.bus import deadletters as dl
from lucent_console.bus import envelope
from lucent_console.bus import jetstream as js

log = logging.getLogger("lucent.capture")

ADVISORY_STREAM = "LUCENT_ADVISORIES"
CAPTURE_CONSUMER = "deadletter-capture"
INDEX_CONSUMER = "deadletter-index"
NOTIFY_SUBJECT = "lucent.console.live.deadletters"
REASONS = {"io.nats.jetstream.advisory.v1.max_deliver": dl.REASON_MAX_DELIVERIES,
           "io.nats.jetstream.advisory.v1.terminated": dl.REASON_TERMINATED}
SEARCH_BYTES = 8192


async def capture_one(nc: Client, advisory: bytes) -> str:
    """Turn one advisory into a dead letter on DEAD_LETTERS. Returns what happened."""
    try:
        adv = json.loads(advisory)
        stream, consumer, seq = adv["stream"], adv["consumer"], int(adv["stream_seq"])
    except (ValueError, KeyError, TypeError):
        log.warning("capture: not an advisory, skipped: %r", advisory[:200])
        return "skipped"
    if stream == dl.STREAM:
        return "skipped"  # dead letters of dead letters would loop
    reason = REASONS.get(adv.get("type", ""), adv.get("type", "unknown"))
    try:
        original = await js.next_message(nc, stream, seq)
        if original is not None and original["seq"] != seq:
            original = None  # deleted; next_message found a later one
    except js.JetStreamError as exc:
        if exc.err_code not in (js.STREAM_NOT_FOUND, js.NO_MESSAGE_FOUND):
            raise
        original = None
    headers = dl.headers(
        original["headers"] if original else {}, stream=stream, seq=seq,
        subject=original["subject"] if original else "", consumer=consumer,
        deliveries=int(adv.get("deliveries") or 0), reason=reason,
        error=str(adv.get("reason") or ""), payload_missing=original is None,
        at=adv.get("timestamp"))
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


def row_from(subject: str, dl_seq: int, headers: dict | None, data: bytes, at: datetime):
    """A ``DeadLetter`` row from one DEAD_LETTERS message (captured or explicit)."""
    from .models import DeadLetter

    headers = dict(headers or {})
    stream, consumer = dl.parse_subject(subject)
    decoded = envelope.decode(data, headers)
    missing = headers.get(dl.H_PAYLOAD) == "missing"
    failed_at = js.parse_time(headers.get(dl.H_AT))
    try:
        seq = int(headers.get(dl.H_SEQ, ""))
    except ValueError:
        seq = None
    try:
        deliveries = int(headers.get(dl.H_DELIVERIES, ""))
    except ValueError:
        deliveries = None
    text = decoded.text if decoded.text is not None else (decoded.hex or "")
    return DeadLetter(
        dl_seq=dl_seq, dl_subject=subject,
        stream=headers.get(dl.H_STREAM) or stream, stream_seq=seq,
        subject=headers.get(dl.H_SUBJECT, ""), consumer=headers.get(dl.H_CONSUMER) or consumer,
        deliveries=deliveries, reason=headers.get(dl.H_REASON) or dl.REASON_EXPLICIT,
        error=headers.get(dl.H_ERROR, ""), failed_at=failed_at, captured_at=at,
        message_id=(decoded.message_id or "")[:256],
        correlation_id=(decoded.correlation_id or "")[:256],
        causation_id=(decoded.causation_id or "")[:256],
        message_type=(decoded.message_type or "")[:256],
        payload_available=not missing, payload_size=len(data),
        payload_kind="missing" if missing else decoded.kind,
        search_text=text[:SEARCH_BYTES], headers=headers)


def store_rows(rows: list) -> int:
    """Insert new rows (a repeat of a known ``dl_seq`` is ignored); returns how many were new."""
    from .models import DeadLetter

    seqs = [r.dl_seq for r in rows]
    known = set(DeadLetter.objects.filter(dl_seq__in=seqs).values_list("dl_seq", flat=True))
    DeadLetter.objects.bulk_create(rows, ignore_conflicts=True, batch_size=500)
    return len(set(seqs) - known)


async def index_batch(nc: Client, sub, batch: int = 500) -> int:
    try:
        msgs = await sub.fetch(batch, timeout=1)
    except (TimeoutError, NatsTimeout):
        return 0
    rows = [row_from(m.subject, m.metadata.sequence.stream, m.headers, m.data,
                     m.metadata.timestamp.replace(tzinfo=UTC) if m.metadata.timestamp.tzinfo is None
                     else m.metadata.timestamp) for m in msgs]
    added = await sync_to_async(store_rows)(rows)
    for m in msgs:
        await m.ack()
    if added:
        await nc.publish(NOTIFY_SUBJECT, json.dumps({"added": added}).encode())
    return len(msgs)


async def run(nc: Client, stop: asyncio.Event) -> None:
    """Capture and index until ``stop``; survive the bus going away."""

    async def loop(stream: str, consumer: str, step) -> None:
        sub = None
        while not stop.is_set():
            try:
                if sub is None:
                    sub = await nc.jetstream().pull_subscribe_bind(consumer, stream)
                await step(nc, sub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%s: %s; retrying", consumer, exc)
                sub = None
                await asyncio.sleep(1)

    tasks = [asyncio.create_task(loop(ADVISORY_STREAM, CAPTURE_CONSUMER, capture_batch)),
             asyncio.create_task(loop(dl.STREAM, INDEX_CONSUMER, index_batch))]
    try:
        await stop.wait()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def reindex(nc: Client) -> int:
    """Rebuild the index from DEAD_LETTERS (rows already there are kept as they are)."""
    info = await js.stream_info(nc, dl.STREAM)
    seq, last, total = info["state"]["first_seq"], info["state"]["last_seq"], 0
    rows = []
    while seq and seq <= last:
        msg = await js.next_message(nc, dl.STREAM, seq)
        if msg is None:
            break
        at = js.parse_time(msg["time"]) or datetime.now(UTC)
        rows.append(row_from(msg["subject"], msg["seq"], msg["headers"], msg["data"], at))
        seq = msg["seq"] + 1
        if len(rows) >= 500:
            total += await sync_to_async(store_rows)(rows)
            rows = []
    if rows:
        total += await sync_to_async(store_rows)(rows)
    return total
