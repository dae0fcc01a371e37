"""Dead letters: capture, index, replay exactly once, purge, roles, audit."""

import asyncio

import pytest
from asgiref.sync import sync_to_async

from deadletters import capture as dl_capture
from deadletters import index as dl_index
from deadletters import plans, replay
from deadletters.models import DeadLetter
from kernel import jobs as job_runner
from kernel.actions import ActionError, Refused
from kernel.models import AuditRecord, Job
from lucent_bus import deadletters as dl
from lucent_bus import jetstream as js
from streams import topology

pytestmark = pytest.mark.django_db(transaction=True)
SECOND = 10**9


async def _work_stream(nc, retention="limits"):
    await topology.apply(nc)
    await js.add_stream(nc, {"name": "ORDERS", "subjects": ["orders.>"], "storage": "file",
                             "retention": retention, "duplicate_window": 60 * SECOND})
    await js.add_consumer(nc, "ORDERS", {"durable_name": "shipper", "ack_policy": "explicit",
                                         "max_deliver": 2, "ack_wait": 30 * SECOND})


async def _fail(nc, term_payloads: set[bytes]):
    """Consume ORDERS as a worker that fails: nak until max_deliver, or term()."""
    sub = await nc.jetstream().pull_subscribe_bind("shipper", "ORDERS")
    idle = 0
    while idle < 2:
        try:
            msgs = await sub.fetch(50, timeout=0.3)
        except Exception:
            idle += 1
            continue
        idle = 0
        for m in msgs:
            if m.data in term_payloads:
                await m.term()
            else:
                await m.nak()


async def _drain(nc):
    """Run the capture and the index until both have nothing left to do."""
    cap = await nc.jetstream().pull_subscribe_bind(dl_capture.CAPTURE_CONSUMER, dl_capture.ADVISORY_STREAM)
    idx = await nc.jetstream().pull_subscribe_bind(dl_index.INDEX_CONSUMER, dl.STREAM)
    idle = 0
    while idle < 2:
        n = await dl_capture.capture_batch(nc, cap) + await dl_index.index_batch(nc, idx)
        idle = idle + 1 if n == 0 else 0


async def test_failed_and_terminated_messages_become_dead_letters(fresh_nc):
    await _work_stream(fresh_nc)
    jsn = fresh_nc.jetstream()
    await jsn.publish("orders.eu.1", b'{"messageId": "m-1", "messageType": "ShipOrder", '
                                     b'"correlationId": "c-1"}', headers={"X-Tenant": "acme"})
    await jsn.publish("orders.eu.2", b"terminate me")
    await _fail(fresh_nc, {b"terminate me"})
    await asyncio.sleep(0.2)
    await _drain(fresh_nc)
    rows = {r.stream_seq: r for r in await sync_to_async(list)(DeadLetter.objects.all())}
    assert set(rows) == {1, 2}
    maxed, termed = rows[1], rows[2]
    assert (maxed.stream, maxed.subject, maxed.consumer, maxed.deliveries, maxed.reason) == (
        "ORDERS", "orders.eu.1", "shipper", 2, dl.REASON_MAX_DELIVERIES)
    assert (maxed.message_type, maxed.correlation_id, maxed.message_id) == ("ShipOrder", "c-1", "m-1")
    assert maxed.headers["X-Tenant"] == "acme" and maxed.payload_available
    assert termed.reason == dl.REASON_TERMINATED and termed.deliveries == 1
    assert termed.search_text == "terminate me"


async def test_a_terminated_message_on_a_work_queue_is_recorded_without_payload(fresh_nc):
    await _work_stream(fresh_nc, retention="workqueue")
    await fresh_nc.jetstream().publish("orders.x", b"gone")
    await _fail(fresh_nc, {b"gone"})
    await asyncio.sleep(0.2)
    await _drain(fresh_nc)
    row = await sync_to_async(DeadLetter.objects.get)()
    assert row.reason == dl.REASON_TERMINATED and row.stream_seq == 1
    assert row.payload_available is False and row.payload_kind == "missing"


