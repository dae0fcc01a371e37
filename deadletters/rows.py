"""Dead-letter rows: one DEAD_LETTERS message to one DeadLetter row, whatever it holds.

A header that cannot be read (a sequence beyond 64 bits, an impossible date, Infinity)
is stored empty and named in malformed; a row the database refuses is stored with
its optional fields emptied, else quarantined: no message can stall the index. Rows are
keyed by (DEAD_LETTERS generation, sequence); a repeat is a no-op, a *different*
message at a known key (a restored backup) is stored under a generation of its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime

from django.db import DataError, IntegrityError, transaction

from kernel import quarantine
from lucent_bus import deadletters as dl
from lucent_bus import envelope
from lucent_bus import jetstream as js

from .models import DeadLetter

log = logging.getLogger("lucent.capture")

PIPELINE = "deadletter-index"  # Quarantined.pipeline

SEARCH_BYTES = 8192
INT64_MAX = 2**63 - 1  # BigIntegerField
INT32_MAX = 2**31 - 1  # IntegerField (PostgreSQL integer)

# Errors that are the row's fault (its data), as opposed to the database's or the bus's.
DATA_ERRORS = (DataError, OverflowError, ValueError, TypeError, UnicodeError)



def _field_limits() -> dict[str, int]:

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
        quarantine.set_aside(PIPELINE, dl.STREAM, row.generation, row.dl_seq, row.dl_subject,
                   f"{type(problem).__name__}: {problem}; emptied: {type(exc).__name__}: {exc}",
                   row.headers, row.payload_size)
        return 0






def _emptied(row):
    """The row with every optional field empty and the rest plain ASCII."""

    return DeadLetter(dl_seq=row.dl_seq, generation=quarantine.safe(row.generation, 64),
                      digest=quarantine.safe(row.digest, 40), malformed="all",
                      dl_subject=quarantine.safe(row.dl_subject, 512),
                      stream=quarantine.safe(row.stream, 256),
                      consumer=quarantine.safe(row.consumer, 256), subject=quarantine.safe(row.subject, 512),
                      reason=quarantine.safe(row.reason, 64), captured_at=row.captured_at,
                      payload_available=row.payload_available, payload_size=row.payload_size,
                      payload_kind=quarantine.safe(row.payload_kind, 16), headers={})
