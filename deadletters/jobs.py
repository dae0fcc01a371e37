"""Running bulk jobs (dead-letter replay and purge, stream replay): once, to the end.

One runner, ever: ``run_job`` claims the job with a lease (``Job.claim``) that a
``LeaseKeeper`` thread renews while the job runs; it also reads the job's row every
0.25 s, so a cancel takes effect within a second at any rate. A runner killed
(worker gone, kill -9) stops renewing; when the lease has run out, ``resume_stale``
(every few seconds from beat) queues the job again and the next runner resumes it
from its checkpoint. Every write of progress is fenced by the lease.

Exactly once beyond the target's duplicate window (dead-letter replays): before a
batch is published, the job records it as *publishing* (the batch's range and, for
each target stream, its generation and last sequence) in the same row as its
checkpoint; the batch's results, the checkpoint and the removal of that record are
one transaction. A runner that resumes a job with a publishing record reads the
target streams from the recorded sequence on and finds which of the batch's
``Nats-Msg-Id``s arrived; it publishes only the others. Where a target cannot be
checked (``no_ack``, work-queue or interest retention, or a stream declared again
since) a letter of that batch becomes "outcome unknown" for an operator to decide,
never a silent republish. The ``Nats-Msg-Id`` stays as a second guard.
"""


from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from django.db import transaction

from kernel.jobs import LeaseKeeper, RateLimit, end_state
from kernel.models import Job
from lucent_bus import deadletters as dl
from lucent_bus import jetstream as js
from lucent_bus import sync as bus_sync

from . import plans, replay, search
from .models import DeadLetter, Replay

log = logging.getLogger("lucent.jobs")

CHUNK_S = 0.25  # a rate-limited job publishes (and shows progress) in slices this long



def run_purge(job: Job, owner: str, keeper: LeaseKeeper) -> str | None:
    filters, upto = job.params["filters"], job.params.get("upto_id")
    while not keeper.should_stop():
        batch = list(_plan(filters, upto).filter(pk__gt=job.last_id).order_by("pk")
                     .only("id", "dl_seq", "generation", "stream", "stream_seq")[:replay.BATCH])
        if not batch:
            break
        plans.purge_letters(batch)
        if not job.advance(owner, done=job.done + len(batch), last_id=batch[-1].pk):
            return None
    return end_state(keeper)



def _plan(filters: dict, upto: int | None):
    """The letters of a job: its filters, frozen at the dry run (or the start) by id."""
    qs = search.filtered(filters)
    return qs.filter(pk__lte=upto) if upto else qs

ROW = ("pk", "dl_seq", "stream", "stream_seq", "subject", "generation")



def _letters(filters: dict, upto: int | None, after: int, limit: int,
             through: int | None = None) -> list[tuple]:
    qs = _plan(filters, upto).filter(pk__gt=after)
    if through is not None:
        qs = qs.filter(pk__lte=through)
    return list(qs.order_by("pk").values_list(*ROW)[:limit])



class Targets:
    """Which stream stores each target subject, and whether a resumed job can check in it
    what arrived (a limits stream that acks: its messages stay to be read)."""

    def __init__(self) -> None:
        self.stream_of: dict[str, str | None] = {}

    def subject_for(self, row: tuple, params: dict) -> str:
        return params.get("subject") or row[4] or ""

    async def positions(self, nc, subjects: set[str]) -> dict[str, dict]:
        """{stream: {"seq": last sequence, "created": generation, "checkable": bool}}."""
        for subject in subjects - set(self.stream_of):
            try:
                names = await js.streams_storing(nc, subject) if subject else []
            except js.JetStreamError:
                names = []
            self.stream_of[subject] = names[0] if names else None
        out = {}
        for stream in {self.stream_of[s] for s in subjects} - {None}:
            info = await js.stream_info(nc, stream)
            config = info["config"]
            out[stream] = {"seq": info["state"]["last_seq"], "created": dl.generation(info),
                           "checkable": config.get("retention", "limits") == "limits"
                           and not config.get("no_ack")}
        return out



