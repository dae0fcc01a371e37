"""The dead-letter service layer: what pages, API, CLI, admin and tasks call.

Replay, exactly once: each replay publishes with a ``Nats-Msg-Id`` derived from
the dead letter and the target subject, waits for the target stream's PubAck,
and only then marks the dead letter replayed. A retry after a crash, a double
click or two operators at once publishes the same id, which the target stream
drops within its duplicate window (a PubAck with ``duplicate: true``).
Bulk replays and purges are ``Job`` rows run by Celery (``run_job``), in batches,
with a checkpoint (``last_id``) after each: a job stopped halfway (worker or
bus gone) resumes from its checkpoint, and the replayed batch that was in
flight is deduplicated by its ids.
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
from lucent_console.models import AuditRecord
from lucent_console.roles import has_role

from . import subjects
from .models import DeadLetter, Job, Replay

FILTERS = ("stream", "consumer", "subject", "message_type", "correlation_id", "reason", "status",
           "since", "until", "q")
BATCH = 1000
IN_FLIGHT = 256
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
        if job.kind == "purge":
            _purge_letters(batch)
            done, failed, replays = len(batch), 0, []
        else:
            done, failed, replays = _replay_batch(job, batch, params, limiter)
        Replay.objects.bulk_create(replays)
        DeadLetter.objects.filter(pk__in=[r.dead_letter_id for r in replays]).update(
            status=DeadLetter.REPLAYED)
        Job.objects.filter(pk=job.pk).update(done=job.done + done, failed=job.failed + failed,
                                             last_id=batch[-1].pk)


def _replay_batch(job: Job, batch: list[DeadLetter], params: dict, limiter: RateLimit):
    """Replay a batch; while the bus is away, wait and retry the whole batch (the ids
    make the retry of what already went through a no-op)."""
    async def go(nc):
        sem = asyncio.Semaphore(IN_FLIGHT)

        async def one(letter):
            async with sem:
                await limiter.wait()
                try:
                    return letter, await _replay_one(nc, letter.dl_seq, params.get("subject"),
                                                     params.get("remove_original", False),
                                                     (letter.stream, letter.stream_seq))
                except ActionError as exc:
                    return letter, exc

        return await asyncio.gather(*(one(x) for x in batch))

    results = _retrying(go)
    replays, failed = [], 0
    for letter, result in results:
        if isinstance(result, Exception):
            failed += 1
            continue
        replays.append(Replay(dead_letter=letter, job=job, subject=result["subject"],
                              msg_id=result["msg_id"], stream=result["stream"], seq=result["seq"],
                              duplicate=result["duplicate"],
                              username=job.created_by.username if job.created_by else ""))
    return len(replays), failed, replays


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
