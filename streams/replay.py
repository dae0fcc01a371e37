"""Replaying a sequence or time range of any stream into another subject, as a job
(kind ``stream_replay``, run by the kernel's job runner: ``lucent_console/jobs.py``),
and the check every replay makes of its target (dead-letter replays too).
"""

from __future__ import annotations

import asyncio
import hashlib

from kernel import times
from kernel.actions import ActionError, NotFound, audited, refuse_reserved
from kernel.jobs import LeaseKeeper, RateLimit, end_state, enqueue, retrying
from kernel.models import AuditRecord, Job
from lucent_bus import jetstream as js
from lucent_bus import subjects
from lucent_bus import sync as bus_sync

from .browser import positive_int, valid_subject

BATCH = 1000
IN_FLIGHT = 256  # publishes of one batch at once


async def check_target(nc, subject: str) -> None:
    """A replay's target: a subject one can publish to, not the bus's own nor the dead
    letters themselves, and stored by a stream (so a PubAck says it arrived)."""
    if not subjects.is_valid(subject, wildcards=False):
        raise ActionError(f"{subject[:80]!r} is not a subject one can publish to")
    # The bus's own subjects ($JS, $KV, inboxes, the console's) and the dead letters.
    refuse_reserved(subject, replay=True)
    if not await js.streams_storing(nc, subject):
        raise ActionError(f"no stream stores {subject!r}: nothing is sent")



def stream_msg_id(stream: str, seq: int, subject: str) -> str:
    return f"replay:{stream}:{seq}:{hashlib.sha1(subject.encode()).hexdigest()[:12]}"



def _checked(target, start_seq, end_seq, subject_filter, rate, start_time) -> tuple:
    """A stream replay's arguments as it uses them, or ActionError naming the bad one."""
    target = target.strip() if isinstance(target, str) else ""
    if not subjects.is_valid(target, wildcards=False):
        raise ActionError(f"target: {target[:80]!r} is not a subject one can publish to")
    refuse_reserved(target, replay=True)
    first_arg = positive_int(start_seq, "start sequence", 1)
    last_arg = positive_int(end_seq, "end sequence", 1)
    if subject_filter is not None and not isinstance(subject_filter, str):
        raise ActionError("subject must be text")
    flt = valid_subject(subject_filter) or ">"
    try:
        rate = float(rate) if rate not in (None, "") else None
    except (TypeError, ValueError, OverflowError):
        raise ActionError(f"rate must be a number, not {str(rate)[:40]!r}") from None
    # NaN fails every comparison: `not 0 < rate` refuses it as it refuses inf.
    if rate is not None and not 0 < rate < 1e9:
        raise ActionError("rate must be above 0 and finite")
    when = times.parse(start_time, "start time") if start_time not in (None, "") else None
    return target, first_arg, last_arg, flt, rate, when


def start_stream_replay(user, stream: str, target: str, start_seq=None, end_seq=None,
                        start_time=None, subject_filter=None, rate=None, dry_run=False) -> dict:
    """Replay a sequence or time range of any stream to ``target`` (operator), as a job:
    same dry run, rate, exactly-once ids, progress and audit as dead-letter replays."""

    params = {"target": target, "start_seq": start_seq, "end_seq": end_seq,
              "start_time": start_time, "subject": subject_filter, "rate": rate}
    with audited(user, "stream.replay", stream, {k: v for k, v in params.items() if v not in (None, "")},
                 "operator") as outcome:
        target, first_arg, last_arg, flt, rate, when = _checked(
            target, start_seq, end_seq, subject_filter, rate, start_time)

        async def plan(nc):
            try:
                info = await js.stream_info(nc, stream)
            except js.JetStreamError as exc:
                if exc.err_code == js.STREAM_NOT_FOUND:
                    raise NotFound(f"no stream named {stream!r}") from None
                raise
            await check_target(nc, target)
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

    results, checkpoint = retrying(go)
    failed = sum(1 for r in results if isinstance(r, Exception))
    return job.advance(owner, done=job.done + len(results) - failed, failed=job.failed + failed,
                       last_id=checkpoint)


def run_stream_replay(job: Job, owner: str, keeper: LeaseKeeper) -> str | None:
    """The job runner's handler for ``stream_replay`` jobs (registered in apps.py)."""
    limiter = RateLimit(job.params.get("rate"))
    while not keeper.should_stop():
        if not stream_replay_batch(job, owner, job.params, limiter):
            break
    return end_state(keeper)
