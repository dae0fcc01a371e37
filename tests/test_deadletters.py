"""Dead letters: capture, index, replay exactly once, purge, roles, audit."""

import asyncio

import pytest
from asgiref.sync import sync_to_async

from lucent_console.bus import deadletters as dl
from lucent_console.bus import jetstream as js
from lucent_console.models import AuditRecord
from streams import capture, dlq, topology
from streams.models import DeadLetter, Job

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
    cap = await nc.jetstream().pull_subscribe_bind(capture.CAPTURE_CONSUMER, capture.ADVISORY_STREAM)
    idx = await nc.jetstream().pull_subscribe_bind(capture.INDEX_CONSUMER, dl.STREAM)
    idle = 0
    while idle < 2:
        n = await capture.capture_batch(nc, cap) + await capture.index_batch(nc, idx)
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
    info = await js.stream_info(fresh_nc, capture.ADVISORY_STREAM)
    assert info["state"]["messages"] == 30
    # A capture that dies after publishing and before acking (the worst moment):
    cap = await fresh_nc.jetstream().pull_subscribe_bind(capture.CAPTURE_CONSUMER,
                                                        capture.ADVISORY_STREAM)
    first = await cap.fetch(10, timeout=1)
    for m in first:
        await capture.capture_one(fresh_nc, m.data)  # published, never acked
    await fresh_nc.jetstream().consumer_info(capture.ADVISORY_STREAM, capture.CAPTURE_CONSUMER)
    await js.api(fresh_nc, f"CONSUMER.DELETE.{capture.ADVISORY_STREAM}.{capture.CAPTURE_CONSUMER}")
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
    assert await capture.reindex(fresh_nc) == 2
    explicit = await sync_to_async(DeadLetter.objects.get)(consumer="manual")
    assert explicit.reason == "explicit" and explicit.error == "boom" and explicit.stream == "ORDERS"
