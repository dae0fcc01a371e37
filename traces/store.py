"""The trace index's store: rows in, resume points moved past them, all or nothing.

Each batch carries a token, so a batch stored by a writer process that died before it
could say so is not stored twice; rows the database refuses for their data are stored
one by one, emptied if need be, else set aside (``kernel.quarantine``). Resume points
(``Cursor``) carry the stream's generation (see ``traces.indexer``).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from django.db import DataError, IntegrityError, connection, transaction

from kernel import quarantine
from lucent_bus import jetstream as js

from .models import Cursor, EnvelopeRecord
from .rows import FIELDS, LIMITS

log = logging.getLogger("lucent.traces")

PIPELINE = "trace-index"  # streams.Quarantined.pipeline
# Errors that are a row's fault (its data), not the database's: the row is stored emptied
# or set aside rather than retried forever.
DATA_ERRORS = (DataError, IntegrityError, OverflowError, ValueError, TypeError, UnicodeError)
INSERT = (f"INSERT INTO {EnvelopeRecord._meta.db_table} ({', '.join((*FIELDS, 'indexed_at'))}) "
          f"VALUES ({', '.join(['%s'] * (len(FIELDS) + 1))})")
# Cursor rows holding the tokens of the last batch stored and of the one before it
BATCH, BATCH_BEFORE = "(batch)", "(batch before)"


def cursors() -> dict[str, int]:
    return dict(Cursor.objects.exclude(stream__in=(BATCH, BATCH_BEFORE))
                .values_list("stream", "last_seq"))


def positions() -> dict[str, tuple[str, int]]:
    """stream -> (generation, last sequence stored)."""
    return {s: (g, n) for s, g, n in Cursor.objects.exclude(stream__in=(BATCH, BATCH_BEFORE))
            .values_list("stream", "generation", "last_seq")}


def generation_of(row: tuple) -> str:
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
    upto = {r[0]: (generation_of(r), r[1]) for r in rows if r[1] is not None}
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
    gen = generation_of(row)
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

            quarantine.set_aside(PIPELINE, str(row[0]), generation_of(row), row[1], str(row[2]),
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
            at, "", None, generation_of(row))


class OutOfOrder(Exception):
    pass
