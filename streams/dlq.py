"""The dead-letter service layer: what pages, API, CLI, admin and tasks call.

Replay, exactly once: each replay publishes with a ``Nats-Msg-Id`` derived from
the dead letter and the target subject, waits for the target stream's PubAck,
and only then marks the dead letter replayed. A retry after a crash, a double
click or two operators at once publishes the same id, which the target stream
drops within its duplicate window (a PubAck with ``duplicate: true``).
Bulk replays and purges are ``Job`` rows run by Celery (``run_job``), in batches,
with a checkpoint (``last_id``) after each: a job stopped halfway (worker or
bus gone) resumes from its checkpoint, and the replayed batch that was in
flight is deduplicated by its ids. A bulk replay reads DEAD_LETTERS a batch at
a time (batched DIRECT.GET on nats-server 2.11+, one STREAM.MSG.GET per letter
before), publishes the batch pipelined, and records a batch while the next is
on the bus (``_run_replay``).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from datetime import datetime

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
    try:
        msg = bus_sync.with_client(js.next_message, dl.STREAM, letter.dl_seq)
    except Exception as exc:
        return {"available": False, "why": f"cannot read DEAD_LETTERS: {exc}"}
    if msg is None or msg["seq"] != letter.dl_seq:
        return {"available": False, "why": "no longer in DEAD_LETTERS"}
    return {"available": letter.payload_available, "headers": msg["headers"], "data": msg["data"],
            "decoded": envelope.decode(msg["data"], msg["headers"]),
            "why": "" if letter.payload_available else
            "payload unavailable: the original was gone when the failure was captured"}


# ------------------------------------------------------------------ replay core

def replay_msg_id(letter_seq: int, subject: str) -> str:
    return f"replay:{letter_seq}:{hashlib.sha1(subject.encode()).hexdigest()[:12]}"


def replay_headers(stored: dict, letter_seq: int, subject: str) -> dict:
    headers = {k: v for k, v in stored.items()
               if not k.startswith(("Lucent-DL-", "Nats-")) and k != "Status"}
    headers["Nats-Msg-Id"] = replay_msg_id(letter_seq, subject)
    headers["Lucent-Replay-Of"] = str(letter_seq)
    return headers


async def _target_ok(nc, subject: str) -> None:
    if not subjects.is_valid(subject, wildcards=False):
        raise ActionError(f"{subject[:80]!r} is not a subject one can publish to")
    if subject.startswith(dl.SUBJECT_PREFIX + "."):
        raise ActionError("replaying into the dead letters themselves is refused")
    if not await js.streams_storing(nc, subject):
        raise ActionError(f"no stream stores {subject!r}: the dead letter stays where it is")


async def _replay_one(nc, seq: int, subject: str | None, remove_original: bool,
                      source: tuple[str, int | None]) -> dict:
    """Publish one dead letter (DEAD_LETTERS seq) again; returns the PubAck and target."""
    msg = await js.next_message(nc, dl.STREAM, seq)
    if msg is None or msg["seq"] != seq:
        raise ActionError(f"dead letter {seq} is no longer in DEAD_LETTERS")
    if msg["headers"].get(dl.H_PAYLOAD) == "missing":
        raise ActionError("payload unavailable: nothing to replay")
    target = subject or msg["headers"].get(dl.H_SUBJECT) or ""
    if not target:
        raise ActionError("the original subject is unknown: give a subject")
    ack = await js.publish(nc, target, msg["data"], replay_headers(msg["headers"], seq, target))
    if remove_original and source[1]:
        try:
            await js.delete_message(nc, source[0], source[1])
        except js.JetStreamError:
            pass  # already gone (work queue, aged out): nothing to remove
    return {**ack, "subject": target, "msg_id": replay_msg_id(seq, target)}


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
            return await _replay_one(nc, letter.dl_seq, target, remove_original,
                                     (letter.stream, letter.stream_seq))

        result = bus_sync.with_client(go)
        Replay.objects.create(dead_letter=letter, username=getattr(user, "username", ""),
                              subject=result["subject"], msg_id=result["msg_id"],
                              stream=result["stream"], seq=result["seq"],
                              duplicate=result["duplicate"])
        letter.status = DeadLetter.REPLAYED
        letter.save(update_fields=["status"])
        outcome.detail = (f"to {result['subject']}: {result['stream']} seq {result['seq']}"
                          + (" (duplicate: already replayed)" if result["duplicate"] else ""))
    return {"status": "replayed", "id": letter.id, **result}


def purge_one(user, dl_id) -> dict:
    with audited(user, "deadletter.purge", str(dl_id), {}, "operator") as outcome:
        letter = get(dl_id)
        _purge_letters([letter])
        outcome.detail = f"purged dead letter {letter.dl_seq}"
    return {"status": "purged", "id": letter.id}


def _purge_letters(letters: list[DeadLetter]) -> int:
    async def go(nc):
        for letter in letters:
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
    qs = filtered(filters)
    matched = qs.count()
    unavailable = qs.filter(payload_available=False).count()
    if subject:
        targets = [{"subject": subject, "n": matched - unavailable}]
    else:
        targets = list(qs.filter(payload_available=True).order_by().values("subject")
                       .annotate(n=Count("id")).order_by("-n")[:20])
    return {"matched": matched, "unavailable": unavailable, "targets": targets}


def start_job(user, kind: str, params, subject: str | None = None, rate=None,
              remove_original: bool = False) -> dict:
    """Create a bulk replay or purge job for every dead letter matching the filters."""
    action = f"deadletter.{kind}_bulk"
    filters = {}
    with audited(user, action, "DEAD_LETTERS", {"filters": dict(params.items()) if params else {},
                                                 "subject": subject, "rate": rate},
                 "operator") as outcome:
        filters = clean_filters(params)
        if rate not in (None, ""):
            try:
                rate = float(rate)
            except ValueError:
                raise ActionError(f"rate must be a number of messages per second, not {rate!r}") from None
            if rate <= 0:
                raise ActionError("rate must be above 0 (leave it empty for as fast as the bus acks)")
        else:
            rate = None
        subject = (subject or "").strip() or None
        if subject:
            async def check(nc):
                await _target_ok(nc, subject)
            bus_sync.with_client(check)
        matched = filtered(filters).count()
        job = Job.objects.create(kind=kind, total=matched, created_by=user if user.pk else None,
                                 params={"filters": filters, "subject": subject, "rate": rate,
                                         "remove_original": remove_original})
        outcome.detail = f"job {job.id}: {matched} matched"
    record = AuditRecord.objects.filter(action=action).order_by("-id").first()
    job.params["audit_id"] = record.id if record else None
    job.save(update_fields=["params"])
    enqueue(job.id)
    return {"job": job.id, "matched": matched}


def enqueue(job_id: int) -> None:
    """Hand a job to Celery (or run it here, with LUCENT_JOBS_INLINE, as tests do)."""
    from django.conf import settings

    from . import tasks

    if settings.LUCENT_JOBS_INLINE:
        tasks.run_job(job_id)
    else:
        tasks.run_job.delay(job_id)


def cancel_job(user, job_id) -> Job:
    with audited(user, "job.cancel", str(job_id), {}, "operator"):
        try:
            job = Job.objects.get(pk=int(job_id))
        except (ValueError, Job.DoesNotExist):
            raise NotFound(f"no job {job_id!r}") from None
        Job.objects.filter(pk=job.pk).update(cancel_requested=True)
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


def run_job(job_id: int) -> bool:
    """Run (or resume) a job to its end. Returns whether it did work."""
    job = Job.objects.get(pk=job_id)
    if job.state in (Job.DONE, Job.CANCELLED, Job.FAILED):
        return False
    Job.objects.filter(pk=job.pk).update(state=Job.RUNNING)
    params = job.params
    limiter = RateLimit(params.get("rate"))
    if job.kind == "replay":
        return _run_replay(job, params, limiter)
    while True:
        job.refresh_from_db()
        if job.cancel_requested:
            return _finish(job, Job.CANCELLED)
        if job.kind == "stream_replay":
            if not _stream_replay_batch(job, params, limiter):
                return _finish(job, Job.DONE)
            continue
        batch = list(filtered(params["filters"]).filter(pk__gt=job.last_id).order_by("pk")
                     .only("id", "dl_seq", "stream", "stream_seq")[:BATCH])
        if not batch:
            return _finish(job, Job.DONE)
        _purge_letters(batch)
        Job.objects.filter(pk=job.pk).update(done=job.done + len(batch), last_id=batch[-1].pk)


def _next_letters(filters: dict, after: int) -> list[tuple]:
    """The next batch of a replay job: (pk, dl_seq, stream, stream_seq) rows."""
    return list(filtered(filters).filter(pk__gt=after).order_by("pk")
                .values_list("pk", "dl_seq", "stream", "stream_seq")[:BATCH])


def _run_replay(job: Job, params: dict, limiter: RateLimit) -> bool:
    """A bulk replay, the bus work of one batch overlapping the database work of the
    one before.

    Steps per batch: in a helper thread, read the stored copies of BATCH letters
    and publish them pipelined, waiting for every PubAck (``_replay_batch``; for
    a large unthrottled job, two thirds of the batch go to a ``Shard`` process at
    the same time); meanwhile this thread selects the batch after it and records
    the batch before it (Replay rows, status=replayed, progress and the
    checkpoint ``last_id``, in one transaction). At most one batch is published and not yet
    recorded. If the job stops halfway (worker killed, bus gone for longer than
    BUS_RETRY_S), the checkpoint is the last recorded batch: the batch after it
    is published again on resume with the same ``Nats-Msg-Id``s, which the
    target stream drops as duplicates, and then recorded. Cancelling stops
    before the next batch is started; the batch in flight is still recorded.
    """
    from concurrent.futures import ThreadPoolExecutor

    from django.db import transaction

    if job.cancel_requested:
        return _finish(job, Job.CANCELLED)
    username = job.created_by.username if job.created_by_id else ""
    filters = params["filters"]
    done, failed = job.done, job.failed
    shard = (Shard.start() if SHARDS > 1 and not limiter.interval
             and job.total - job.done - job.failed >= SHARD_MIN else None)
    with ThreadPoolExecutor(2, thread_name_prefix="lucent-replay") as pool:
        def submit(rows):
            if shard is None or not shard.alive:
                return pool.submit(_replay_batch, job, rows, params, limiter)
            return pool.submit(_replay_sharded, pool, shard, job, rows, params, limiter)

        try:
            batch = _next_letters(filters, job.last_id)
            flight = submit(batch) if batch else None
            while flight is not None:
                following = _next_letters(filters, batch[-1][0])  # while batch is on the bus
                results = flight.result()  # raises when the bus stayed away: the job fails
                cancelled = Job.objects.filter(pk=job.pk, cancel_requested=True).exists()
                flight = submit(following) if following and not cancelled else None
                with transaction.atomic():  # the rows and the checkpoint, or neither
                    ok = _record_replays(job, results, username)
                    done, failed = done + ok, failed + len(results) - ok
                    Job.objects.filter(pk=job.pk).update(done=done, failed=failed,
                                                         last_id=batch[-1][0])
                if cancelled and following:
                    return _finish(job, Job.CANCELLED)
                batch = following
        finally:
            if shard is not None:
                shard.stop()
    return _finish(job, Job.DONE)


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


def _replay_sharded(pool, shard: Shard, job: Job, batch: list[tuple], params: dict,
                    limiter: RateLimit) -> list:
    """A third of a batch in this process (which also does the database work), the
    rest in the shard, at the same time; results in batch order. Rows the shard
    could not do are done here (same ids)."""
    cut = len(batch) // 3
    mine = pool.submit(_replay_batch, job, batch[:cut], params, limiter)
    try:
        theirs = shard.replay(batch[cut:], params.get("subject"),
                              params.get("remove_original", False))
    except js.JetStreamError:
        theirs = _replay_batch(job, batch[cut:], params, limiter)
    return mine.result() + theirs


def _record_replays(job: Job, results: list, username: str) -> int:
    """Replay rows and status=replayed for the letters whose PubAck came; how many.
    (The caller holds the transaction that also moves the job's checkpoint.)

    Multi-row INSERTs rather than ``bulk_create`` (a model instance per row cost
    more than the bus work of the batch) or ``executemany`` (one statement per
    row: each gives up the GIL and waits to get it back from the bus loop, which
    is busy at the same time).
    """
    from django.db import connection

    ok = [(row, result) for row, result in results if not isinstance(result, Exception)]
    if not ok:
        return 0
    quote = connection.ops.quote_name
    columns = ("dead_letter_id", "job_id", "username", "subject", "msg_id", "stream", "seq",
               "duplicate", "at")
    at = Replay._meta.get_field("at").get_db_prep_save(timezone.now(), connection)
    values = [(row[0], job.pk, username, r["subject"], r["msg_id"], r["stream"], r["seq"],
               r["duplicate"], at) for row, r in ok]
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


def _replay_batch(job: Job, batch: list[tuple], params: dict, limiter: RateLimit) -> list:
    """Replay a batch of (pk, dl_seq, stream, stream_seq) rows: [(row, result or
    ActionError)]. While the bus is away, wait and retry the whole batch (the ids
    make the retry of what already went through a no-op). No database access here:
    it runs beside the recording of the batch before."""
    async def go(nc):
        return await _replay_rows(nc, batch, params.get("subject"),
                                  params.get("remove_original", False), limiter)

    return _retrying(go)


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

    A letter whose target no stream stores fails (ActionError) and stays; a
    missing PubAck or a JetStream not yet ready raises JetStreamError, for the
    caller to repeat the whole batch.
    """
    stored = await read_letters(nc, [row[1] for row in rows])
    out: list = [None] * len(rows)
    plan = []
    for i, row in enumerate(rows):
        msg = stored.get(row[1])
        target = subject or (msg["headers"].get(dl.H_SUBJECT) if msg else "") or ""
        if msg is None:
            out[i] = (row, ActionError(f"dead letter {row[1]} is no longer in DEAD_LETTERS"))
        elif msg["headers"].get(dl.H_PAYLOAD) == "missing":
            out[i] = (row, ActionError("payload unavailable: nothing to replay"))
        elif not target:
            out[i] = (row, ActionError("the original subject is unknown: give a subject"))
        else:
            plan.append((i, row, target, msg))
    messages = [(target, msg["data"], replay_headers(msg["headers"], row[1], target))
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
        target = (target or "").strip()
        first_arg = _positive_int(start_seq, "start sequence", 1)
        last_arg = _positive_int(end_seq, "end sequence", 1)
        flt = _valid_subject(subject_filter) or ">"
        rate = float(rate) if rate not in (None, "") else None
        if rate is not None and rate <= 0:
            raise ActionError("rate must be above 0")
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


def _stream_replay_batch(job: Job, params: dict, limiter: RateLimit) -> bool:
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
    Job.objects.filter(pk=job.pk).update(done=job.done + len(results) - failed,
                                         failed=job.failed + failed, last_id=checkpoint)
    return True


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


def _finish(job: Job, state: str) -> bool:
    job.refresh_from_db()
    Job.objects.filter(pk=job.pk).update(state=state, finished_at=timezone.now())
    audit_id = job.params.get("audit_id")
    if audit_id:
        AuditRecord.objects.filter(pk=audit_id).update(
            detail=f"job {job.id} {state}: {job.total} matched, {job.done} succeeded, "
                   f"{job.failed} failed")
    return True


def job_failed(job_id: int, error: str) -> None:
    Job.objects.filter(pk=job_id).update(state=Job.FAILED, error=error[:2000],
                                         finished_at=timezone.now())


def require_operator(user) -> None:
    if not has_role(user, "operator"):
        raise Refused("this needs the operator role")
