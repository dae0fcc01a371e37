"""The dead-letter index: DEAD_LETTERS (captured letters and those services publish
themselves) into the ``DeadLetter`` table, and the collector's loop running the capture
and the index.

A durable consumer on DEAD_LETTERS writes each message (``rows.store_rows``) and acks
it only once it is stored or quarantined, so a crash repeats a batch and the repeat is
a no-op. The DEAD_LETTERS generation is read again after each batch that brought
messages: a stream declared again counts from 1 under a new one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime

from asgiref.sync import sync_to_async
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeout

from lucent_bus import cancel, notify_subjects
from lucent_bus import deadletters as dl
from lucent_bus import jetstream as js
from streams import topology

from .capture import ADVISORY_STREAM, CAPTURE_CONSUMER, capture_batch
from .rows import row_from, store_rows

log = logging.getLogger("lucent.capture")

INDEX_CONSUMER = "deadletter-index"

NOTIFY_SUBJECT = notify_subjects.LIVE_DEADLETTERS



@dataclass
class Generation:
    name: str
    created: datetime | None



@dataclass
class _IndexState:
    current: Generation | None = None


_index_states: weakref.WeakKeyDictionary[Client, _IndexState] = weakref.WeakKeyDictionary()



def _generation_of(info: dict) -> Generation:
    name = dl.generation(info)
    return Generation(name, js.parse_time(name))



def _when(m) -> datetime:
    ts = m.metadata.timestamp
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts



async def index_batch(nc: Client, sub, batch: int = 500) -> int:
    """Index one fetched batch of DEAD_LETTERS; acks each message once it is stored.

    The stream's generation is read again after each batch that brought messages
    (one STREAM.INFO per batch): a message stored before the current generation was
    created belongs to the one held before it (the stream was declared again while
    the batch was on its way)."""
    try:
        msgs = await sub.fetch(batch, timeout=1)
    except (TimeoutError, NatsTimeout):
        return 0
    if not msgs:
        return 0
    state = _index_states.setdefault(nc, _IndexState())
    before = state.current
    try:
        now = _generation_of(await js.stream_info(nc, dl.STREAM))
    except js.JetStreamError as exc:
        # Deleted right after this batch was fetched: it came from the generation held.
        if exc.err_code != js.STREAM_NOT_FOUND or before is None:
            await _nak(msgs)
            raise
        now = before
    if before is not None and before.name != now.name:
        log.warning("index: DEAD_LETTERS was declared again (generation %s, was %s); rows of "
                    "the earlier one are kept", now.name, before.name)
    state.current = now
    rows = []
    for m in msgs:
        at = _when(m)
        gen = now
        if before is not None and now.created and at < now.created:
            gen = before
        rows.append(row_from(m.subject, m.metadata.sequence.stream, m.headers, m.data, at, gen.name))
    try:
        added = await sync_to_async(store_rows)(rows)
    except Exception:
        await _nak(msgs)  # the database, not the messages: again in a second
        raise
    for m in msgs:
        await m.ack()
    if added:
        await nc.publish(NOTIFY_SUBJECT, json.dumps({"added": added}).encode())
    return len(msgs)



async def _nak(msgs) -> None:
    for m in msgs:
        try:
            await m.nak(delay=1)
        except Exception:
            pass



async def ensure_consumer(nc: Client, stream: str, consumer: str) -> bool:
    """Declare ``consumer`` as topology declares it when ``stream`` exists without it (a
    stream deleted and declared again by hand, another bus); True if it was missing."""


    try:
        await js.consumer_info(nc, stream, consumer)
        return False
    except js.JetStreamError as exc:
        if exc.err_code != js.CONSUMER_NOT_FOUND:
            return False  # the stream itself is missing: that is topology apply's to fix
    for spec in topology.DECLARED:
        for config in spec.consumers if spec.name == stream else ():
            if config.get("durable_name") == consumer:
                await js.add_consumer(nc, stream, config)
                log.warning("%s: the consumer was missing on %s; declared it again", consumer,
                            stream)
                return True
    return False



async def run(nc: Client, stop: asyncio.Event) -> None:
    """Capture and index until ``stop``; survive the bus going away and the streams
    being declared again."""

    async def loop(stream: str, consumer: str, step) -> None:
        sub = None
        while not stop.is_set():
            cancel.check()
            try:
                if sub is None:
                    sub = await nc.jetstream().pull_subscribe_bind(consumer, stream)
                await step(nc, sub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%s: %s; retrying", consumer, exc)
                if sub is not None:
                    try:
                        await sub.unsubscribe()
                    except Exception:
                        pass
                sub = None
                try:
                    # A stream declared again without its consumer: fetches find no one.
                    await ensure_consumer(nc, stream, consumer)
                except Exception as why:
                    log.debug("%s: cannot check the consumer: %s", consumer, why)
                await _sleep(stop, 1)

    tasks = [asyncio.create_task(loop(ADVISORY_STREAM, CAPTURE_CONSUMER, capture_batch)),
             asyncio.create_task(loop(dl.STREAM, INDEX_CONSUMER, index_batch))]
    try:
        await stop.wait()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)



async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass



async def reindex(nc: Client) -> int:
    """Rebuild the index from DEAD_LETTERS (rows already there are kept as they are)."""
    info = await js.stream_info(nc, dl.STREAM)
    generation = dl.generation(info)
    seq, last, total = info["state"]["first_seq"], info["state"]["last_seq"], 0
    rows = []
    while seq and seq <= last:
        msg = await js.next_message(nc, dl.STREAM, seq)
        if msg is None:
            break
        at = js.parse_time(msg["time"]) or datetime.now(UTC)
        rows.append(row_from(msg["subject"], msg["seq"], msg["headers"], msg["data"], at,
                             generation))
        seq = msg["seq"] + 1
        if len(rows) >= 500:
            total += await sync_to_async(store_rows)(rows)
            rows = []
    if rows:
        total += await sync_to_async(store_rows)(rows)
    return total

