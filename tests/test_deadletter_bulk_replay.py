"""Dead letters: bulk replay jobs hold their rate, survive the bus going away and a cancel
without duplicates or losses, fail only the letters no stream stores, and share batches
with a helper process (or do a dead helper's rows themselves), each exactly once."""

import asyncio
from datetime import datetime

import pytest
from asgiref.sync import sync_to_async

from deadletters import plans, replay
from deadletters.models import DeadLetter
from kernel import jobs as job_runner
from kernel.models import AuditRecord, Job
from lucent_bus import jetstream as js

from .deadletter_bus import (
    bulk_replay_twice,
    captured,
    explicit_letters,
    job_done_at_least,
    replayed_messages,
)
from .support import eventually

pytestmark = pytest.mark.django_db(transaction=True)


def _stored_at(message: dict) -> float:
    """The server's time of a stored message (RFC 3339, nanoseconds cut to microseconds)."""
    stamp = message["time"].rstrip("Z")
    whole, _, frac = stamp.partition(".")
    return datetime.fromisoformat(f"{whole}.{(frac + '000000')[:6]}+00:00").timestamp()


async def test_bulk_replay_holds_the_rate(fresh_nc, fresh_server, users, monkeypatch):
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    await captured(fresh_nc, 30)
    operator = users["operator"]
    preview = await sync_to_async(plans.dry_run)({"consumer": "shipper"})
    assert preview["matched"] == 30 and preview["targets"][0]["n"] == 1
    result = await sync_to_async(plans.start_job)(operator, "replay", {"consumer": "shipper"}, None, 20)
    assert result["matched"] == 30
    job = await sync_to_async(Job.objects.get)(pk=result["job"])
    assert (job.state, job.done, job.failed) == ("done", 30, 0)
    assert await replayed_messages(fresh_nc) == 30
    # The rate is what is under test: the replays (ORDERS 31..60) were stored no faster than
    # 20 a second, by the server's clock. Only this bound: a loaded machine is slower.
    first = await js.next_message(fresh_nc, "ORDERS", 31)
    last = await js.next_message(fresh_nc, "ORDERS", 60)
    assert last["seq"] == 60 and _stored_at(last) - _stored_at(first) >= 29 / 20 * 0.9
    audit = await sync_to_async(AuditRecord.objects.get)(action="deadletter.replay_bulk")
    assert "30 matched, 30 succeeded, 0 failed" in audit.detail


async def test_an_interrupted_bulk_replay_resumes_without_duplicates_or_losses(tmp_path, users,
                                                                              monkeypatch):
    from lucent_bus import embedded

    from .conftest import bus

    port = embedded.free_port()
    server = embedded.single(tmp_path / "js", port).start().wait()
    monkeypatch.setenv("NATS_URL", server.url)
    nc = await bus(server.url)
    try:
        await captured(nc, 40)
        # 20 a second in slices of 5 (deadletters.jobs.CHUNK_S): about 2 s of work
        job_id = (await sync_to_async(Job.objects.create)(
            kind="replay", total=40, params={"filters": {}, "subject": None, "rate": 20})).pk
        runner = asyncio.ensure_future(sync_to_async(job_runner.run_job,
                                                     thread_sensitive=False)(job_id))
        await job_done_at_least(job_id, 10)
        server.stop()  # the bus goes away mid-job
        done_at_outage = (await sync_to_async(Job.objects.get)(pk=job_id)).done
        assert 10 <= done_at_outage < 40, done_at_outage
        await asyncio.sleep(1.5)  # the outage under test: the job meets a bus that stays away
        server = embedded.single(tmp_path / "js", port).start().wait()
        await asyncio.wait_for(runner, 60)
        job = await sync_to_async(Job.objects.get)(pk=job_id)
        assert (job.state, job.done, job.failed) == ("done", 40, 0)
        await eventually(lambda: nc.is_connected, 20, "the test's connection is back")
        assert await replayed_messages(nc) == 40  # each once: no loss, no duplicate
        assert await sync_to_async(DeadLetter.objects.filter(status="replayed").count)() == 40
    finally:
        await nc.close()
        server.stop()


