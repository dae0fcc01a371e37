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

Long because the ordered readers, the batched store with its exactly-once tokens and
the writer process share one resume-point protocol; splitting it (readers / store /
writer) is the next step, not done in the layers move.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections import deque
from datetime import UTC, datetime, timedelta

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DataError, IntegrityError, close_old_connections, connection, transaction
from nats.aio.client import Client

from kernel import quarantine
from kernel.helper import Helper, HelperError, HelperGone
from lucent_bus import deadletters as dl
from lucent_bus import envelope, tail
from lucent_bus import jetstream as js
from lucent_bus.client import backoff_delay, sibling

from .models import Cursor, EnvelopeRecord

log = logging.getLogger("lucent.traces")

# stream -> read with an ordered consumer (True) or live only (False)
STREAMS = {"COMMANDS": True, "AGENT_COORDINATION": True, dl.STREAM: True,
           "DOMAIN_EVENTS": False, "HIERARCHY": False}
FIELDS = ("stream", "seq", "subject", "message_id", "correlation_id", "causation_id",
          "message_type", "sender", "at", "origin_stream", "origin_seq")
PLAUSIBLE = timedelta(hours=1)
LIMITS = {f.name: f.max_length for f in EnvelopeRecord._meta.fields if f.max_length}
INT64_MAX = 2**63 - 1
PIPELINE = "trace-index"  # streams.Quarantined.pipeline
CHECK_GENERATION_S = 1.0  # how often a followed ordered stream is checked for a new generation
# Errors that are a row's fault (its data), not the database's: the row is stored emptied
# or set aside rather than retried forever.
DATA_ERRORS = (DataError, IntegrityError, OverflowError, ValueError, TypeError, UnicodeError)


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
             received: datetime | None = None, generation: str = "") -> tuple:
    """One index row (``FIELDS`` order, then the stream's generation) from one delivered
    message; never raises: what cannot be read is left empty."""
    seq, ns = tail.position(reply)
    if seq is not None and not 0 <= seq <= INT64_MAX:
        seq = None
    try:
        return _row(stream, subject, seq, ns, data, headers, received, generation)
    except Exception as exc:  # a row with its fields empty rather than a hole in the index
        log.warning("traces: %s #%s could not be read (%s: %s); indexed with its fields empty",
                    stream, seq, type(exc).__name__, exc)
        return (stream, seq, _clip(str(subject), "subject"), "", "", "", "", "",
                _time_of(ns, received), "", None, generation)


def _time_of(ns: int | None, received: datetime | None) -> datetime:
    try:
        if ns:
            return datetime.fromtimestamp(ns / 1e9, UTC)
    except (OverflowError, ValueError, OSError):
        pass
    return received or datetime.now(UTC)


def _row(stream: str, subject: str, seq: int | None, ns: int | None, data: bytes,
         headers: dict | None, received: datetime | None, generation: str) -> tuple:
    message_id, correlation_id, causation_id, message_type, sender, sent = fields_of(data, headers)
    if ns:
        at = _time_of(ns, received)
    else:
        # Read live: the publisher's time when it is plausible, as the receive time
        # lags behind whenever the console has a backlog.
        received = received or datetime.now(UTC)
        at = received
        try:
            sent = js.parse_time(sent)
            if sent and sent.tzinfo and abs(sent - received) < PLAUSIBLE:
                at = sent
        except (ValueError, OverflowError, TypeError):  # 0001-01-01T00:00:00+14:00 and such
            pass
    origin_stream, origin_seq = "", None
    if stream == dl.STREAM:
        headers = headers or {}
        origin_stream = headers.get(dl.H_STREAM) or dl.parse_subject(subject)[0]
        raw = headers.get(dl.H_SEQ, "")
        # isdigit() also holds for digits int() cannot read, or past what the column holds.
        if raw.isascii() and raw.isdigit() and len(raw) <= 19 and int(raw) <= INT64_MAX:
            origin_seq = int(raw)
    elif not message_id and headers:
        message_id = headers.get("Nats-Msg-Id")
    return (stream, seq, _clip(subject, "subject"), _clip(message_id, "message_id"),
            _clip(correlation_id, "correlation_id"), _clip(causation_id, "causation_id"),
            _clip(message_type, "message_type"), _clip(sender, "sender"), at,
            _clip(origin_stream, "origin_stream"), origin_seq, generation)


INSERT = (f"INSERT INTO {EnvelopeRecord._meta.db_table} ({', '.join((*FIELDS, 'indexed_at'))}) "
          f"VALUES ({', '.join(['%s'] * (len(FIELDS) + 1))})")
WRITER_CACHE_KIB = 65_536  # SQLite page cache of the Writer process
# Cursor rows holding the tokens of the last batch stored and of the one before it
BATCH, BATCH_BEFORE = "(batch)", "(batch before)"


def cursors() -> dict[str, int]:
    return dict(Cursor.objects.exclude(stream__in=(BATCH, BATCH_BEFORE))
                .values_list("stream", "last_seq"))


