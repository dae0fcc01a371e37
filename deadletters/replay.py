"""Replaying dead letters: one pipeline for single and bulk replays.

Exactly once: each replay publishes with a ``Nats-Msg-Id`` derived from the letter (its
DEAD_LETTERS generation and sequence) and the target subject and waits for the target
stream's PubAck before the letter is marked replayed; a double click, two operators at
once or a retried batch publish the same id, which the target drops within its
duplicate window (bulk jobs go further: ``deadletters/jobs.py``). A bulk replay reads
DEAD_LETTERS a batch at a time (batched DIRECT.GET on nats-server 2.11+, one
STREAM.MSG.GET per letter before) and publishes the batch pipelined (``replay_batch``);
large unthrottled jobs share each batch with a helper process (``Shard``).

Every read of a stored dead letter checks that the message at its DEAD_LETTERS sequence
is still the one indexed (``same_letter``): a row of an earlier generation never shows
or replays the new stream's message.
"""

from __future__ import annotations

import asyncio
import hashlib

from django.db import connection
from django.utils import timezone

from kernel.actions import ActionError, audited
from kernel.helper import Helper, HelperError
from kernel.jobs import RateLimit, retrying
from kernel.models import Job
from lucent_bus import deadletters as dl
from lucent_bus import jetstream as js
from lucent_bus import subjects
from lucent_bus import sync as bus_sync
from lucent_bus.client import connect
from streams.replay import check_target

from . import edits
from .models import DeadLetter, Replay
from .search import current_generation, get, same_letter

BATCH = 1000

IN_FLIGHT = 256  # STREAM.MSG.GET requests at once (one per letter, older servers)

PUB_IN_FLIGHT = 1000  # replays published and not yet acked

GAP = 64  # batched reads read through gaps this wide rather than split

# Unthrottled replays of at least SHARD_MIN letters also publish half of each batch from a
# helper process: one Python process is bound by its own CPU (parsing and publishing).
SHARDS = 2

SHARD_MIN = 20 * BATCH



def replay_msg_id(letter_seq: int, subject: str, generation: str = "",
                  edit_digest: str = "") -> str:
    """The replay's dedup id: the letter (its DEAD_LETTERS generation and sequence), the
    edit (the digest of the edited message, if edited) and the target, so the same
    letter sent twice is one message, the same edit retried is one message, a
    different edit is another, and a letter of a later DEAD_LETTERS at the same
    sequence is another."""
    gen = hashlib.sha1(generation.encode()).hexdigest()[:8] if generation else ""
    edit = f"e{edit_digest[:16]}:" if edit_digest else ""
    return (f"replay:{gen + ':' if gen else ''}{letter_seq}:{edit}"
            f"{hashlib.sha1(subject.encode()).hexdigest()[:12]}")



def replay_headers(stored: dict, letter_seq: int, subject: str, generation: str = "",
                   edit_digest: str = "") -> dict:
    headers = edits.visible(stored)
    headers["Nats-Msg-Id"] = replay_msg_id(letter_seq, subject, generation, edit_digest)
    headers["Lucent-Replay-Of"] = str(letter_seq)
    if edit_digest:
        headers["Lucent-Replay-Edit"] = edit_digest[:16]
    return headers



async def _replay_one(nc, letter: DeadLetter, subject: str | None, remove_original: bool,
                      edit: edits.Edit | None = None) -> dict:
    """Publish one dead letter again (edited, with ``edit``); returns the PubAck and
    target."""
    row = (letter.pk, letter.dl_seq, letter.stream, letter.stream_seq, letter.subject,
           letter.generation)
    [(_, result)] = await _replay_rows(nc, [row], subject, remove_original, RateLimit(None),
                                       edit)
    if isinstance(result, Exception):
        raise result if isinstance(result, ActionError) else ActionError(str(result))
    return result



def replay(user, dl_id, subject: str | None = None, remove_original: bool = False,
           edit: edits.Edit | None = None) -> dict:
    """Replay one dead letter (operator), as stored or with ``edit`` applied. Audited
    (an edit with both versions); refused or failed changes nothing."""
    subject = (subject or "").strip() or None
    action = "deadletter.replay_edited" if edit else "deadletter.replay"
    with audited(user, action, str(dl_id),
                 {"subject": subject, "remove_original": remove_original}, "operator") as outcome:
        letter = get(dl_id)
        if letter.status == DeadLetter.PURGED:
            raise ActionError("this dead letter was purged")
        target = subject or letter.subject

        async def go(nc):
            await check_target(nc, target)
            return await _replay_one(nc, letter, target, remove_original, edit)

        result = bus_sync.with_client(go)
        edited = result.pop("edited", None)
        if edit:
            outcome.parameters = {"original": result.pop("original"),
                                  "edited": result.pop("edited_version")}
            result["edit_sha256"] = edited["sha256"]
        Replay.objects.create(dead_letter=letter, username=getattr(user, "username", ""),
                              subject=result["subject"], msg_id=result["msg_id"],
                              stream=result["stream"], seq=result["seq"],
                              duplicate=result["duplicate"], generation=letter.generation,
                              edit=edited)
        letter.status = DeadLetter.REPLAYED
        letter.save(update_fields=["status"])
        outcome.detail = (f"to {result['subject']}: {result['stream']} seq {result['seq']}"
                          + (" (duplicate: already replayed)" if result["duplicate"] else ""))
    return {"status": "replayed", "id": letter.id, **result}



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

    return retrying(go)


