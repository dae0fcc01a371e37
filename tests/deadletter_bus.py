"""Dead letters made on a real bus, for the test_deadletter_*.py files: a work stream, a
worker that fails, the capture and index run until nothing is left, letters published
straight to DEAD_LETTERS, and a consumer that counts what a replay brought back."""

import asyncio

from asgiref.sync import sync_to_async
from nats.errors import TimeoutError as NatsTimeout

from deadletters import capture as dl_capture
from deadletters import index as dl_index
from deadletters import plans, replay
from deadletters.models import DeadLetter
from kernel.models import Job
from lucent_bus import deadletters as dl
from lucent_bus import jetstream as js
from streams import topology

from .support import eventually

SECOND = 10**9


async def work_stream(nc, retention="limits"):
    await topology.apply(nc)
    await js.add_stream(nc, {"name": "ORDERS", "subjects": ["orders.>"], "storage": "file",
                             "retention": retention, "duplicate_window": 60 * SECOND})
    await js.add_consumer(nc, "ORDERS", {"durable_name": "shipper", "ack_policy": "explicit",
                                         "max_deliver": 2, "ack_wait": 30 * SECOND})


async def advisories(nc) -> int:
    """How many advisories LUCENT_ADVISORIES has stored so far (its last sequence)."""
    return (await js.stream_info(nc, dl_capture.ADVISORY_STREAM))["state"]["last_seq"]


async def fail(nc, term_payloads: set[bytes], expect: int | None = None, timeout: float = 30.0,
               stream: str = "ORDERS", consumer: str = "shipper"):
    """Consume ``stream`` as a worker that fails (nak until max_deliver, or term()) until
    LUCENT_ADVISORIES holds ``expect`` more advisories: by default one for each message
    the consumer has yet to finish (pending or delivered and unacked). The server advises
    a message out of deliveries when it would deliver it again, that is to a waiting pull:
    so keep pulling (one short pull after the naks missed that moment in CI runs)."""
    if expect is None:
        info = await js.consumer_info(nc, stream, consumer)
        expect = info["num_pending"] + info["num_ack_pending"]
    want = await advisories(nc) + expect
    sub = await nc.jetstream().pull_subscribe_bind(consumer, stream)
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        while await advisories(nc) < want:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{await advisories(nc)} advisories stored, {want} expected")
            try:
                msgs = await sub.fetch(50, timeout=0.3)
            except (TimeoutError, NatsTimeout):
                continue  # nothing to deliver now: pull again, so the server can advise
            for m in msgs:
                if m.data in term_payloads:
                    await m.term()
                else:
                    await m.nak()
    finally:
        await sub.unsubscribe()


async def _settled(nc) -> bool:
    """The capture and the index consumers have nothing left, delivered or not."""
    for stream, consumer in ((dl_capture.ADVISORY_STREAM, dl_capture.CAPTURE_CONSUMER),
                             (dl.STREAM, dl_index.INDEX_CONSUMER)):
        info = await js.consumer_info(nc, stream, consumer)
        if info["num_pending"] or info["num_ack_pending"]:
            return False
    return True


async def drain(nc, timeout: float = 30.0):
    """Run the capture and the index until both consumers have nothing left to do."""
    cap = await nc.jetstream().pull_subscribe_bind(dl_capture.CAPTURE_CONSUMER,
                                                   dl_capture.ADVISORY_STREAM)
    idx = await nc.jetstream().pull_subscribe_bind(dl_index.INDEX_CONSUMER, dl.STREAM)
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        while not await _settled(nc):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("the capture and the index still had work after "
                                     f"{timeout}s")
            await dl_capture.capture_batch(nc, cap)
            await dl_index.index_batch(nc, idx)
    finally:
        await cap.unsubscribe()
        await idx.unsubscribe()


async def captured(nc, n: int = 3):
    """n dead letters from ORDERS (max deliveries), captured and indexed."""
    await work_stream(nc)
    for i in range(n):
        await nc.jetstream().publish(f"orders.eu.{i}", f'{{"messageId": "m-{i}", '
                                     f'"messageType": "ShipOrder", "correlationId": "c-{i}"}}'.encode())
    await fail(nc, set(), n)
    await drain(nc)
    await tail_orders(nc)


async def tail_orders(nc):
    """A second consumer on ORDERS that only watches what is replayed."""
    await js.add_consumer(nc, "ORDERS", {"durable_name": "audit-tail", "ack_policy": "none",
                                         "deliver_policy": "new"})


async def replayed_messages(nc) -> int:
    """How many messages reached ORDERS since ``tail_orders``."""
    info = await js.consumer_info(nc, "ORDERS", "audit-tail")
    return info["num_pending"]


async def explicit_letters(nc, n: int, subject_of=lambda i: f"orders.eu.{i}"):
    """n dead letters published straight to DEAD_LETTERS (as a service may), indexed."""
    before = await sync_to_async(DeadLetter.objects.count)()
    await work_stream(nc)
    for i in range(n):
        await nc.jetstream().publish(dl.subject("ORDERS", "shipper"), f"order {i}".encode(),
                                     headers=dl.headers({"X-I": str(i)}, stream="ORDERS", seq=i + 1,
                                                        subject=subject_of(i), consumer="shipper",
                                                        deliveries=2,
                                                        reason=dl.REASON_MAX_DELIVERIES))
    await drain(nc)
    assert await sync_to_async(DeadLetter.objects.count)() == before + n
    await tail_orders(nc)


async def bulk_replay_twice(nc, users, n: int) -> None:
    """A bulk replay of every letter, then the same again: each reaches ORDERS once."""
    operator = users["operator"]
    for attempt in range(2):
        result = await sync_to_async(plans.start_job)(operator, "replay", {"consumer": "shipper"})
        job = await sync_to_async(Job.objects.get)(pk=result["job"])
        assert (job.state, job.done, job.failed) == ("done", n, 0), attempt
        assert await replayed_messages(nc) == n
    stored = await js.next_message(nc, "ORDERS", 1, "orders.eu.0")  # shards publish in any order
    letter = await sync_to_async(DeadLetter.objects.get)(stream_seq=1)
    assert stored["data"] == b"order 0" and stored["headers"]["X-I"] == "0"
    assert stored["headers"]["Nats-Msg-Id"] == replay.replay_msg_id(letter.dl_seq, "orders.eu.0",
                                                                 letter.generation)
    assert not any(k.startswith("Lucent-DL-") for k in stored["headers"])
    assert await sync_to_async(DeadLetter.objects.filter(status="replayed").count)() == n


async def job_done_at_least(job_id: int, n: int, timeout: float = 30.0) -> int:
    """Wait until a bulk job has recorded ``n`` letters done; how many it had then."""
    async def done():
        job = await sync_to_async(Job.objects.get)(pk=job_id)
        return job.done if job.done >= n else 0

    return await eventually(done, timeout, f"job {job_id} did {n} letters")