def positions() -> dict[str, tuple[str, int]]:
    """stream -> (generation, last sequence stored)."""
    return {s: (g, n) for s, g, n in Cursor.objects.exclude(stream__in=(BATCH, BATCH_BEFORE))
            .values_list("stream", "generation", "last_seq")}


def _generation(row: tuple) -> str:
    return row[11] if len(row) > 11 else ""


def base(generation: str) -> str:
    """The stream's ``created`` time in a generation ("<created>#r<...>" after a restore)."""
    return generation.split("#", 1)[0]


def older(generation: str, than: str) -> bool:
    """Whether ``generation`` is of a stream created before ``than``'s ("" is older than
    any); False when that cannot be told."""
    if not generation:
        return bool(than)
    a, b = js.parse_time(base(generation)), js.parse_time(base(than))
    return bool(a and b and a < b)


def store(rows: list[tuple], token: int | None = None, after: int | None = None) -> int:
    """Insert ``rows`` and move the resume points past them, all or nothing; how many
    rows were inserted.

    ``token`` names the batch: if one of the last two batches stored had it (a
    writer process died after committing it, before saying so), nothing is inserted
    again. ``after``: the token of the batch that must have been stored before this
    one (``OutOfOrder`` if it was not). Rows of an ordered stream at or below its
    resume point are already stored (another indexer, during a leader handover)
    and are skipped. One INSERT run by ``executemany``: ``bulk_create`` cost 2.4
    times as much, multi-row INSERTs 1.5 times as much here (bench/trace_index.py;
    a 1 M-row index, 2026-11-27).
    """
    # ordered streams: rising seqs, in a generation (after the last row of an older one)
    upto = {r[0]: (_generation(r), r[1]) for r in rows if r[1] is not None}
    with transaction.atomic():
        points = {s: (g, n) for s, g, n in Cursor.objects.select_for_update()
                  .filter(stream__in=[*upto, BATCH, BATCH_BEFORE])
                  .values_list("stream", "generation", "last_seq")}
        if token is not None:
            stored = [points[k][1] for k in (BATCH, BATCH_BEFORE) if k in points]
            if token in stored:
                return 0
            if after is not None and (points[BATCH][1] if BATCH in points else None) != after:
                raise OutOfOrder("the batch before this one was not stored")
            if BATCH in points:
                Cursor.objects.update_or_create(stream=BATCH_BEFORE,
                                                defaults={"last_seq": points[BATCH][1]})
            Cursor.objects.update_or_create(stream=BATCH, defaults={"last_seq": token})
        new = [r for r in rows if r[1] is None or not _stored(r, points.get(r[0]))]
        inserted = _insert(new) if new else 0
        for stream, (gen, seq) in upto.items():
            have = points.get(stream)
            if have is None or (gen != have[0] and not older(gen, have[0])) \
                    or (gen == have[0] and seq > have[1]):
                Cursor.objects.update_or_create(stream=stream, defaults={"last_seq": seq,
                                                                         "generation": gen})
    return inserted


def _stored(row: tuple, point: tuple[str, int] | None) -> bool:
    """Whether an ordered stream's row is at or below its resume point (stored by another
    indexer), or of a generation older than the point's."""
    if point is None:
        return False
    gen = _generation(row)
    if gen == point[0]:
        return row[1] <= point[1]
    return older(gen, point[0])


def _params(row: tuple, now) -> tuple:
    return (*row[:8], connection.ops.adapt_datetimefield_value(row[8]), row[9], row[10], now)


def _insert(rows: list[tuple]) -> int:
    """Insert ``rows`` (in the caller's transaction); how many went in. Rows the database
    refuses for their data go in one by one, emptied if need be, else quarantined."""
    now = connection.ops.adapt_datetimefield_value(datetime.now(UTC))
    try:
        with transaction.atomic(), connection.cursor() as cursor:  # a savepoint
            cursor.executemany(INSERT, [_params(r, now) for r in rows])
        return len(rows)
    except DATA_ERRORS as exc:
        log.warning("traces: a batch of %d rows was refused (%s: %s); storing one by one",
                    len(rows), type(exc).__name__, exc)
    inserted = 0
    for row in rows:
        problem = None
        for attempt in (row, _emptied(row)):
            try:
                with transaction.atomic(), connection.cursor() as cursor:
                    cursor.execute(INSERT, _params(attempt, now))
                inserted += 1
                if attempt is not row:
                    log.warning("traces: %s #%s refused (%s: %s); indexed with its fields empty",
                                row[0], row[1], type(problem).__name__, problem)
                break
            except DATA_ERRORS as exc:
                problem = exc
        else:

            quarantine.set_aside(PIPELINE, str(row[0]), _generation(row), row[1], str(row[2]),
                       f"{type(problem).__name__}: {problem}", {}, 0)
    return inserted