SHARD = "replay-shard"  # the helper process (kernel.helper), registered in apps.py


class Shard(Helper):
    """A helper process that replays the rows it is sent (``_replay_rows`` on a bus
    connection of its own) and sends back the results; no database access. If it
    dies or fails, the caller replays those rows itself: the same ids make the
    repeat harmless."""

    TARGET = SHARD

    def replay(self, rows: list[tuple], subject: str | None, remove_original: bool) -> list:
        try:
            return self.call(rows, subject, remove_original)
        except HelperError as exc:
            raise js.JetStreamError(f"replay helper process: {exc}") from None



def shard_handler():
    """In the helper process: a bus connection, and the function replaying rows on it."""

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



def _message(row: tuple, target: str, msg: dict, edit: edits.Edit | None) -> tuple:
    """(subject, data, headers) to publish for one letter, edited or as stored."""
    if edit is None:
        return target, msg["data"], replay_headers(msg["headers"], row[1], target, row[5])
    data, headers = edit.apply(msg["data"], msg["headers"])
    sent = edits.digest(data, headers)
    # An "edit" that changes nothing is the letter as stored: the same id as a plain replay.
    same = sent == edits.digest(msg["data"], edits.visible(msg["headers"]))
    return target, data, replay_headers(headers, row[1], target, row[5], "" if same else sent)


def _versions(msg: dict, data: bytes, sent_headers: dict) -> dict:
    """Both versions of an edited replay: the original and the edit, for the audit
    (digests, headers, first characters) and the replay row (the edit whole)."""
    headers = edits.visible(sent_headers)
    return {"original": edits.version(msg["data"], edits.visible(msg["headers"])),
            "edited_version": edits.version(data, headers),
            "edited": edits.stored_form(data, headers)}


async def _replay_rows(nc, rows: list[tuple], subject: str | None, remove_original: bool,
                       limiter: RateLimit, edit: edits.Edit | None = None) -> list:
    """Read, publish pipelined, wait for every PubAck; [(row, result or ActionError)].

    Rows are (pk, dl_seq, stream, stream_seq, subject, generation). A letter whose
    stored copy is gone or belongs to another DEAD_LETTERS generation fails, as does
    one whose target no stream stores (ActionError; it stays); a missing PubAck or a
    JetStream not yet ready raises JetStreamError, for the caller to repeat the batch.
    ``edit`` (single replays) replaces the payload and/or headers of every row.
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
        elif msg["headers"].get(dl.H_PAYLOAD) == "missing" and (edit is None or edit.data is None):
            out[i] = (row, ActionError("payload unavailable: nothing to replay (an edit "
                                       "that gives the payload can still send it)"))
        elif not target:
            out[i] = (row, ActionError("the original subject is unknown: give a subject"))
        elif subjects.reserved(target, True):  # an original subject may be the bus's own
            out[i] = (row, ActionError(subjects.reserved(target, True)))
        else:
            plan.append((i, row, target, msg))
    messages = [_message(row, target, msg, edit) for _, row, target, msg in plan]
    acks = await js.publish_many(nc, messages, in_flight=PUB_IN_FLIGHT,
                                 before=limiter.wait if limiter.interval else None)
    unstored: dict[str, bool] = {}
    for (i, row, target, msg), (_, data, headers), ack in zip(plan, messages, acks, strict=True):
        if isinstance(ack, js.NoStream):
            if target not in unstored:
                unstored[target] = not await js.streams_storing(nc, target)
            if not unstored[target]:  # a stream stores it: JetStream not ready yet
                raise js.JetStreamError(f"no PubAck from the stream storing {target!r}")
            out[i] = (row, ActionError(f"no stream stores {target!r}: the dead letter stays"))
        elif isinstance(ack, Exception):
            out[i] = (row, ActionError(str(ack)))
        else:
            out[i] = (row, {**ack, "subject": target, "msg_id": headers["Nats-Msg-Id"],
                            **(_versions(msg, data, headers) if edit else {})})
    if remove_original:
        async def remove(row):
            try:
                await js.delete_message(nc, row[2], row[3])
            except js.JetStreamError:
                pass  # already gone (work queue, aged out): nothing to remove
        await asyncio.gather(*(remove(row) for row, result in out
                               if not isinstance(result, Exception) and row[3]))
    return out