async def test_advisories_wait_while_the_capture_is_stopped_and_a_crash_does_not_double(fresh_nc):
    await _work_stream(fresh_nc)
    for i in range(30):
        await fresh_nc.jetstream().publish(f"orders.{i}", f"job {i}".encode())
    await _fail(fresh_nc, set())  # 30 MAX_DELIVERIES advisories, nobody capturing
    await asyncio.sleep(0.3)
    info = await js.stream_info(fresh_nc, dl_capture.ADVISORY_STREAM)
    assert info["state"]["messages"] == 30
    # A capture that dies after publishing and before acking (the worst moment):
    cap = await fresh_nc.jetstream().pull_subscribe_bind(dl_capture.CAPTURE_CONSUMER,
                                                        dl_capture.ADVISORY_STREAM)
    first = await cap.fetch(10, timeout=1)
    for m in first:
        await dl_capture.capture_one(fresh_nc, m.data)  # published, never acked
    await js.api(fresh_nc, f"CONSUMER.DELETE.{dl_capture.ADVISORY_STREAM}.{dl_capture.CAPTURE_CONSUMER}")
    await topology.apply(fresh_nc)  # a new capture consumer: every advisory again
    await _drain(fresh_nc)
    assert (await js.stream_info(fresh_nc, dl.STREAM))["state"]["messages"] == 30
    assert await sync_to_async(DeadLetter.objects.count)() == 30
    seqs = await sync_to_async(list)(DeadLetter.objects.values_list("stream_seq", flat=True))
    assert sorted(seqs) == list(range(1, 31))


async def test_the_index_can_be_rebuilt_from_the_stream(fresh_nc):
    await _work_stream(fresh_nc)
    await fresh_nc.jetstream().publish("orders.1", b"x")
    await fresh_nc.jetstream().publish(dl.subject("ORDERS", "manual"), b"explicit one",
                                       headers={dl.H_REASON: "explicit", dl.H_ERROR: "boom"})
    await _fail(fresh_nc, set())
    await asyncio.sleep(0.2)
    await _drain(fresh_nc)
    assert await sync_to_async(DeadLetter.objects.count)() == 2
    await sync_to_async(DeadLetter.objects.all().delete)()
    assert await dl_index.reindex(fresh_nc) == 2
    explicit = await sync_to_async(DeadLetter.objects.get)(consumer="manual")
    assert explicit.reason == "explicit" and explicit.error == "boom" and explicit.stream == "ORDERS"


# ---------------------------------------------------------------- replay and purge

async def _captured(nc, n: int = 3):
    """n dead letters from ORDERS (max deliveries), captured and indexed."""
    await _work_stream(nc)
    for i in range(n):
        await nc.jetstream().publish(f"orders.eu.{i}", f'{{"messageId": "m-{i}", '
                                     f'"messageType": "ShipOrder", "correlationId": "c-{i}"}}'.encode())
    await _fail(nc, set())
    await asyncio.sleep(0.2)
    await _drain(nc)
    # A second consumer that only watches what is replayed.
    await js.add_consumer(nc, "ORDERS", {"durable_name": "audit-tail", "ack_policy": "none",
                                         "deliver_policy": "new"})


async def _replayed_messages(nc) -> list:
    info = await js.consumer_info(nc, "ORDERS", "audit-tail")
    return info["num_pending"]


async def test_replay_is_exactly_once_even_when_asked_twice(fresh_nc, fresh_server, users,
                                                           monkeypatch):
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    await _captured(fresh_nc, 1)
    letter = await sync_to_async(DeadLetter.objects.get)()
    operator = users["operator"]
    first = await sync_to_async(replay.replay)(operator, letter.pk)
    second = await sync_to_async(replay.replay)(operator, letter.pk)  # double click / 2nd operator
    assert first["status"] == "replayed" and first["subject"] == "orders.eu.0"
    assert first["duplicate"] is False and second["duplicate"] is True
    assert first["seq"] == second["seq"]
    assert await _replayed_messages(fresh_nc) == 1  # the consumer sees it once
    stored = await js.next_message(fresh_nc, "ORDERS", first["seq"])
    assert stored["headers"]["Nats-Msg-Id"] == replay.replay_msg_id(letter.dl_seq, "orders.eu.0",
                                                                 letter.generation)
    assert "Lucent-DL-Reason" not in stored["headers"]
    await sync_to_async(letter.refresh_from_db)()
    assert letter.status == DeadLetter.REPLAYED
    records = await sync_to_async(list)(AuditRecord.objects.filter(action="deadletter.replay"))
    assert [r.outcome for r in records] == ["ok", "ok"]


async def test_replay_to_a_subject_no_stream_stores_is_refused(fresh_nc, fresh_server, users,
                                                              monkeypatch):
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    await _captured(fresh_nc, 1)
    letter = await sync_to_async(DeadLetter.objects.get)()
    with pytest.raises(ActionError, match="no stream stores 'nowhere.at.all'"):
        await sync_to_async(replay.replay)(users["operator"], letter.pk, "nowhere.at.all")
    await sync_to_async(letter.refresh_from_db)()
    assert letter.status == DeadLetter.NEW
    assert await _replayed_messages(fresh_nc) == 0
    record = await sync_to_async(AuditRecord.objects.get)(action="deadletter.replay")
    assert record.outcome == "failed"


