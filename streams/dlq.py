"""The dead-letter service layer: what pages, API, CLI, admin and tasks call.

Replay, exactly once: each replay publishes with a ``Nats-Msg-Id`` derived from
the dead letter and the target subject, waits for the target stream's PubAck,
and only then marks the dead letter replayed. A retry after a crash, a double
click or two operators at once publishes the same id, which the target stream
drops within its duplicate window (a PubAck with ``duplicate: true``).
Bulk replays and purges are ``Job`` rows run by Celery (``jobs.run_job``: one runner
under a lease, resumed when its runner dies, exactly once beyond the duplicate
window; see ``streams/jobs.py``). This module holds what they call: a bulk replay
reads DEAD_LETTERS a batch at a time (batched DIRECT.GET on nats-server 2.11+, one
STREAM.MSG.GET per letter before) and publishes the batch pipelined (``replay_batch``).

Every read of a stored dead letter checks that the message at its DEAD_LETTERS
sequence is still the one indexed (its generation and ``Lucent-DL-*`` identity): a
stream declared again counts from 1, and a row of an earlier generation must never
show or replay the new stream's message.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from datetime import datetime

from django.core import signing
from django.db.models import Count, Q
from django.utils import timezone

from lucent_console.actions import ActionError, NotFound, Refused, audited
from lucent_console.bus import deadletters as dl
from lucent_console.bus import envelope
from lucent_console.bus import jetstream as js
from lucent_console.bus import sync as bus_sync
from lucent_console.bus.client import web_client
from lucent_console.helper import Helper, HelperError
from lucent_console.models import AuditRecord
from lucent_console.roles import has_role

from . import subjects
from .models import DeadLetter, Job, Replay

FILTERS = ("stream", "consumer", "subject", "message_type", "correlation_id", "reason", "status",
           "since", "until", "q")
BATCH = 1000
IN_FLIGHT = 256  # STREAM.MSG.GET requests at once (one per letter, older servers)
PUB_IN_FLIGHT = 1000  # replays published and not yet acked
GAP = 64  # batched reads read through gaps this wide rather than split
# Unthrottled replays of at least SHARD_MIN letters also publish half of each batch from a
# helper process: one Python process is bound by its own CPU (parsing and publishing).
SHARDS = 2
SHARD_MIN = 20 * BATCH
BUS_RETRY_S = 120
PLAN_SALT = "lucent.deadletters.plan"
PLAN_MAX_AGE_S = 24 * 3600


# ------------------------------------------------------------------ reading

def _nats_pattern_to_regex(pattern: str) -> str:
    parts = []
    for token in pattern.split("."):
        parts.append("[^.]+" if token == "*" else ".+" if token == ">" else re.escape(token))
    return "^" + r"\.".join(parts) + "$"


def _time(value, field):
    try:
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise ActionError(f"{field}: {str(value)[:40]!r} is not a time (use 2026-11-26T10:30)") from None
    return when if when.tzinfo else timezone.make_aware(when)


def clean_filters(params) -> dict:
    """The filters given, checked: bad values are a clear error.

    ``subject_filter`` is another name for ``subject``: a bulk replay's
    ``subject`` is where to replay to, so its filter on the original subject
    goes by that name.
    """
    out = {}
    for key in FILTERS:
        value = params.get(key)
        if key == "subject" and params.get("subject_filter"):
            value = params.get("subject_filter")
        if value in (None, ""):
            continue
        value = str(value).strip()
        if key == "subject" and not subjects.is_valid(value):
            raise ActionError(f"{value[:80]!r} is not a valid subject")
        if key == "status" and value not in dict(DeadLetter.STATUSES):
            raise ActionError(f"status must be one of new, replayed, purged, not {value[:20]!r}")
        if key in ("since", "until"):
            _time(value, key)
        out[key] = value
    return out


def filtered(filters: dict):
    qs = DeadLetter.objects.all()
    for key in ("stream", "consumer", "message_type", "correlation_id", "reason"):
        if filters.get(key):
            qs = qs.filter(**{key: filters[key]})
    if filters.get("subject"):
        pattern = filters["subject"]
        if "*" in pattern or ">" in pattern:
            # The literal tokens before the first wildcard narrow by index first.
            literal = []
            for token in pattern.split("."):
                if token in ("*", ">"):
                    break
                literal.append(token)
            if literal:
                qs = qs.filter(subject__startswith=".".join(literal) + ".")
            qs = qs.filter(subject__regex=_nats_pattern_to_regex(pattern))
        else:
            qs = qs.filter(subject=pattern)
    if filters.get("status"):
        qs = qs.filter(status=filters["status"])
    else:
        qs = qs.exclude(status=DeadLetter.PURGED)
    if filters.get("since"):
        qs = qs.filter(captured_at__gte=_time(filters["since"], "since"))
    if filters.get("until"):
        qs = qs.filter(captured_at__lt=_time(filters["until"], "until"))
    if filters.get("q"):
        q = filters["q"]
        qs = qs.filter(Q(search_text__icontains=q) | Q(error__icontains=q) | Q(message_id=q))
    return qs


def groups(qs, limit: int = 8) -> list[dict]:
    """Counts by message type, consumer and reason: a flood at a glance."""
    rows = (qs.order_by().values("message_type", "consumer", "reason")
            .annotate(n=Count("id")).order_by("-n")[:limit])
    return list(rows)


def get(dl_id) -> DeadLetter:
    try:
        return DeadLetter.objects.get(pk=int(dl_id))
    except (ValueError, TypeError, DeadLetter.DoesNotExist):
        raise NotFound(f"no dead letter {str(dl_id)[:20]!r}") from None


def load(letter: DeadLetter) -> dict:
    """The stored copy: headers, payload and its decoding (from DEAD_LETTERS)."""
    if letter.status == DeadLetter.PURGED:
        return {"available": False, "why": "purged"}
    async def read(nc):
        return await js.next_message(nc, dl.STREAM, letter.dl_seq), await current_generation(nc)

    try:
        msg, generation = bus_sync.with_client(read)
    except Exception as exc:
        return {"available": False, "why": f"cannot read DEAD_LETTERS: {exc}"}
    if msg is None or msg["seq"] != letter.dl_seq:
        return {"available": False, "why": "no longer in DEAD_LETTERS"}
    if not same_letter(letter.generation, letter.stream, letter.stream_seq, msg, generation):
        return {"available": False, "why": "no longer available: it was stored in an earlier "
                "DEAD_LETTERS stream (declared again since, or another bus)"}
    return {"available": letter.payload_available, "headers": msg["headers"], "data": msg["data"],
            "decoded": envelope.decode(msg["data"], msg["headers"]),
            "why": "" if letter.payload_available else
            "payload unavailable: the original was gone when the failure was captured"}


# ------------------------------------------------------------------ replay core

async def current_generation(nc) -> str:
    return dl.generation(await js.stream_info(nc, dl.STREAM))


def same_letter(generation: str, stream: str, stream_seq, msg: dict, current: str) -> bool:
    """Whether ``msg`` (read at a row's DEAD_LETTERS sequence) is the letter the row
    indexed: the same DEAD_LETTERS generation, and the same original stream and sequence
    where the copy names them. Rows indexed before generations were kept ("") rely on
    the second check alone."""
    # A "#r..." suffix marks a restored stream's different message at a known key: the
    # same stream, so the same DEAD_LETTERS generation as far as reading goes.
    if generation and current and generation.split("#")[0] != current:
        return False
    headers = msg.get("headers") or {}
    if headers.get(dl.H_STREAM) and stream and headers[dl.H_STREAM] != stream:
        return False
    seq = headers.get(dl.H_SEQ, "")
    if stream_seq is not None and seq.isascii() and seq.isdigit() and len(seq) <= 19:
        return int(seq) == stream_seq
    return True


def replay_msg_id(letter_seq: int, subject: str, generation: str = "") -> str:
    """The replay's dedup id: the letter (its DEAD_LETTERS generation and sequence) and the
    target, so the same letter sent twice is one message, and a letter of a later
    DEAD_LETTERS at the same sequence is another."""
    gen = hashlib.sha1(generation.encode()).hexdigest()[:8] if generation else ""
    return (f"replay:{gen + ':' if gen else ''}{letter_seq}:"
            f"{hashlib.sha1(subject.encode()).hexdigest()[:12]}")


def replay_headers(stored: dict, letter_seq: int, subject: str, generation: str = "") -> dict:
    headers = {k: v for k, v in stored.items()
               if not k.startswith(("Lucent-DL-", "Nats-")) and k != "Status"}
    headers["Nats-Msg-Id"] = replay_msg_id(letter_seq, subject, generation)
    headers["Lucent-Replay-Of"] = str(letter_seq)
    return headers


async def _target_ok(nc, subject: str) -> None:
    if not subjects.is_valid(subject, wildcards=False):
        raise ActionError(f"{subject[:80]!r} is not a subject one can publish to")
    # The bus's own subjects ($JS, $KV, inboxes, the console's) and the dead letters.
    subjects.refuse_reserved(subject, replay=True)
    if not await js.streams_storing(nc, subject):
        raise ActionError(f"no stream stores {subject!r}: the dead letter stays where it is")


async def _replay_one(nc, letter: DeadLetter, subject: str | None, remove_original: bool) -> dict:
    """Publish one dead letter again; returns the PubAck and target."""
    row = (letter.pk, letter.dl_seq, letter.stream, letter.stream_seq, letter.subject,
           letter.generation)
    [(_, result)] = await _replay_rows(nc, [row], subject, remove_original, RateLimit(None))
    if isinstance(result, Exception):
        raise result if isinstance(result, ActionError) else ActionError(str(result))
    return result


def replay(user, dl_id, subject: str | None = None, remove_original: bool = False) -> dict:
    """Replay one dead letter (operator). Audited; refused or failed changes nothing."""
    subject = (subject or "").strip() or None
    with audited(user, "deadletter.replay", str(dl_id),
                 {"subject": subject, "remove_original": remove_original}, "operator") as outcome:
        letter = get(dl_id)
        if letter.status == DeadLetter.PURGED:
            raise ActionError("this dead letter was purged")
        target = subject or letter.subject

        async def go(nc):
            await _target_ok(nc, target)
            return await _replay_one(nc, letter, target, remove_original)

        result = bus_sync.with_client(go)
        Replay.objects.create(dead_letter=letter, username=getattr(user, "username", ""),
                              subject=result["subject"], msg_id=result["msg_id"],
                              stream=result["stream"], seq=result["seq"],
                              duplicate=result["duplicate"], generation=letter.generation)
        letter.status = DeadLetter.REPLAYED
        letter.save(update_fields=["status"])
        outcome.detail = (f"to {result['subject']}: {result['stream']} seq {result['seq']}"
                          + (" (duplicate: already replayed)" if result["duplicate"] else ""))
    return {"status": "replayed", "id": letter.id, **result}


def purge_one(user, dl_id) -> dict:
    with audited(user, "deadletter.purge", str(dl_id), {}, "operator") as outcome:
        letter = get(dl_id)
        purge_letters([letter])
        outcome.detail = f"purged dead letter {letter.dl_seq}"
    return {"status": "purged", "id": letter.id}


def purge_letters(letters: list[DeadLetter]) -> int:
    """Delete the letters' stored copies (those of the current DEAD_LETTERS generation: a
    row of an earlier one has no copy left to delete) and mark them purged."""
    async def go(nc):
        current = await current_generation(nc)
        for letter in letters:
            if letter.generation and letter.generation != current:
                continue
            if not letter.generation:  # indexed before generations: check it is the same
                msg = await js.next_message(nc, dl.STREAM, letter.dl_seq)
                if msg is None or msg["seq"] != letter.dl_seq or not same_letter(
                        "", letter.stream, letter.stream_seq, msg, current):
                    continue
            try:
                await js.delete_message(nc, dl.STREAM, letter.dl_seq)
            except js.JetStreamError as exc:
                if exc.err_code not in (js.NO_MESSAGE_FOUND, 10057):
                    raise
    bus_sync.with_client(go)
    DeadLetter.objects.filter(pk__in=[x.pk for x in letters]).update(status=DeadLetter.PURGED,
                                                                     payload_available=False)
    return len(letters)


# ------------------------------------------------------------------ bulk: dry run and jobs

def dry_run(filters: dict, subject: str | None = None) -> dict:
    """What a bulk job would do, and the ``plan`` that freezes it: a job started with the
    plan works on exactly these letters (the filters, up to the newest letter counted
    here), not on letters indexed since."""
    upto = DeadLetter.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    qs = filtered(filters).filter(pk__lte=upto)
    matched = qs.count()
    unavailable = qs.filter(payload_available=False).count()
    if subject:
        targets = [{"subject": subject, "n": matched - unavailable}]
    else:
        targets = list(qs.filter(payload_available=True).order_by().values("subject")
                       .annotate(n=Count("id")).order_by("-n")[:20])
    plan = signing.dumps({"filters": filters, "subject": subject, "upto": upto},
                         salt=PLAN_SALT, compress=True)
    return {"matched": matched, "unavailable": unavailable, "targets": targets, "plan": plan}


def _open_plan(plan: str, filters: dict, subject: str | None) -> int:
    """The frozen upper id of a dry run's plan, checked against what is being started."""
    try:
        frozen = signing.loads(plan, salt=PLAN_SALT, max_age=PLAN_MAX_AGE_S)
    except signing.BadSignature:
        raise ActionError("plan: not a plan from a dry run, or older than a day: "
                          "run the dry run again") from None
    if frozen["filters"] != filters or (frozen.get("subject") or None) != (subject or None):
        raise ActionError("plan: the filters or the target differ from the dry run's")
    return int(frozen["upto"])


