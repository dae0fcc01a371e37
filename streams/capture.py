"""Dead-letter capture and indexing: lossless, at least once in, exactly once out.

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

``index``: a durable consumer on DEAD_LETTERS writes each dead letter (captured
here, or published by a service itself before term()) to the ``DeadLetter``
table, keyed by (DEAD_LETTERS generation, sequence): a DEAD_LETTERS declared
again, another bus or a restored backup counts from 1 again under a new
generation, and rows of earlier ones are kept. A repeat (same key, same digest)
is a no-op; a *different* message at a known key (a backup restored with the
same ``created`` time) is stored under ``<generation>#r<digest>`` and logged,
never dropped. Then acks.

No message stalls the index: a header that cannot be read (a sequence beyond
64 bits, an impossible date...) is stored empty and named in ``malformed``; a
row the database still refuses is stored with every optional field emptied, and
if even that fails, set aside in ``Quarantined``. Only errors that are not the
message's fault (database locked, bus away) leave it unacked, to be redelivered.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime

from asgiref.sync import sync_to_async
from django.db import DataError, IntegrityError, transaction
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeout

from lucent_console.bus import deadletters as dl
from lucent_console.bus import envelope
from lucent_console.bus import jetstream as js

log = logging.getLogger("lucent.capture")

ADVISORY_STREAM = "LUCENT_ADVISORIES"
CAPTURE_CONSUMER = "deadletter-capture"
INDEX_CONSUMER = "deadletter-index"
PIPELINE = "deadletter-index"  # Quarantined.pipeline
NOTIFY_SUBJECT = "lucent.console.live.deadletters"
REASONS = {"io.nats.jetstream.advisory.v1.max_deliver": dl.REASON_MAX_DELIVERIES,
           "io.nats.jetstream.advisory.v1.terminated": dl.REASON_TERMINATED}
SEARCH_BYTES = 8192
INT64_MAX = 2**63 - 1  # BigIntegerField
INT32_MAX = 2**31 - 1  # IntegerField (PostgreSQL integer)
SOURCE_INFO_TTL = 1.0  # seconds a source stream's generation is trusted without asking again
# Errors that are the row's fault (its data), as opposed to the database's or the bus's.
DATA_ERRORS = (DataError, OverflowError, ValueError, TypeError, UnicodeError)


# ---------------------------------------------------------------- capture

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


# ---------------------------------------------------------------- rows

def _field_limits() -> dict[str, int]:
    from .models import DeadLetter

    return {f.name: f.max_length for f in DeadLetter._meta.fields if f.max_length}


def _int(value, upper: int, name: str, bad: list[str]) -> int | None:
    """A non-negative integer header that fits its column, else None (named in ``bad``)."""
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except (ValueError, TypeError):  # "Infinity", "1e3", 5,000 digits...
        bad.append(name)
        return None
    if not 0 <= number <= upper:
        bad.append(name)
        return None
    return number


def _time(value, name: str, bad: list[str]) -> datetime | None:
    """An aware UTC datetime the database can hold, else None (named in ``bad``)."""
    if not value:
        return None
    try:
        parsed = js.parse_time(value)
        if parsed is not None:
            # 0001-01-01T00:00:00+14:00 parses but lies before year 1 in UTC.
            parsed = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError, TypeError):
        parsed = None
    if parsed is None:
        bad.append(name)
    return parsed


def _text(value, limit: int, name: str, bad: list[str]) -> str:
    """Text for a column: no NUL (PostgreSQL refuses it), clipped to the column."""
    text = value if isinstance(value, str) else ("" if value is None else str(value))
    clean = text.replace("\x00", "")[:limit]
    if clean != text:
        bad.append(name)
    return clean


def _clean_headers(headers: dict, bad: list[str]) -> dict[str, str]:
    """Headers as JSON the database takes: strings, no NUL (jsonb refuses \\u0000)."""
    out: dict[str, str] = {}
    changed = False
    for k, v in headers.items():
        key, value = str(k), v if isinstance(v, str) else str(v)
        if "\x00" in key or "\x00" in value:
            key, value, changed = key.replace("\x00", ""), value.replace("\x00", "\ufffd"), True
        out[key] = value
    if changed:
        bad.append("headers")
    return out


def digest(subject: str, headers: dict | None, data: bytes) -> str:
    """sha1 of subject, headers and payload: tells a repeat from a different message at
    one (generation, sequence). Header names nats-py would not deliver (non-ASCII,
    whitespace) are left out, so that the index (nats-py) and ``reindex``
    (STREAM.MSG.GET) agree."""
    pairs = sorted((str(k), str(v)) for k, v in (headers or {}).items()
                   if str(k).isascii() and not any(c.isspace() for c in str(k)))
    h = hashlib.sha1(subject.encode("utf-8", "surrogatepass"))
    h.update(b"\x00" + json.dumps(pairs).encode() + b"\x00")
    h.update(bytes(data or b""))
    return h.hexdigest()


def row_from(subject: str, dl_seq: int, headers: dict | None, data: bytes, at: datetime,
             generation: str = ""):
    """A ``DeadLetter`` row from one DEAD_LETTERS message (captured or explicit); never
    raises: a field that cannot be read is left empty and named in ``malformed``."""
    from .models import DeadLetter

    data = bytes(data or b"")
    headers = dict(headers or {})
    try:
        sum_ = digest(subject, headers, data)
    except Exception:  # a digest must not cost a dead letter
        sum_ = ""
    try:
        return _row(subject, dl_seq, headers, data, at, generation, sum_)
    except Exception as exc:
        log.warning("index: DEAD_LETTERS #%s could not be read (%s: %s); stored with its fields "
                    "empty", dl_seq, type(exc).__name__, exc)
        return DeadLetter(dl_seq=dl_seq, generation=generation[:64], digest=sum_,
                          malformed="all", dl_subject=str(subject)[:512], stream="", subject="",
                          consumer="", reason=dl.REASON_EXPLICIT, captured_at=at,
                          payload_size=len(data), headers={})


def _row(subject: str, dl_seq: int, headers: dict, data: bytes, at: datetime, generation: str,
         sum_: str):
    from .models import DeadLetter

    limits = _field_limits()
    bad: list[str] = []
    stream, consumer = dl.parse_subject(subject)
    decoded = envelope.decode(data, headers)
    missing = headers.get(dl.H_PAYLOAD) == "missing"
    failed_at = _time(headers.get(dl.H_AT), dl.H_AT, bad)
    seq = _int(headers.get(dl.H_SEQ), INT64_MAX, dl.H_SEQ, bad)
    deliveries = _int(headers.get(dl.H_DELIVERIES), INT32_MAX, dl.H_DELIVERIES, bad)
    text = decoded.text if decoded.text is not None else (decoded.hex or "")

    def clip(value, name: str, label: str | None = None) -> str:
        return _text(value, limits[name], label or name, bad)

    row = DeadLetter(
        dl_seq=dl_seq, generation=generation[:64], digest=sum_, dl_subject=clip(subject, "dl_subject"),
        stream=clip(headers.get(dl.H_STREAM) or stream, "stream", dl.H_STREAM), stream_seq=seq,
        subject=clip(headers.get(dl.H_SUBJECT, ""), "subject", dl.H_SUBJECT),
        consumer=clip(headers.get(dl.H_CONSUMER) or consumer, "consumer", dl.H_CONSUMER),
        deliveries=deliveries,
        reason=clip(headers.get(dl.H_REASON) or dl.REASON_EXPLICIT, "reason", dl.H_REASON),
        error=_text(headers.get(dl.H_ERROR, ""), 100_000, dl.H_ERROR, bad),
        failed_at=failed_at, captured_at=at,
        message_id=clip(decoded.message_id, "message_id"),
        correlation_id=clip(decoded.correlation_id, "correlation_id"),
        causation_id=clip(decoded.causation_id, "causation_id"),
        message_type=clip(decoded.message_type, "message_type"),
        payload_available=not missing, payload_size=len(data),
        payload_kind="missing" if missing else decoded.kind,
        search_text=text[:SEARCH_BYTES].replace("\x00", ""), headers=_clean_headers(headers, bad))
    row.malformed = ",".join(dict.fromkeys(bad))[:limits["malformed"]]
    if bad:
        log.info("index: DEAD_LETTERS #%s: unreadable %s, stored empty", dl_seq, row.malformed)
    return row


# ---------------------------------------------------------------- storing

def _same(known: tuple[str, str, dict], row) -> bool:
    """Whether the stored row (digest, dl_subject, headers) is this message again."""
    stored_digest, dl_subject, headers = known
    if stored_digest and row.digest:
        return stored_digest == row.digest
    # Rows from before digests: the subject and headers (which hold Lucent-DL-At, the
    # capture time) are as close as we can get.
    return dl_subject == row.dl_subject and headers == row.headers


def _resolve(rows: list) -> list:
    """The rows that are new: a repeat of a stored (or earlier in ``rows``) message is
    dropped; a different message at a known key is moved to a generation of its own."""
    from .models import DeadLetter

    seen: dict[tuple[str, int], tuple[str, str, dict]] = {}
    if rows:
        for g, s, d, subj, h in (DeadLetter.objects
                                 .filter(generation__in={r.generation for r in rows},
                                         dl_seq__in={r.dl_seq for r in rows})
                                 .values_list("generation", "dl_seq", "digest", "dl_subject",
                                              "headers")):
            seen[(g, s)] = (d, subj, h)
    out = []
    for row in rows:
        base, attempt = row.generation, 0
        while (row.generation, row.dl_seq) in seen:
            if _same(seen[(row.generation, row.dl_seq)], row):
                break
            attempt += 1
            suffix = f"#r{(row.digest or 'x')[:12]}" + (f"-{attempt}" if attempt > 1 else "")
            row.generation = base[:64 - len(suffix)] + suffix
            log.warning("index: DEAD_LETTERS #%d is a different message than the one indexed "
                        "under generation %r (a restored backup?): stored under %r",
                        row.dl_seq, base, row.generation)
            known = (DeadLetter.objects.filter(generation=row.generation, dl_seq=row.dl_seq)
                     .values_list("digest", "dl_subject", "headers").first())
            if known is not None:
                seen[(row.generation, row.dl_seq)] = known
        else:
            seen[(row.generation, row.dl_seq)] = (row.digest, row.dl_subject, row.headers)
            out.append(row)
    return out


def store_rows(rows: list) -> int:
    """Store the new rows; how many were new. A repeat is a no-op, a row the database
    refuses is stored emptied or quarantined (``_store_one``); an error that is not the
    rows' fault (database locked...) raises, for the batch to be retried."""
    rows = _resolve(rows)
    if not rows:
        return 0
    try:
        with transaction.atomic():
            from .models import DeadLetter

            DeadLetter.objects.bulk_create(rows, batch_size=500)
        return len(rows)
    except (IntegrityError, *DATA_ERRORS) as exc:
        # One row must not hold the others: one by one (each in a savepoint).
        log.warning("index: a batch of %d rows was refused (%s: %s); storing one by one",
                    len(rows), type(exc).__name__, exc)
        for row in rows:
            row.pk = None  # bulk_create may have set it before the rollback
    return sum(_store_one(row) for row in rows)