def run_replay(job: Job, owner: str, keeper: LeaseKeeper) -> str | None:
    """A bulk replay: batches read, recorded as publishing, published pipelined, recorded.

    For unthrottled jobs the bus work of one batch overlaps the database work of the
    one before (at most two batches published and not yet recorded, each with its
    publishing record). A rate-limited job works in slices of CHUNK_S seconds of its
    rate, so its progress moves per letter at low rates and a cancel waits for no
    more than one slice.
    """
    params, targets = job.params, Targets()
    rate = params.get("rate")
    size = replay.BATCH if not rate else max(1, min(replay.BATCH, int(rate * CHUNK_S)))
    limiter = RateLimit(rate)
    username = job.created_by.username if job.created_by_id else ""
    if params.get("publishing") and not _resolve(job, owner, targets, username, limiter):
        return None
    filters, upto = params["filters"], params.get("upto_id")
    shard = (replay.Shard.start() if replay.SHARDS > 1 and not rate
             and job.total - job.done - job.failed >= replay.SHARD_MIN else None)
    with ThreadPoolExecutor(2, thread_name_prefix="lucent-replay") as pool:
        def launch(rows):
            if not _mark_publishing(job, owner, targets, rows):
                return None
            if shard is not None and shard.alive:
                return pool.submit(replay.replay_sharded, pool, shard, rows, params, limiter)
            return pool.submit(_publish, rows, params, limiter, keeper)

        try:
            batch = _letters(filters, upto, job.last_id, size)
            flight = launch(batch) if batch and not keeper.should_stop() else None
            while flight is not None:
                following = _letters(filters, upto, batch[-1][0], size)  # while batch is on the bus
                results = flight.result()  # raises when the bus stayed away: the job fails
                flight = (launch(following) if following and not keeper.should_stop()
                          and results is not None else None)
                if results is None:  # cancelled before the slice began: nothing was sent
                    _unmark(job, owner, batch)
                    break
                if not _record(job, owner, batch, results, username):
                    return None
                batch = following
        finally:
            if shard is not None:
                shard.stop()
    return end_state(keeper)



def _publish(rows: list[tuple], params: dict, limiter, keeper: LeaseKeeper):
    """Publish one batch (in a pool thread, no database): None if cancelled before it began.
    A rate-limited slice first waits for its rate slot here, where a cancel can stop it."""
    if limiter.interval and not limiter.wait_sync(keeper.should_stop):
        return None
    return replay.replay_batch(rows, params, limiter)



def _marker(rows: list[tuple], positions: dict) -> dict:
    return {"after": rows[0][0] - 1, "through": rows[-1][0], "targets": positions}



def _mark_publishing(job: Job, owner: str, targets: Targets, rows: list[tuple]) -> bool:
    """Record the batch as publishing, with each target stream's position, before sending."""
    subjects = {targets.subject_for(row, job.params) for row in rows}
    positions = bus_sync.with_client(targets.positions, subjects)
    params = {**job.params, "publishing": [*job.params.get("publishing", []),
                                           _marker(rows, positions)]}
    return job.advance(owner, params=params)



def _without(job: Job, rows: list[tuple]) -> dict:
    through = rows[-1][0]
    return {**job.params, "publishing": [m for m in job.params.get("publishing", [])
                                         if m["through"] != through]}



def _unmark(job: Job, owner: str, rows: list[tuple]) -> None:
    job.advance(owner, params=_without(job, rows))



def _record(job: Job, owner: str, rows: list[tuple], results: list, username: str) -> bool:
    """The batch's Replay rows, statuses, progress and checkpoint, and the removal of its
    publishing record: all in one transaction, or none (lease lost: another runner has it)."""
    with transaction.atomic():
        ok = replay.record_replays(job, results, username)
        unknown = [row for row, result in results if result == "unknown"]
        if unknown:
            _record_unknown(job, unknown, username)
        failed = len(results) - ok - len(unknown)
        if not job.advance(owner, done=job.done + ok, failed=job.failed + failed,
                           unknown=job.unknown + len(unknown), last_id=rows[-1][0],
                           params=_without(job, rows)):
            transaction.set_rollback(True)
            return False
    return True