def start_job(user, kind: str, params, subject: str | None = None, rate=None,
              remove_original: bool = False, plan: str | None = None,
              everything: bool | None = None) -> dict:
    """Create a bulk replay or purge job for every dead letter matching the filters (as
    counted by the dry run whose ``plan`` is given, or as they stand now).

    ``everything``: the API and the CLI say whether every dead letter is meant (their
    ``all``): then no filter may be given, and without it an empty filter is refused.
    None (the page, whose dry run and confirmation name the count) leaves it to the filters.
    """
    action = f"deadletter.{kind}_bulk"
    filters = {}
    with audited(user, action, "DEAD_LETTERS", {"filters": dict(params.items()) if params else {},
                                                 "subject": subject, "rate": rate,
                                                 **({"all": everything} if everything else {})},
                 "operator") as outcome:
        filters = clean_filters(params)
        if everything is False and not filters:
            raise ActionError(f"{kind} of every dead letter: give a filter, or \"all\": true")
        if everything and filters:
            raise ActionError("\"all\": true means every dead letter: give it without filters")
        if rate not in (None, ""):
            try:
                rate = float(rate)
            except (TypeError, ValueError, OverflowError):
                raise ActionError(f"rate must be a number of messages per second, "
                                  f"not {str(rate)[:40]!r}") from None
            # NaN fails every comparison, so it is refused here too; inf is not below 1e9.
            if not 0 < rate < 1e9:
                raise ActionError("rate must be above 0 and finite (leave it empty for as fast "
                                  "as the bus acks)")
        else:
            rate = None
        if subject is not None and not isinstance(subject, str):
            raise ActionError("subject must be text")
        subject = (subject or "").strip() or None
        if subject:
            async def check(nc):
                await _target_ok(nc, subject)
            bus_sync.with_client(check)
        upto = (_open_plan(plan, filters, subject) if plan else
                DeadLetter.objects.order_by("-pk").values_list("pk", flat=True).first() or 0)
        matched = filtered(filters).filter(pk__lte=upto).count()
        job = Job.objects.create(kind=kind, total=matched, created_by=user if user.pk else None,
                                 params={"filters": filters, "subject": subject, "rate": rate,
                                         "remove_original": remove_original, "upto_id": upto})
        outcome.detail = f"job {job.id}: {matched} matched"
    record = AuditRecord.objects.filter(action=action).order_by("-id").first()
    job.params["audit_id"] = record.id if record else None
    job.save(update_fields=["params"])
    enqueue(job.id)
    return {"job": job.id, "matched": matched}