def _store_one(row, attempt: int = 0) -> int:
    try:
        with transaction.atomic():
            row.save(force_insert=True)
        return 1
    except IntegrityError as exc:
        row.pk = None
        if attempt == 0:  # another indexer (a leader handing over) stored this key meanwhile
            again = _resolve([row])
            return _store_one(again[0], 1) if again else 0
        problem: BaseException = exc
    except DATA_ERRORS as exc:
        row.pk = None
        problem = exc
    emptied = _emptied(row)
    try:
        with transaction.atomic():
            emptied.save(force_insert=True)
        log.warning("index: DEAD_LETTERS #%d refused by the database (%s: %s); stored with its "
                    "fields empty", row.dl_seq, type(problem).__name__, problem)
        return 1
    except (IntegrityError, *DATA_ERRORS) as exc:
        quarantine(PIPELINE, dl.STREAM, row.generation, row.dl_seq, row.dl_subject,
                   f"{type(problem).__name__}: {problem}; emptied: {type(exc).__name__}: {exc}",
                   row.headers, row.payload_size)
        return 0


def _safe(text, limit: int) -> str:
    return str(text or "").encode("ascii", "backslashreplace").decode()[:limit].replace("\x00", "")


def _emptied(row):
    """The row with every optional field empty and the rest plain ASCII."""
    from .models import DeadLetter

    return DeadLetter(dl_seq=row.dl_seq, generation=_safe(row.generation, 64),
                      digest=_safe(row.digest, 40), malformed="all",
                      dl_subject=_safe(row.dl_subject, 512), stream=_safe(row.stream, 256),
                      consumer=_safe(row.consumer, 256), subject=_safe(row.subject, 512),
                      reason=_safe(row.reason, 64), captured_at=row.captured_at,
                      payload_available=row.payload_available, payload_size=row.payload_size,
                      payload_kind=_safe(row.payload_kind, 16), headers={})


def quarantine(pipeline: str, stream: str, generation: str, seq: int | None, subject: str,
               reason: str, headers: dict | None, payload_size: int) -> None:
    """Set a message aside (``Quarantined``) so its pipeline moves on; once per message.
    Raises only if even that cannot be written (then the message is retried)."""
    from .models import Quarantined

    key = {"pipeline": pipeline, "stream": _safe(stream, 256), "generation": _safe(generation, 64),
           "seq": seq if seq is None or 0 <= seq <= INT64_MAX else None}
    values = {"subject": _safe(subject, 512), "reason": _safe(reason, 2000),
              "payload_size": payload_size}
    log.error("%s: %s #%s set aside in Quarantined: %s", pipeline, stream, seq, values["reason"])
    for hdrs in ({_safe(k, 256): _safe(v, 4096) for k, v in (headers or {}).items()}, {}):
        try:
            with transaction.atomic():
                Quarantined.objects.update_or_create(**key, defaults={**values, "headers": hdrs})
            return
        except DATA_ERRORS:
            continue
    raise RuntimeError(f"{pipeline}: could not even quarantine {stream} #{seq}")


# ---------------------------------------------------------------- index

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
    from . import topology

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
