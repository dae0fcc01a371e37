"""The trace index: envelope metadata of every message on the Lucent streams.

Started by the collector beside the dead-letter capture::

    indexing = asyncio.create_task(traces.indexer.run(self.nc, stop))  # in Collector.run
    ...
    await indexing                                                      # after the sweep loop

Steps, and what happens if it stops halfway:

1. Read the resume points (``Cursor``). Follow COMMANDS, AGENT_COORDINATION and
   DEAD_LETTERS with ordered consumers (each on a bus connection of its own, see
   ``bus.client.sibling``) from ``last_seq + 1`` (so a restart catches
   up on what was published meanwhile); DOMAIN_EVENTS (interest) and HIERARCHY
   (work queue) with core subscriptions, live only (see ``lucent_bus.tail``
   for why a consumer there would change the stream).
2. Each message becomes a row in memory (one tolerant decode; the stream time, or
   for a message read live its envelope's timestamp (else the receive time); for a
   dead letter, where the original was).
3. Every ``every`` seconds, or sooner once ``batch`` rows wait, write them with the
   new resume points, in transactions of at most ``max_batch`` rows, in a worker
   thread; under load (``spawn_at`` rows waiting) in a ``Writer`` process, so that
   the database work has a core of its own. On a database error, or if the writer
   process dies, the rows stay in memory and the write is retried with backoff
   (and logged); each batch carries a token, so a batch stored by a writer that
   died before it could say so is not stored twice.
   Past ``max_pending`` rows, ordered streams stop and restart from their resume
   point once the backlog is written (nothing lost); live messages past it are
   dropped and counted.

Stopped between 2 and 3, the rows in memory are lost, but the resume points were
not advanced: the ordered streams are read again from there, nothing twice.
Live-only messages published while the console is down are not indexed.

Resume points carry the stream's generation (its ``created`` time): a stream deleted
and declared again, another bus or a restored backup counts from 1 again, so a
point of another generation restarts at the stream's first sequence, and a
followed stream is checked every second for a new generation. No row holds the
index: a field that cannot be read is left empty (``row_from`` never raises), a
batch the database refuses for its data is stored row by row, a row refused even
emptied is set aside in ``streams.Quarantined`` (pipeline ``trace-index``) and the
resume point moves past it only then. Errors that are not the rows' fault
(database locked) keep them for a retry, until the term ends.

Split by job: ``traces.rows`` (decoding, step 2), ``traces.readers`` (following the
streams, step 1), ``traces.store`` (the batched store with its tokens and resume points),
``traces.writer`` (the writer process); here the indexer that ties them (step 3). The
names its users import (``row_from``, ``store``, ``positions``, ``Writer`` ...) are
still importable from here.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from datetime import UTC, datetime, timedelta

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections
from nats.aio.client import Client

from kernel.helper import HelperError, HelperGone
from lucent_bus import cancel
from lucent_bus.client import backoff_delay

from .models import EnvelopeRecord
from .readers import CHECK_GENERATION_S, STREAMS, Readers
from .rows import FIELDS, fields_of, row_from
from .store import (
    BATCH,
    BATCH_BEFORE,
    OutOfOrder,
    base,
    cursors,
    older,
    positions,
    store,
)
from .writer import WRITER, Writer, shareable_database, writer_handler

__all__ = ["BATCH", "BATCH_BEFORE", "CHECK_GENERATION_S", "FIELDS", "STREAMS", "WRITER",
           "Indexer", "OutOfOrder", "Writer", "base", "cursors", "fields_of", "older",
           "positions", "prune", "row_from", "run", "store", "writer_handler"]

log = logging.getLogger("lucent.traces")


class Indexer(Readers):
    """Follows the streams (``Readers``) and writes what they read, in batches."""

    def __init__(self, nc: Client, batch: int = 1000, every: float = 0.2,
                 max_batch: int = 10_000, max_pending: int = 200_000,
                 spawn_at: int | None = 2_000) -> None:
        self.nc, self.batch, self.every = nc, batch, every
        self.max_batch, self.max_pending = max_batch, max_pending
        # Rows waiting at a flush from which writes move to a Writer process (None: never)
        self.spawn_at = spawn_at
        self.writer: Writer | None = None
        self.sent: deque[tuple[list[tuple], int]] = deque()  # batches in flight, oldest first
        self.owed = 0  # replies the writer owes (== len(sent) unless something went wrong)
        self.writer_failures = 0
        self.rows: list[tuple] = []
        self.last: dict[str, int] = {}  # stream -> last seq read (stored or in self.rows)
        self.generation: dict[str, str] = {}  # ordered stream -> the generation being read
        self.stop: asyncio.Event | None = None  # set when the term ends: retries give up
        self.behind: set[str] = set()  # ordered streams stopped until the backlog is written
        self.following: set[str] = set()  # streams subscribed to right now
        self.connections: dict[str, Client] = {}  # ordered stream -> its own bus connection
        self.full = asyncio.Event()
        self.stored = self.dropped = 0

    async def flush(self, attempts: int | None = None) -> int:
        """Write the oldest ``max_batch`` rows waiting (one transaction, so other writers
        wait for it about a second at most); how many rows were stored. On a database
        error keep them and retry (``attempts``: give up after that many).

        Through a Writer process, two batches are in its pipe at a time: it stores
        one while the next is pickled and sent. Each batch then names the one before
        it, and is refused if that one was not stored; after an error the batches
        in flight are written again one at a time (their tokens make a batch that
        was stored a no-op).
        """
        if not self.rows and not self.sent:
            return 0
        if self.owed != len(self.sent):  # a writer died or was killed with batches in flight
            return await self.rewrite(attempts)
        await self.spawn(len(self.rows))
        if self.writer is None:
            rows, self.rows = self.rows[:self.max_batch], self.rows[self.max_batch:]
            await self.retrying(rows, secrets.randbits(63), attempts)
            return len(rows)
        try:
            while len(self.sent) < 2 and self.rows:
                rows, self.rows = self.rows[:self.max_batch], self.rows[self.max_batch:]
                token, after = secrets.randbits(63), self.sent[-1][1] if self.sent else None
                self.sent.append((rows, token))  # from here on, written again by token if need be
                await self.exchange(self.writer.send, rows, token, after)
                self.owed += 1
            await self.receive()
            rows, _ = self.sent.popleft()
            self.stored += len(rows)
            self.writer_failures = 0
            return len(rows)
        except HelperError as exc:
            log.warning("traces: writer process: %s; writing %d batches again", exc,
                        len(self.sent))
        return await self.rewrite(attempts)

    async def rewrite(self, attempts: int | None) -> int:
        """The batches that were in flight, one at a time, oldest first."""
        await self.drain()
        n = 0
        while self.sent:
            rows, token = self.sent[0]
            await self.retrying(rows, token, attempts)
            self.sent.popleft()
            n += len(rows)
        return n

    async def exchange(self, fn, *args):
        """One step of talking to the writer (``send``, ``receive``, ``call``) in a
        thread. Anything but the writer's own error, a cancellation included, leaves
        its pipes out of step: the writer is killed, and what it was sent is written
        again by token."""
        writer = self.writer
        try:
            return await asyncio.to_thread(fn, *args)
        except HelperError:  # its own error (HelperGone too): the writer is let go by drain
            raise
        except BaseException:
            if self.writer is writer:
                self.writer, self.owed = None, 0
            writer.kill()
            raise

    async def receive(self):
        """The writer's reply to the oldest batch it owes one for."""
        try:
            result = await self.exchange(self.writer.receive)
        except HelperGone:
            raise
        except HelperError:
            self.owed -= 1  # a reply, saying that batch failed
            raise
        self.owed -= 1
        return result

    async def drain(self) -> None:
        """Read the replies the writer still owes (after an error, each refuses its
        batch, as the one before failed); a writer process that died is let go."""
        while self.owed and self.writer is not None and self.writer.alive:
            try:
                await self.receive()
            except HelperError:
                pass
        if self.writer is not None and not self.writer.alive:
            writer, self.writer, self.owed = self.writer, None, 0
            self.writer_failures += 1
            await asyncio.to_thread(writer.stop)

    async def retrying(self, rows: list[tuple], token: int, attempts: int | None) -> None:
        attempt = 0
        while True:
            try:
                await self.write(rows, token)
                self.stored += len(rows)
                return
            except Exception as exc:
                attempt += 1
                log.warning("traces: could not store %d rows (%s: %s); retry %d",
                            len(rows), type(exc).__name__, exc, attempt)
                await sync_to_async(close_old_connections)()
                if attempts is not None and attempt >= attempts:
                    raise
                if self.stop is not None and self.stop.is_set() and attempt >= 3:
                    raise  # the term ended: the next one reads these again from the points
                await asyncio.sleep(backoff_delay(attempt, base=0.5, cap=10.0))
                await self.spawn(len(self.rows) + len(rows))

    async def write(self, rows: list[tuple], token: int) -> None:
        """One batch, alone: in the Writer process if there is one, else ``store`` in a
        worker thread."""
        if self.writer is None:
            await sync_to_async(store)(rows, token)
            return
        try:
            await self.exchange(self.writer.call, rows, token, None)
        except HelperGone:
            await self.drain()
            raise

    async def spawn(self, waiting: int) -> None:
        """Start a Writer process once ``spawn_at`` rows wait (the bus loop and SQLite
        then stop taking turns at one GIL: bench/trace_index.py). A writer that dies
        is replaced; after three in a row that would not start or died, writes stay
        here."""
        if self.writer is not None or self.spawn_at is None or waiting < self.spawn_at \
                or self.writer_failures >= 3 or not shareable_database():
            return
        self.writer = await asyncio.to_thread(Writer.start)
        if self.writer is None:
            self.writer_failures += 1
        else:
            log.info("traces: %d rows waiting, writing from process %d", waiting, self.writer.pid)

    async def close_writer(self) -> None:
        if self.writer is not None:
            writer, self.writer, self.owed = self.writer, None, 0
            await asyncio.to_thread(writer.stop)

    async def run(self, stop: asyncio.Event) -> None:
        self.stop = stop
        points = await sync_to_async(positions)()
        self.last = {s: n for s, (_, n) in points.items()}
        self.generation = {s: g for s, (g, _) in points.items()}
        tasks = [asyncio.create_task(self.follow(s, ordered, stop))
                 for s, ordered in STREAMS.items()]
        try:
            while not stop.is_set():
                cancel.check()
                try:
                    await asyncio.wait_for(self.full.wait(), self.every)
                except TimeoutError:
                    pass
                self.full.clear()
                try:
                    await self.flush()
                except Exception:
                    if not stop.is_set():
                        raise
                    break  # the term ended while a write was failing: stop trying
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
            finally:
                await self.close_writer()


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