async def test_viewers_cannot_replay_or_purge_and_nothing_changes(fresh_nc, fresh_server,
                                                                 users, monkeypatch):
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    await _captured(fresh_nc, 2)
    letter = await sync_to_async(DeadLetter.objects.first)()
    viewer = users["viewer"]
    for call in (lambda: replay.replay(viewer, letter.pk), lambda: plans.purge_one(viewer, letter.pk),
                 lambda: plans.start_job(viewer, "replay", {}), lambda: plans.start_job(viewer, "purge", {})):
        with pytest.raises(Refused):
            await sync_to_async(call)()
    assert await _replayed_messages(fresh_nc) == 0
    assert (await js.stream_info(fresh_nc, dl.STREAM))["state"]["messages"] == 2
    assert await sync_to_async(DeadLetter.objects.filter(status="new").count)() == 2
    assert await sync_to_async(AuditRecord.objects.filter(outcome="refused").count)() == 4
    assert await sync_to_async(Job.objects.count)() == 0


async def test_bulk_replay_holds_the_rate_and_purge_empties_the_stream(fresh_nc, fresh_server,
                                                                      users, monkeypatch):
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    await _captured(fresh_nc, 30)
    operator = users["operator"]
    preview = await sync_to_async(plans.dry_run)({"consumer": "shipper"})
    assert preview["matched"] == 30 and preview["targets"][0]["n"] == 1
    started = asyncio.get_running_loop().time()
    result = await sync_to_async(plans.start_job)(operator, "replay", {"consumer": "shipper"}, None, 20)
    took = asyncio.get_running_loop().time() - started
    assert result["matched"] == 30
    job = await sync_to_async(Job.objects.get)(pk=result["job"])
    assert (job.state, job.done, job.failed) == ("done", 30, 0)
    assert 29 / 20 * 0.9 <= took <= 30 / 20 * 1.1 + 0.5, took  # 20 msgs/s, within 10%
    assert await _replayed_messages(fresh_nc) == 30
    audit = await sync_to_async(AuditRecord.objects.get)(action="deadletter.replay_bulk")
    assert "30 matched, 30 succeeded, 0 failed" in audit.detail
    purge = await sync_to_async(plans.start_job)(operator, "purge", {"stream": "ORDERS"})
    assert purge["matched"] == 30
    assert (await js.stream_info(fresh_nc, dl.STREAM))["state"]["messages"] == 0
    assert await sync_to_async(DeadLetter.objects.filter(status="purged").count)() == 30


async def test_an_interrupted_bulk_replay_resumes_without_duplicates_or_losses(tmp_path, users,
                                                                              monkeypatch):
    from lucent_bus import embedded

    from .conftest import bus

    port = embedded.free_port()
    server = embedded.single(tmp_path / "js", port).start().wait()
    monkeypatch.setenv("NATS_URL", server.url)
    nc = await bus(server.url)
    await _captured(nc, 40)
    operator = users["operator"]
    monkeypatch.setattr(replay, "BATCH", 10)
    job_id = (await sync_to_async(Job.objects.create)(
        kind="replay", total=40, params={"filters": {}, "subject": None, "rate": 40})).pk
    runner = asyncio.ensure_future(sync_to_async(job_runner.run_job, thread_sensitive=False)(job_id))
    await asyncio.sleep(0.5)
    server.stop()  # the bus goes away mid-job
    await asyncio.sleep(1.5)
    server = embedded.single(tmp_path / "js", port).start().wait()
    try:
        await asyncio.wait_for(runner, 60)
        job = await sync_to_async(Job.objects.get)(pk=job_id)
        assert (job.state, job.done, job.failed) == ("done", 40, 0)
        for _ in range(40):
            if nc.is_connected:
                break
            await asyncio.sleep(0.25)
        assert await _replayed_messages(nc) == 40  # each once: no loss, no duplicate
        assert operator.username == "operator"
    finally:
        await nc.close()
        server.stop()


# ---------------------------------------------------------------- bulk replay: batched reads, old servers