def enqueue(job_id: int) -> None:
    """Hand a job to Celery (or run it here, with LUCENT_JOBS_INLINE, as tests do)."""
    from django.conf import settings

    from . import tasks  # tasks import the job runner, which imports this module

    if settings.LUCENT_JOBS_INLINE:
        tasks.run_job(job_id)
    else:
        tasks.run_job.delay(job_id)


def cancel_job(user, job_id) -> Job:
    """Cancel a job (operator, audited): within a second, whatever its rate."""
    with audited(user, "job.cancel", str(job_id), {}, "operator") as outcome:
        try:
            job = Job.objects.get(pk=int(job_id))
        except (ValueError, TypeError, Job.DoesNotExist):
            raise NotFound(f"no job {str(job_id)[:20]!r}") from None
        if job.state in Job.FINAL:
            raise ActionError(f"job {job.pk} has ended ({job.state})")
        job.request_cancel()
        outcome.detail = f"job {job.pk}: {job.state}"
    return job


class RateLimit:
    def __init__(self, rate: float | None) -> None:
        self.interval = 1 / rate if rate else 0.0
        self.next = time.monotonic()

    async def wait(self) -> None:
        """Take the next free slot (before sleeping, so concurrent callers queue up)."""
        if not self.interval:
            return
        now = time.monotonic()
        slot = max(self.next, now)
        self.next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)

    def wait_sync(self, stop, step: float = 0.05) -> bool:
        """Sleep until the next free slot without taking it; False if ``stop()`` came first."""
        while True:
            if stop():
                return False
            left = self.next - time.monotonic()
            if left <= 0:
                return True
            time.sleep(min(step, left))