def _record_unknown(job: Job, rows: list[tuple], username: str) -> None:
    Replay.objects.bulk_create([
        Replay(dead_letter_id=row[0], job=job, username=username, subject=row[4] or "",
               msg_id="", stream="", seq=None, state=Replay.UNKNOWN, generation=row[5])
        for row in rows])
    DeadLetter.objects.filter(pk__in=[row[0] for row in rows]).update(status=DeadLetter.UNKNOWN)



def _resolve(job: Job, owner: str, targets: Targets, username: str, limiter) -> bool:
    """A runner died with batches recorded as publishing: find in each target stream what
    arrived, mark what cannot be known, publish the rest (the record stays until then)."""
    for marker in list(job.params.get("publishing", [])):
        rows = _letters(job.params["filters"], job.params.get("upto_id"), marker["after"],
                        replay.BATCH * 2, through=marker["through"])
        if not rows:
            if not job.advance(owner, params={**job.params, "publishing": [
                    m for m in job.params["publishing"] if m is not marker]}):
                return False
            continue
        found, unknown, again = _what_arrived(job.params, targets, marker, rows)
        results = [(row, found[row[0]]) for row in rows if row[0] in found]
        results += [(row, "unknown") for row in unknown]
        if again:
            results += replay.replay_batch(again, job.params, limiter)
        log.warning("job %s resumed: %d letters found in their target, %d outcome unknown, "
                    "%d published again", job.pk, len(found), len(unknown), len(again))
        order = {row[0]: i for i, row in enumerate(rows)}
        results.sort(key=lambda pair: order[pair[0][0]])
        if not _record(job, owner, rows, results, username):
            return False
    return True



def _what_arrived(params: dict, targets: Targets, marker: dict, rows: list[tuple]):
    """Split a publishing batch: {pk: result} found in their target stream, rows whose
    outcome cannot be known, rows to publish again."""
    expected = {}
    for row in rows:
        subject = targets.subject_for(row, params)
        expected[row[0]] = (subject, replay.replay_msg_id(row[1], subject, row[5]))

    async def look(nc):
        subjects = {subject for subject, _ in expected.values()}
        now = await targets.positions(nc, subjects)
        seen: dict[str, dict] = {}
        for stream, was in marker["targets"].items():
            cur = now.get(stream)
            if cur is None or not was["checkable"] or cur["created"] != was["created"]:
                continue
            seen[stream] = await _ids_in(nc, stream, was["seq"] + 1, cur["seq"])
        return seen

    seen = bus_sync.with_client(look)
    found, unknown, again = {}, [], []
    for row in rows:
        subject, msg_id = expected[row[0]]
        stream = targets.stream_of.get(subject)
        if stream is None:
            again.append(row)  # no stream stores it: publishing again fails it cleanly
        elif stream not in seen:
            unknown.append(row)
        elif msg_id in seen[stream]:
            found[row[0]] = {"stream": stream, "seq": seen[stream][msg_id], "duplicate": False,
                             "subject": subject, "msg_id": msg_id}
        else:
            again.append(row)
    return found, unknown, again



async def _ids_in(nc, stream: str, first: int, last: int) -> dict[str, int]:
    """{Nats-Msg-Id: seq} of the replays stored in ``stream`` between two sequences."""
    ids: dict[str, int] = {}
    position = first
    while position <= last:
        msg = await js.next_message(nc, stream, position)
        if msg is None or msg["seq"] > last:
            break
        if msg["headers"].get("Lucent-Replay-Of"):
            ids[msg["headers"].get("Nats-Msg-Id", "")] = msg["seq"]
        position = msg["seq"] + 1
    return ids

