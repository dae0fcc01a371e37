"""The trace index: envelope metadata of every message on the Lucent streams.

Started by the collector beside the dead-letter capture::

    indexing = asyncio.create_task(traces.indexer.run(self.nc, stop))  # in Collector.run
    ...
    await indexing                                                      # after the sweep loop

Steps, and what happens if it stops halfway:

1. Read the resume points (``Cursor``). Follow COMMANDS, AGENT_COORDINATION and
   DEAD_LETTERS with ordered consumers from ``last_seq + 1`` (so a restart catches
   up on what was published meanwhile); DOMAIN_EVENTS (interest) and HIERARCHY
   (work queue) with core subscriptions, live only (see ``lucent_console.bus.tail``
   for why a consumer there would change the stream).
2. Each message becomes a row in memory (one tolerant decode; the stream time, or
   for a message read live its envelope's timestamp (else the receive time); for a
   dead letter, where the original was).
3. Every ``every`` seconds, or sooner once ``batch`` rows wait, write them with the
   new resume points, in transactions of at most ``max_batch`` rows, in a worker
   thread. On a database error the rows stay in memory and the write is retried
   with backoff (and logged).
   Past ``max_pending`` rows, ordered streams stop and restart from their resume
   point once the backlog is written (nothing lost); live messages past it are
   dropped and counted.

Stopped between 2 and 3, the rows in memory are lost, but the resume points were
not advanced: the ordered streams are read again from there, nothing twice.
Live-only messages published while the console is down are not indexed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, connection, transaction
from nats.aio.client import Client

from lucent_console.bus import deadletters as dl
from lucent_console.bus import envelope, tail
from lucent_console.bus import jetstream as js
from lucent_console.bus.client import backoff_delay

from .models import Cursor, EnvelopeRecord

log = logging.getLogger("lucent.traces")

# stream -> read with an ordered consumer (True) or live only (False)
STREAMS = {"COMMANDS": True, "AGENT_COORDINATION": True, dl.STREAM: True,
           "DOMAIN_EVENTS": False, "HIERARCHY": False}
FIELDS = ("stream", "seq", "subject", "message_id", "correlation_id", "causation_id",
          "message_type", "sender", "at", "origin_stream", "origin_seq")
PLAUSIBLE = timedelta(hours=1)
LIMITS = {f.name: f.max_length for f in EnvelopeRecord._meta.fields if f.max_length}


def _clip(value: str | None, field: str) -> str:
    # Bus data may hold NUL (refused by PostgreSQL) or be longer than the column.
    if not value:
        return ""
    if "\x00" in value:
        value = value.replace("\x00", "")
    return value[:LIMITS[field]]


def _str(value) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    return value if isinstance(value, str) else str(value)


def fields_of(data: bytes, headers: dict | None) -> tuple:
    """(message id, correlation id, causation id, type, sender, timestamp) of a message.

    The common case, a UTF-8 JSON envelope that names its correlation and type,
    takes one ``json.loads``; anything else goes through ``envelope.decode``, whose
    answers this must equal (tests/test_traces.py). Full decoding costs twice as
    much, which mattered at 10,000 messages/s (bench/trace_index.py).
    """
    if data[:1] == b"{" and len(data) <= envelope.MAX_PARSE_BYTES:
        try:
            obj = json.loads(data.decode())
        except (ValueError, RecursionError):
            obj = None
        if (isinstance(obj, dict) and isinstance(obj.get("messageType"), str) and obj["messageType"]
                and isinstance(obj.get("correlationId"), str) and obj["correlationId"]):
            sender = obj.get("sender")
            name = None
            if isinstance(sender, dict):
                name = sender.get("serviceId") or sender.get("instanceId")
            return (_str(obj.get("messageId")), obj["correlationId"], _str(obj.get("causationId")),
                    obj["messageType"], str(name) if name is not None else None,
                    _str(obj.get("timestamp")))
    d = envelope.decode(data, headers)
    return d.message_id, d.correlation_id, d.causation_id, d.message_type, d.sender_name, d.timestamp


def row_from(stream: str, subject: str, reply: str | None, data: bytes, headers: dict | None,
             received: datetime | None = None) -> tuple:
    """One index row (``FIELDS`` order) from one delivered message; never raises."""
    seq, ns = tail.position(reply)
    message_id, correlation_id, causation_id, message_type, sender, sent = fields_of(data, headers)
    if ns:
        at = datetime.fromtimestamp(ns / 1e9, UTC)
    else:
        # Read live: the publisher's time when it is plausible, as the receive time
        # lags behind whenever the console has a backlog.
        received = received or datetime.now(UTC)
        sent = js.parse_time(sent)
        at = sent if sent and sent.tzinfo and abs(sent - received) < PLAUSIBLE else received
    origin_stream, origin_seq = "", None
    if stream == dl.STREAM:
        headers = headers or {}
        origin_stream = headers.get(dl.H_STREAM) or dl.parse_subject(subject)[0]
        origin_seq = int(headers[dl.H_SEQ]) if headers.get(dl.H_SEQ, "").isdigit() else None
    elif not message_id and headers:
        message_id = headers.get("Nats-Msg-Id")
    return (stream, seq, _clip(subject, "subject"), _clip(message_id, "message_id"),
            _clip(correlation_id, "correlation_id"), _clip(causation_id, "causation_id"),
            _clip(message_type, "message_type"), _clip(sender, "sender"), at,
            _clip(origin_stream, "origin_stream"), origin_seq)


def cursors() -> dict[str, int]:
    return dict(Cursor.objects.values_list("stream", "last_seq"))


def store(rows: list[tuple]) -> None:
    """Insert ``rows`` and move the resume points past them, all or nothing.

    One INSERT run by ``executemany``: ``bulk_create`` builds a model object per
    row and cost 2.4 times as much (bench/trace_index.py).
    """
    upto = {r[0]: r[1] for r in rows if r[1] is not None}  # ordered streams: rising seqs
    ops = connection.ops
    now = ops.adapt_datetimefield_value(datetime.now(UTC))
    params = [(*r[:8], ops.adapt_datetimefield_value(r[8]), r[9], r[10], now) for r in rows]
    columns = ", ".join(ops.quote_name(c) for c in (*FIELDS, "indexed_at"))
    sql = (f"INSERT INTO {ops.quote_name(EnvelopeRecord._meta.db_table)} ({columns}) "
           f"VALUES ({', '.join(['%s'] * (len(FIELDS) + 1))})")
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.executemany(sql, params)
        for stream, seq in upto.items():
            Cursor.objects.update_or_create(stream=stream, defaults={"last_seq": seq})


class Indexer:
    def __init__(self, nc: Client, batch: int = 1000, every: float = 0.2,
                 max_batch: int = 10_000, max_pending: int = 200_000) -> None:
        self.nc, self.batch, self.every = nc, batch, every
        self.max_batch, self.max_pending = max_batch, max_pending
        self.rows: list[tuple] = []
        self.last: dict[str, int] = {}  # stream -> last seq read (stored or in self.rows)
        self.behind: set[str] = set()  # ordered streams stopped until the backlog is written
        self.following: set[str] = set()  # streams subscribed to right now
        self.full = asyncio.Event()
        self.stored = self.dropped = 0

    def callback(self, stream: str, ordered: bool):
        async def on_message(msg) -> None:
            if stream in self.behind:
                return
            if len(self.rows) >= self.max_pending:
                if ordered:
                    self.behind.add(stream)  # read again from self.last later
                else:
                    self.dropped += 1
                return
            row = row_from(stream, msg.subject, msg.reply, msg.data, msg.headers)
            if ordered:
                # A recreated ordered consumer must not add a row twice (bus.tail).
                if row[1] is None or row[1] <= self.last.get(stream, 0):
                    return
                self.last[stream] = row[1]
            self.rows.append(row)
            if len(self.rows) >= self.batch:
                self.full.set()
        return on_message

    async def follow(self, stream: str, ordered: bool, stop: asyncio.Event) -> None:
        """Keep one stream followed: (re)subscribe after errors or a backlog."""
        attempt = 0
        while not stop.is_set():
            subs = []
            try:
                cb = self.callback(stream, ordered)
                if ordered:
                    start = await tail.resume_from(self.nc, stream, self.last.get(stream, 0) + 1)
                    self.last[stream] = start - 1
                    subs = [await tail.ordered(self.nc, stream, start, cb)]
                else:
                    subs = await tail.live(self.nc, stream, cb)
                attempt = 0
                self.following.add(stream)
                while not stop.is_set() and stream not in self.behind:
                    await _sleep(stop, 0.5)
            except Exception as exc:
                log.warning("traces: cannot follow %s (%s); retrying", stream, exc)
                await _sleep(stop, backoff_delay(attempt, base=1.0, cap=10.0))
                attempt += 1
            finally:
                self.following.discard(stream)
                for sub in subs:
                    try:
                        await sub.unsubscribe()
                    except Exception:
                        pass
            while stream in self.behind and not stop.is_set():
                if len(self.rows) < self.max_pending // 2:
                    self.behind.discard(stream)
                else:
                    await _sleep(stop, 0.2)

    async def flush(self, attempts: int | None = None) -> int:
        """Write the oldest ``max_batch`` rows waiting (one transaction, so other writers
        wait for it about a second at most); on a database error keep them and retry
        (``attempts``: give up after that many)."""
        if not self.rows:
            return 0
        rows, self.rows = self.rows[:self.max_batch], self.rows[self.max_batch:]
        attempt = 0
        while True:
            try:
                await sync_to_async(store)(rows)
                self.stored += len(rows)
                return len(rows)
            except Exception as exc:
                attempt += 1
                log.warning("traces: could not store %d rows (%s: %s); retry %d",
                            len(rows), type(exc).__name__, exc, attempt)
                await sync_to_async(close_old_connections)()
                if attempts is not None and attempt >= attempts:
                    raise
                await asyncio.sleep(backoff_delay(attempt, base=0.5, cap=10.0))

    async def run(self, stop: asyncio.Event) -> None:
        self.last = await sync_to_async(cursors)()
        tasks = [asyncio.create_task(self.follow(s, ordered, stop))
                 for s, ordered in STREAMS.items()]
        try:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(self.full.wait(), self.every)
                except TimeoutError:
                    pass
                self.full.clear()
                await self.flush()
                if self.dropped:
                    log.warning("traces: backlog full, %d live messages not indexed", self.dropped)
                    self.dropped = 0
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            try:
                while await self.flush(attempts=3):
                    pass
            except Exception:
                log.exception("traces: rows not stored at shutdown (ordered streams resume)")


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


async def run(nc: Client, stop: asyncio.Event) -> None:
    """Index until ``stop``; survives the bus and the database going away."""
    await Indexer(nc).run(stop)


def prune(days: int | None = None, chunk: int = 10_000) -> int:
    """Delete rows indexed more than ``days`` (``LUCENT_TRACE_DAYS``) ago; returns how many.

    In chunks, oldest first by primary key (rows are inserted in time order), so
    no index on ``indexed_at`` is needed and no long write lock is held.
    """
    cutoff = datetime.now(UTC) - timedelta(days=days or settings.LUCENT_TRACE_DAYS)
    total = 0
    while True:
        old = EnvelopeRecord.objects.filter(indexed_at__lt=cutoff)
        last = list(old.order_by("id").values_list("id", flat=True)[chunk - 1:chunk])
        if not last:
            return total + old.delete()[0]
        total += old.filter(id__lte=last[0]).delete()[0]