def replay_sharded(pool, shard: Shard, batch: list[tuple], params: dict,
                   limiter: RateLimit) -> list:
    """A third of a batch in this process (which also does the database work), the
    rest in the shard, at the same time; results in batch order. Rows the shard
    could not do are done here (same ids)."""
    cut = len(batch) // 3
    mine = pool.submit(replay_batch, batch[:cut], params, limiter)
    try:
        theirs = shard.replay(batch[cut:], params.get("subject"),
                              params.get("remove_original", False))
    except js.JetStreamError:
        theirs = replay_batch(batch[cut:], params, limiter)
    return mine.result() + theirs


def record_replays(job: Job, results: list, username: str) -> int:
    """Replay rows and status=replayed for the letters whose PubAck came; how many.
    (The caller holds the transaction that also moves the job's checkpoint.)

    Multi-row INSERTs rather than ``bulk_create`` (a model instance per row cost
    more than the bus work of the batch) or ``executemany`` (one statement per
    row: each gives up the GIL and waits to get it back from the bus loop, which
    is busy at the same time).
    """
    from django.db import connection

    ok = [(row, result) for row, result in results if isinstance(result, dict)]
    if not ok:
        return 0
    quote = connection.ops.quote_name
    columns = ("dead_letter_id", "job_id", "username", "subject", "msg_id", "stream", "seq",
               "duplicate", "at", "state", "generation")
    at = Replay._meta.get_field("at").get_db_prep_save(timezone.now(), connection)
    values = [(row[0], job.pk, username, r["subject"], r["msg_id"], r["stream"], r["seq"],
               r["duplicate"], at, Replay.PUBLISHED, row[5]) for row, r in ok]
    per = max(1, (connection.features.max_query_params or 65535) // len(columns))
    head = f"INSERT INTO {quote(Replay._meta.db_table)} ({', '.join(map(quote, columns))}) VALUES "
    one = "(" + ", ".join(["%s"] * len(columns)) + ")"
    with connection.cursor() as cursor:
        for start in range(0, len(values), per):
            chunk = values[start:start + per]
            cursor.execute(head + ", ".join([one] * len(chunk)),
                           [value for row in chunk for value in row])
    DeadLetter.objects.filter(pk__in=[row[0] for row, _ in ok]).update(status=DeadLetter.REPLAYED)
    return len(ok)


def replay_batch(batch: list[tuple], params: dict, limiter: RateLimit) -> list:
    """Replay a batch of (pk, dl_seq, stream, stream_seq, subject, generation) rows:
    [(row, result or ActionError)]. While the bus is away, wait and retry the whole
    batch (the ids make the retry of what already went through a no-op). No database
    access here: it runs beside the recording of the batch before."""
    async def go(nc):
        return await _replay_rows(nc, batch, params.get("subject"),
                                  params.get("remove_original", False), limiter)

    return _retrying(go)


class Shard(Helper):
    """A helper process that replays the rows it is sent (``_replay_rows`` on a bus
    connection of its own) and sends back the results; no database access. If it
    dies or fails, the caller replays those rows itself: the same ids make the
    repeat harmless."""

    TARGET = "streams.dlq:shard_handler"

    def replay(self, rows: list[tuple], subject: str | None, remove_original: bool) -> list:
        try:
            return self.call(rows, subject, remove_original)
        except HelperError as exc:
            raise js.JetStreamError(f"replay helper process: {exc}") from None


def shard_handler():
    """In the helper process: a bus connection, and the function replaying rows on it."""
    from lucent_console.bus.client import connect

    loop = asyncio.new_event_loop()
    nc = loop.run_until_complete(connect("replay-shard", retry_initial=False))
    limiter = RateLimit(None)

    def replay(rows: list[tuple], subject: str | None, remove_original: bool) -> list:
        return loop.run_until_complete(_replay_rows(nc, rows, subject, remove_original, limiter))

    replay.close = lambda: loop.run_until_complete(nc.close())
    return replay


async def _batched_reads(nc) -> bool:
    """Whether DEAD_LETTERS can be read a batch at a time: nats-server 2.11+ and
    ``allow_direct`` on the stream (``topology apply`` sets it)."""
    if not js.supports_batch_get(nc):
        return False
    info = await js.stream_info(nc, dl.STREAM)
    return bool(info["config"].get("allow_direct"))


async def read_letters(nc, seqs: list[int], batched: bool | None = None) -> dict[int, dict]:
    """The stored copies of the dead letters at ``seqs`` (DEAD_LETTERS sequences), by
    sequence; letters no longer stored are absent.

    Batched: one DIRECT.GET per run of near sequences (gaps up to GAP read through).
    Whatever that did not return (an older server, a lagging replica, a sparse
    selection) is read by STREAM.MSG.GET, IN_FLIGHT at a time.
    """
    if batched is None:
        batched = await _batched_reads(nc)
    wanted = set(seqs)
    found: dict[int, dict] = {}
    if batched and seqs:
        ordered = sorted(wanted)
        start = prev = ordered[0]
        runs = []
        for seq in ordered[1:]:
            if seq - prev > GAP:
                runs.append((start, prev))
                start = seq
            prev = seq
        runs.append((start, prev))
        for first, last in runs:
            if last - first < 8:
                continue  # a few scattered letters: cheaper one by one
            try:
                got = await js.direct_get_batch(nc, dl.STREAM, first, last, batch=BATCH)
            except js.JetStreamError:
                continue  # e.g. an older replica that ignores batches: one by one below
            for msg in got:
                if msg["seq"] in wanted:
                    found[msg["seq"]] = msg
    rest = [seq for seq in seqs if seq not in found]
    if rest:
        sem = asyncio.Semaphore(IN_FLIGHT)

        async def get(seq):
            async with sem:
                msg = await js.next_message(nc, dl.STREAM, seq)
            if msg is not None and msg["seq"] == seq:
                found[seq] = msg

        await asyncio.gather(*(get(seq) for seq in rest))
    return found


async def _replay_rows(nc, rows: list[tuple], subject: str | None, remove_original: bool,
                       limiter: RateLimit) -> list:
    """Read, publish pipelined, wait for every PubAck; [(row, result or ActionError)].

    Rows are (pk, dl_seq, stream, stream_seq, subject, generation). A letter whose
    stored copy is gone or belongs to another DEAD_LETTERS generation fails, as does
    one whose target no stream stores (ActionError; it stays); a missing PubAck or a
    JetStream not yet ready raises JetStreamError, for the caller to repeat the batch.
    """
    stored = await read_letters(nc, [row[1] for row in rows])
    current = await current_generation(nc)
    out: list = [None] * len(rows)
    plan = []
    for i, row in enumerate(rows):
        msg = stored.get(row[1])
        target = subject or (msg["headers"].get(dl.H_SUBJECT) if msg else "") or ""
        if msg is None:
            out[i] = (row, ActionError(f"dead letter {row[1]} is no longer in DEAD_LETTERS"))
        elif not same_letter(row[5], row[2], row[3], msg, current):
            out[i] = (row, ActionError("no longer available: stored in an earlier DEAD_LETTERS"))
        elif msg["headers"].get(dl.H_PAYLOAD) == "missing":
            out[i] = (row, ActionError("payload unavailable: nothing to replay"))
        elif not target:
            out[i] = (row, ActionError("the original subject is unknown: give a subject"))
        elif subjects.reserved(target, True):  # an original subject may be the bus's own
            out[i] = (row, ActionError(subjects.reserved(target, True)))
        else:
            plan.append((i, row, target, msg))
    messages = [(target, msg["data"], replay_headers(msg["headers"], row[1], target, row[5]))
                for _, row, target, msg in plan]
    acks = await js.publish_many(nc, messages, in_flight=PUB_IN_FLIGHT,
                                 before=limiter.wait if limiter.interval else None)
    unstored: dict[str, bool] = {}
    for (i, row, target, _), (_, _, headers), ack in zip(plan, messages, acks, strict=True):
        if isinstance(ack, js.NoStream):
            if target not in unstored:
                unstored[target] = not await js.streams_storing(nc, target)
            if not unstored[target]:  # a stream stores it: JetStream not ready yet
                raise js.JetStreamError(f"no PubAck from the stream storing {target!r}")
            out[i] = (row, ActionError(f"no stream stores {target!r}: the dead letter stays"))
        elif isinstance(ack, Exception):
            out[i] = (row, ActionError(str(ack)))
        else:
            out[i] = (row, {**ack, "subject": target, "msg_id": headers["Nats-Msg-Id"]})
    if remove_original:
        async def remove(row):
            try:
                await js.delete_message(nc, row[2], row[3])
            except js.JetStreamError:
                pass  # already gone (work queue, aged out): nothing to remove
        await asyncio.gather(*(remove(row) for row, result in out
                               if not isinstance(result, Exception) and row[3]))
    return out


# ------------------------------------------------------------------ replay from any stream

def stream_msg_id(stream: str, seq: int, subject: str) -> str:
    return f"replay:{stream}:{seq}:{hashlib.sha1(subject.encode()).hexdigest()[:12]}"


def start_stream_replay(user, stream: str, target: str, start_seq=None, end_seq=None,
                        start_time=None, subject_filter=None, rate=None, dry_run=False) -> dict:
    """Replay a sequence or time range of any stream to ``target`` (operator), as a job:
    same dry run, rate, exactly-once ids, progress and audit as dead-letter replays."""
    from .services import _positive_int, _valid_subject

    params = {"target": target, "start_seq": start_seq, "end_seq": end_seq,
              "start_time": start_time, "subject": subject_filter, "rate": rate}
    with audited(user, "stream.replay", stream, {k: v for k, v in params.items() if v not in (None, "")},
                 "operator") as outcome:
        target = target.strip() if isinstance(target, str) else ""
        if not subjects.is_valid(target, wildcards=False):
            raise ActionError(f"target: {target[:80]!r} is not a subject one can publish to")
        subjects.refuse_reserved(target, replay=True)
        first_arg = _positive_int(start_seq, "start sequence", 1)
        last_arg = _positive_int(end_seq, "end sequence", 1)
        if subject_filter is not None and not isinstance(subject_filter, str):
            raise ActionError("subject must be text")
        flt = _valid_subject(subject_filter) or ">"
        try:
            rate = float(rate) if rate not in (None, "") else None
        except (TypeError, ValueError, OverflowError):
            raise ActionError(f"rate must be a number, not {str(rate)[:40]!r}") from None
        # NaN fails every comparison: `not 0 < rate` refuses it as it refuses inf.
        if rate is not None and not 0 < rate < 1e9:
            raise ActionError("rate must be above 0 and finite")
        when = _time(start_time, "start time") if start_time not in (None, "") else None

        async def plan(nc):
            try:
                info = await js.stream_info(nc, stream)
            except js.JetStreamError as exc:
                if exc.err_code == js.STREAM_NOT_FOUND:
                    raise NotFound(f"no stream named {stream!r}") from None
                raise
            await _target_ok(nc, target)
            if stream in await js.streams_storing(nc, target):
                raise ActionError(f"{stream} stores {target!r} itself: replay into another stream")
            state = info["state"]
            first = max(first_arg or state["first_seq"], state["first_seq"])
            last = min(last_arg or state["last_seq"], state["last_seq"])
            if when is not None:
                first = max(first, await js.message_time_search(nc, stream, first, last, when))
            return first, last, state

        first, last, state = bus_sync.with_client(plan)
        if last < first:
            raise ActionError(f"nothing in {stream} between sequences {first} and {last}")
        upper = last - first + 1
        matched = min(upper, state["messages"])
        exact = flt == ">" and not state.get("num_deleted")
        if dry_run:
            outcome.detail = f"dry run: up to {matched} from {first}..{last} to {target}"
            return {"dry_run": True, "matched": matched, "exact": exact, "first_seq": first,
                    "last_seq": last, "targets": [{"subject": target, "n": matched}]}
        job = Job.objects.create(kind="stream_replay", total=matched, last_id=first - 1,
                                 created_by=user if getattr(user, "pk", None) else None,
                                 params={"stream": stream, "last_seq": last, "filter": flt,
                                         "subject": target, "rate": rate})
        outcome.detail = f"job {job.id}: up to {matched} from {stream} {first}..{last} to {target}"
    record = AuditRecord.objects.filter(action="stream.replay").order_by("-id").first()
    job.params["audit_id"] = record.id if record else None
    job.save(update_fields=["params"])
    enqueue(job.id)
    return {"job": job.id, "matched": matched}


def stream_replay_batch(job: Job, owner: str, params: dict, limiter: RateLimit) -> bool:
    """Replay the next batch of a stream range; False when the range is done."""
    stream, last, target = params["stream"], params["last_seq"], params["subject"]
    if job.last_id >= last:
        return False

    async def go(nc):
        msgs, position = [], job.last_id + 1
        while len(msgs) < BATCH and position <= last:
            msg = await js.next_message(nc, stream, position, params.get("filter") or ">")
            if msg is None or msg["seq"] > last:
                position = last + 1
                break
            msgs.append(msg)
            position = msg["seq"] + 1
        sem = asyncio.Semaphore(IN_FLIGHT)

        async def one(msg):
            async with sem:
                await limiter.wait()
                headers = {k: v for k, v in msg["headers"].items()
                           if not k.startswith("Nats-") and k != "Status"}
                headers.update({"Nats-Msg-Id": stream_msg_id(stream, msg["seq"], target),
                                "Lucent-Replay-Of": f"{stream}:{msg['seq']}"})
                return await js.publish(nc, target, msg["data"], headers)

        results = await asyncio.gather(*(one(m) for m in msgs), return_exceptions=True)
        return results, position - 1

    results, checkpoint = _retrying(go)
    failed = sum(1 for r in results if isinstance(r, Exception))
    return job.advance(owner, done=job.done + len(results) - failed, failed=job.failed + failed,
                       last_id=checkpoint)


def _retrying(go):
    """Run ``go(nc)``; while the bus is away, wait and run it again (up to BUS_RETRY_S).
    Callers make ``go`` safe to repeat: its publishes carry deterministic ids."""
    deadline = time.monotonic() + BUS_RETRY_S
    while True:
        try:
            if not bus_sync.run(_connected):
                raise ConnectionError("bus unreachable")
            return bus_sync.with_client(go)
        except (ConnectionError, OSError, js.JetStreamError) as exc:
            if time.monotonic() > deadline:
                raise ActionError(f"bus unavailable for {BUS_RETRY_S}s: {exc}") from exc
            time.sleep(1)


async def _connected() -> bool:
    try:
        nc = await web_client.get()
    except Exception:
        return False
    return nc.is_connected


def require_operator(user) -> None:
    if not has_role(user, "operator"):
        raise Refused("this needs the operator role")