async def _explicit_letters(nc, n: int, subject_of=lambda i: f"orders.eu.{i}"):
    """n dead letters published straight to DEAD_LETTERS (as a service may), indexed."""
    await _work_stream(nc)
    for i in range(n):
        await nc.jetstream().publish(dl.subject("ORDERS", "shipper"), f"order {i}".encode(),
                                     headers=dl.headers({"X-I": str(i)}, stream="ORDERS", seq=i + 1,
                                                        subject=subject_of(i), consumer="shipper",
                                                        deliveries=2,
                                                        reason=dl.REASON_MAX_DELIVERIES))
    await _drain(nc)
    await js.add_consumer(nc, "ORDERS", {"durable_name": "audit-tail", "ack_policy": "none",
                                         "deliver_policy": "new"})


async def _bulk_replay_twice(nc, users, n: int) -> None:
    """A bulk replay of every letter, then the same again: each reaches ORDERS once."""
    operator = users["operator"]
    for attempt in range(2):
        result = await sync_to_async(plans.start_job)(operator, "replay", {"consumer": "shipper"})
        job = await sync_to_async(Job.objects.get)(pk=result["job"])
        assert (job.state, job.done, job.failed) == ("done", n, 0), attempt
        assert await _replayed_messages(nc) == n
    stored = await js.next_message(nc, "ORDERS", 1, "orders.eu.0")  # shards publish in any order
    letter = await sync_to_async(DeadLetter.objects.get)(stream_seq=1)
    assert stored["data"] == b"order 0" and stored["headers"]["X-I"] == "0"
    assert stored["headers"]["Nats-Msg-Id"] == replay.replay_msg_id(letter.dl_seq, "orders.eu.0",
                                                                 letter.generation)
    assert not any(k.startswith("Lucent-DL-") for k in stored["headers"])
    assert await sync_to_async(DeadLetter.objects.filter(status="replayed").count)() == n


async def test_batched_reads_return_what_one_by_one_reads_do(fresh_nc):
    await _explicit_letters(fresh_nc, 300)
    assert js.supports_batch_get(fresh_nc)
    info = await js.stream_info(fresh_nc, dl.STREAM)
    assert info["config"]["allow_direct"] is True  # declared: topology apply set it
    await js.delete_message(fresh_nc, dl.STREAM, 150)  # purged meanwhile
    seqs = [s for s in range(1, 301) if s % 3] + [299, 600]  # gaps, a repeat, one never stored
    batched = await replay.read_letters(fresh_nc, seqs, batched=True)
    single = await replay.read_letters(fresh_nc, seqs, batched=False)
    assert set(batched) == set(single) == {s for s in seqs if s not in (150, 600)}
    for seq, msg in single.items():
        assert batched[seq]["data"] == msg["data"] and batched[seq]["seq"] == seq
        assert {k: v for k, v in batched[seq]["headers"].items() if not k.startswith("Nats-")} == \
            {k: v for k, v in msg["headers"].items() if not k.startswith("Nats-")}


async def test_a_bulk_replay_with_batched_reads_is_exactly_once(fresh_nc, fresh_server, users,
                                                                monkeypatch):
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    monkeypatch.setattr(replay, "BATCH", 40)  # several batches, overlapping their DB work
    await _explicit_letters(fresh_nc, 130)
    reads = []
    original = js.direct_get_batch

    async def counted(*a, **kw):
        reads.append(a[2:4])
        return await original(*a, **kw)

    monkeypatch.setattr(js, "direct_get_batch", counted)
    await _bulk_replay_twice(fresh_nc, users, 130)
    assert len(reads) == 8  # 4 batches of up to 40, twice: one request each


async def test_a_bulk_replay_fails_letters_no_stream_stores_and_replays_the_rest(
        fresh_nc, fresh_server, users, monkeypatch):
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    await _explicit_letters(fresh_nc, 10, lambda i: f"orders.eu.{i}" if i % 2 else f"gone.{i}")
    result = await sync_to_async(plans.start_job)(users["operator"], "replay", {"consumer": "shipper"})
    job = await sync_to_async(Job.objects.get)(pk=result["job"])
    assert (job.state, job.done, job.failed) == ("done", 5, 5)
    assert await _replayed_messages(fresh_nc) == 5
    stayed = await sync_to_async(list)(DeadLetter.objects.filter(status="new")
                                       .values_list("subject", flat=True))
    assert sorted(stayed) == [f"gone.{i}" for i in (0, 2, 4, 6, 8)]