def _emptied(row: tuple) -> tuple:
    """The row with only its place (stream, sequence, subject as ASCII) and a sane time."""
    at = row[8] if isinstance(row[8], datetime) and row[8].tzinfo else datetime.now(UTC)
    try:
        at.astimezone(UTC)
    except (OverflowError, ValueError):
        at = datetime.now(UTC)
    subject = str(row[2]).encode("ascii", "backslashreplace").decode()[:LIMITS["subject"]]
    return (str(row[0])[:LIMITS["stream"]], row[1], subject.replace("\x00", ""), "", "", "", "", "",
            at, "", None, _generation(row))


class OutOfOrder(Exception):
    pass


class Writer(Helper):
    """The process that writes the index under load (``store`` there): reading and
    decoding keep this process's core, the database work gets the other one."""

    TARGET = "traces.indexer:writer_handler"


def writer_handler():
    """In the writer process: ``store``, with a fresh connection after an error."""
    def write(rows: list[tuple], token: int, after: int | None) -> int:
        try:
            if connection.vendor == "sqlite" and connection.connection is None:
                connection.ensure_connection()
                with connection.cursor() as cursor:  # random-key inserts: -25 % wall
                    cursor.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
            return store(rows, token, after)
        except OutOfOrder:
            raise
        except Exception:
            connection.close()
            raise

    return write


class Indexer:
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
            row = row_from(stream, msg.subject, msg.reply, msg.data, msg.headers,
                           generation=self.generation.get(stream, "") if ordered else "")
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
            subs, conn = [], None
            try:
                cb = self.callback(stream, ordered)
                if ordered:
                    # A connection of its own: catching up, it may have 32 MiB in flight
                    # (see bus.client.sibling), which must not close the collector's.
                    conn = await sibling(self.nc, f"trace-index {stream}")
                    self.connections[stream] = conn
                    info = await js.stream_info(conn, stream)
                    start = self.start(stream, info)
                    subs = [await tail.ordered(conn, stream, start, cb)]
                else:
                    subs = await tail.live(self.nc, stream, cb)
                attempt = 0
                self.following.add(stream)
                checked = asyncio.get_running_loop().time()
                while not stop.is_set() and stream not in self.behind:
                    await _sleep(stop, 0.5)
                    if ordered and asyncio.get_running_loop().time() - checked >= CHECK_GENERATION_S:
                        checked = asyncio.get_running_loop().time()
                        if self.declared_again(stream, await js.stream_info(conn, stream)):
                            break
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
                if conn is not None:
                    self.connections.pop(stream, None)
                    try:
                        await conn.close()
                    except Exception:
                        pass
            while stream in self.behind and not stop.is_set():
                if len(self.rows) < self.max_pending // 2:
                    self.behind.discard(stream)
                else:
                    await _sleep(stop, 0.2)

    def start(self, stream: str, info: dict) -> int:
        """Where to read ``stream`` from, and under which generation (``self.generation``).

        A point of this generation resumes after it; one of another generation (the
        stream declared again, another bus) restarts at the stream's first sequence; a
        point past the end of its own generation (a backup restored: same ``created``,
        fewer messages) starts a generation of its own there, so that the rows to come
        are not taken for ones stored before. Points from before generations ("") are
        judged by the stream's length, as they were.
        """
        gen, state = dl.generation(info), info.get("state", {})
        first, last_seq = max(1, state.get("first_seq") or 1), state.get("last_seq", 0)
        held, seq = self.generation.get(stream), self.last.get(stream, 0)
        if held is None or (not held and seq == 0):
            start, label = max(1, seq + 1), gen  # never read: from the start, as before
        elif not held:
            start, label = (1 if seq + 1 > last_seq + 1 else seq + 1), gen
        elif base(held) == gen and seq <= last_seq:
            start, label = seq + 1, held
        elif base(held) == gen:
            label = f"{gen}#r{secrets.token_hex(3)}"
            log.warning("traces: %s ends at %d, before the %d indexed (restored from a backup?); "
                        "indexing it from %d as generation %s", stream, last_seq, seq, first, label)
            start = first
        else:
            log.warning("traces: %s was declared again (generation %s, was %s); indexing it from "
                        "%d", stream, gen, held, first)
            start, label = first, gen
        self.generation[stream], self.last[stream] = label, start - 1
        return start

    def declared_again(self, stream: str, info: dict) -> bool:
        """Whether the followed ``stream`` now has another generation. Rows waiting that
        were stored after the new one was created came from it (nats-py recreates an
        ordered consumer by itself) and are read again from its first sequence."""
        gen, held = dl.generation(info), self.generation.get(stream, "")
        if not held or base(held) == gen:
            return False
        created = js.parse_time(gen)
        if created is not None:
            self.rows = [r for r in self.rows if not (r[0] == stream and _generation(r) == held
                                                      and r[8] >= created)]
        return True

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
                or self.writer_failures >= 3 or not _shareable_database():
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


def _shareable_database() -> bool:
    """Whether another process can write this database (not an in-memory SQLite one)."""
    return connection.vendor != "sqlite" or not connection.is_in_memory_db()


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