async def test_a_bulk_replay_fails_letters_no_stream_stores_and_replays_the_rest(
        fresh_nc, fresh_server, users, monkeypatch):
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    await explicit_letters(fresh_nc, 10, lambda i: f"orders.eu.{i}" if i % 2 else f"gone.{i}")
    result = await sync_to_async(plans.start_job)(users["operator"], "replay", {"consumer": "shipper"})
    job = await sync_to_async(Job.objects.get)(pk=result["job"])
    assert (job.state, job.done, job.failed) == ("done", 5, 5)
    assert await replayed_messages(fresh_nc) == 5
    stayed = await sync_to_async(list)(DeadLetter.objects.filter(status="new")
                                       .values_list("subject", flat=True))
    assert sorted(stayed) == [f"gone.{i}" for i in (0, 2, 4, 6, 8)]


async def test_a_cancelled_bulk_replay_stops_at_a_batch_and_resumes_from_its_checkpoint(
        fresh_nc, fresh_server, users, monkeypatch):
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    monkeypatch.setattr(replay, "BATCH", 10)
    await explicit_letters(fresh_nc, 50)
    job = await sync_to_async(Job.objects.create)(kind="replay", total=50,
                                                  params={"filters": {}, "subject": None, "rate": 50})
    runner = asyncio.ensure_future(sync_to_async(job_runner.run_job, thread_sensitive=False)(job.pk))
    await job_done_at_least(job.pk, 10)  # the first batch is recorded: cancel mid-job
    await sync_to_async(Job.objects.filter(pk=job.pk).update)(cancel_requested=True)
    await asyncio.wait_for(runner, 30)
    await sync_to_async(job.refresh_from_db)()
    assert job.state == Job.CANCELLED and 10 <= job.done < 50 and job.done % 10 == 0
    assert job.last_id == (await sync_to_async(
        lambda: list(DeadLetter.objects.order_by("pk").values_list("pk", flat=True)))())[job.done - 1]
    assert await replayed_messages(fresh_nc) == job.done  # every publish recorded
    await sync_to_async(Job.objects.filter(pk=job.pk).update)(state=Job.RUNNING,
                                                             cancel_requested=False)
    await sync_to_async(job_runner.run_job)(job.pk)
    await sync_to_async(job.refresh_from_db)()
    assert (job.state, job.done, job.failed) == ("done", 50, 0)
    assert await replayed_messages(fresh_nc) == 50


async def test_a_large_bulk_replay_shares_each_batch_with_a_helper_process_exactly_once(
        fresh_nc, fresh_server, users, monkeypatch):
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    monkeypatch.setattr(replay, "BATCH", 40)
    monkeypatch.setattr(replay, "SHARD_MIN", 100)
    await explicit_letters(fresh_nc, 130)
    sent = []
    original = replay.Shard.replay

    def counted(self, rows, *a):
        sent.append(len(rows))
        return original(self, rows, *a)

    monkeypatch.setattr(replay.Shard, "replay", counted)
    await bulk_replay_twice(fresh_nc, users, 130)
    assert sent == [27, 27, 27, 7] * 2  # two thirds of every batch: the helper process


async def test_a_bulk_replay_does_the_rows_of_a_dead_helper_process_itself(
        fresh_nc, fresh_server, users, monkeypatch):
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    monkeypatch.setattr(replay, "BATCH", 40)
    monkeypatch.setattr(replay, "SHARD_MIN", 100)
    monkeypatch.setattr(replay.Shard, "CODE", "pass")  # a helper that exits at once
    await explicit_letters(fresh_nc, 130)
    await bulk_replay_twice(fresh_nc, users, 130)