async def test_a_cancelled_bulk_replay_stops_at_a_batch_and_resumes_from_its_checkpoint(
        fresh_nc, fresh_server, users, monkeypatch):
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    monkeypatch.setattr(replay, "BATCH", 10)
    await _explicit_letters(fresh_nc, 50)
    job = await sync_to_async(Job.objects.create)(kind="replay", total=50,
                                                  params={"filters": {}, "subject": None, "rate": 50})
    runner = asyncio.ensure_future(sync_to_async(job_runner.run_job, thread_sensitive=False)(job.pk))
    await asyncio.sleep(0.5)
    await sync_to_async(Job.objects.filter(pk=job.pk).update)(cancel_requested=True)
    await asyncio.wait_for(runner, 30)
    await sync_to_async(job.refresh_from_db)()
    assert job.state == Job.CANCELLED and 10 <= job.done < 50 and job.done % 10 == 0
    assert job.last_id == (await sync_to_async(
        lambda: list(DeadLetter.objects.order_by("pk").values_list("pk", flat=True)))())[job.done - 1]
    assert await _replayed_messages(fresh_nc) == job.done  # every publish recorded
    await sync_to_async(Job.objects.filter(pk=job.pk).update)(state=Job.RUNNING,
                                                             cancel_requested=False)
    await sync_to_async(job_runner.run_job)(job.pk)
    await sync_to_async(job.refresh_from_db)()
    assert (job.state, job.done, job.failed) == ("done", 50, 0)
    assert await _replayed_messages(fresh_nc) == 50


async def test_topology_apply_turns_on_direct_reads_of_a_live_dead_letter_stream(fresh_nc):
    await js.add_stream(fresh_nc, {"name": dl.STREAM, "subjects": ["lucent.deadletter.>"],
                                   "storage": "file", "duplicate_window": 60 * SECOND})
    assert not (await js.stream_info(fresh_nc, dl.STREAM))["config"].get("allow_direct")
    changes = {c.stream: c for c in await topology.apply(fresh_nc)}
    assert changes[dl.STREAM].action == "updated" and "allow_direct" in changes[dl.STREAM].detail
    assert (await js.stream_info(fresh_nc, dl.STREAM))["config"]["allow_direct"] is True


async def test_a_bulk_replay_on_nats_server_2_9_reads_one_by_one_exactly_once(tmp_path, users,
                                                                              monkeypatch):
    """Debian's nats-server 2.9 (no batched DIRECT.GET): the per-message path."""
    import os
    from pathlib import Path

    from lucent_bus import embedded

    from .conftest import bus

    old = os.getenv("LUCENT_NATS_29", "/usr/sbin/nats-server")
    if not Path(old).exists():
        pytest.skip(f"{old} not installed (Debian's nats-server package)")
    port = embedded.free_port()
    args = [old] + embedded.server_args(port, tmp_path / "js")[1:]
    server = embedded.Server(port, tmp_path / "js", args, tmp_path / "nats.log").start().wait()
    monkeypatch.setenv("NATS_URL", server.url)
    nc = await bus(server.url)
    try:
        assert js.server_version(nc) < (2, 11, 0) and not js.supports_batch_get(nc)
        monkeypatch.setattr(replay, "BATCH", 25)
        await _explicit_letters(nc, 60)

        async def refuse(*a, **kw):
            raise AssertionError("a batched DIRECT.GET sent to nats-server 2.9")

        monkeypatch.setattr(js, "direct_get_batch", refuse)
        await _bulk_replay_twice(nc, users, 60)
    finally:
        await nc.close()
        server.stop()


async def test_a_large_bulk_replay_shares_each_batch_with_a_helper_process_exactly_once(
        fresh_nc, fresh_server, users, monkeypatch):
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    monkeypatch.setattr(replay, "BATCH", 40)
    monkeypatch.setattr(replay, "SHARD_MIN", 100)
    await _explicit_letters(fresh_nc, 130)
    sent = []
    original = replay.Shard.replay

    def counted(self, rows, *a):
        sent.append(len(rows))
        return original(self, rows, *a)

    monkeypatch.setattr(replay.Shard, "replay", counted)
    await _bulk_replay_twice(fresh_nc, users, 130)
    assert sent == [27, 27, 27, 7] * 2  # two thirds of every batch: the helper process


async def test_a_bulk_replay_does_the_rows_of_a_dead_helper_process_itself(
        fresh_nc, fresh_server, users, monkeypatch):
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    monkeypatch.setattr(replay, "BATCH", 40)
    monkeypatch.setattr(replay, "SHARD_MIN", 100)
    monkeypatch.setattr(replay.Shard, "CODE", "pass")  # a helper that exits at once
    await _explicit_letters(fresh_nc, 130)
    await _bulk_replay_twice(fresh_nc, users, 130)
