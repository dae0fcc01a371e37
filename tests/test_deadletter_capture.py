"""Dead letters: failed and terminated messages are captured into DEAD_LETTERS and indexed;
advisories wait while the capture is stopped; the index can be rebuilt from the stream."""

import pytest
from asgiref.sync import sync_to_async

from deadletters import capture as dl_capture
from deadletters import index as dl_index
from deadletters.models import DeadLetter
from lucent_bus import deadletters as dl
from lucent_bus import jetstream as js
from streams import topology

from .deadletter_bus import drain, fail, work_stream

pytestmark = pytest.mark.django_db(transaction=True)


async def test_failed_and_terminated_messages_become_dead_letters(fresh_nc):
    await work_stream(fresh_nc)
    jsn = fresh_nc.jetstream()
    await jsn.publish("orders.eu.1", b'{"messageId": "m-1", "messageType": "ShipOrder", '
                                     b'"correlationId": "c-1"}', headers={"X-Tenant": "acme"})
    await jsn.publish("orders.eu.2", b"terminate me")
    await fail(fresh_nc, {b"terminate me"}, 2)
    await drain(fresh_nc)
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
    await work_stream(fresh_nc, retention="workqueue")
    await fresh_nc.jetstream().publish("orders.x", b"gone")
    await fail(fresh_nc, {b"gone"}, 1)
    await drain(fresh_nc)
    row = await sync_to_async(DeadLetter.objects.get)()
    assert row.reason == dl.REASON_TERMINATED and row.stream_seq == 1
    assert row.payload_available is False and row.payload_kind == "missing"


async def test_advisories_wait_while_the_capture_is_stopped_and_a_crash_does_not_double(fresh_nc):
    await work_stream(fresh_nc)
    for i in range(30):
        await fresh_nc.jetstream().publish(f"orders.{i}", f"job {i}".encode())
    await fail(fresh_nc, set(), 30)  # 30 MAX_DELIVERIES advisories, nobody capturing
    info = await js.stream_info(fresh_nc, dl_capture.ADVISORY_STREAM)
    assert info["state"]["messages"] == 30  # all kept, none taken
    # A capture that dies after publishing and before acking (the worst moment):
    cap = await fresh_nc.jetstream().pull_subscribe_bind(dl_capture.CAPTURE_CONSUMER,
                                                        dl_capture.ADVISORY_STREAM)
    first = await cap.fetch(10, timeout=1)
    assert len(first) == 10
    for m in first:
        await dl_capture.capture_one(fresh_nc, m.data)  # published, never acked
    await cap.unsubscribe()
    await js.api(fresh_nc, f"CONSUMER.DELETE.{dl_capture.ADVISORY_STREAM}.{dl_capture.CAPTURE_CONSUMER}")
    await topology.apply(fresh_nc)  # a new capture consumer: every advisory again
    await drain(fresh_nc)
    assert (await js.stream_info(fresh_nc, dl.STREAM))["state"]["messages"] == 30
    assert await sync_to_async(DeadLetter.objects.count)() == 30
    seqs = await sync_to_async(list)(DeadLetter.objects.values_list("stream_seq", flat=True))
    assert sorted(seqs) == list(range(1, 31))


async def test_the_index_can_be_rebuilt_from_the_stream(fresh_nc):
    await work_stream(fresh_nc)
    await fresh_nc.jetstream().publish("orders.1", b"x")
    await fresh_nc.jetstream().publish(dl.subject("ORDERS", "manual"), b"explicit one",
                                       headers={dl.H_REASON: "explicit", dl.H_ERROR: "boom"})
    await fail(fresh_nc, set(), 1)
    await drain(fresh_nc)
    assert await sync_to_async(DeadLetter.objects.count)() == 2
    await sync_to_async(DeadLetter.objects.all().delete)()
    assert await dl_index.reindex(fresh_nc) == 2
    explicit = await sync_to_async(DeadLetter.objects.get)(consumer="manual")
    assert explicit.reason == "explicit" and explicit.error == "boom" and explicit.stream == "ORDERS"
    assert (await sync_to_async(DeadLetter.objects.get)(consumer="shipper")).stream_seq == 1


def test_the_collector_captures_and_indexes_dead_letters_and_their_trace_as_they_come(
        fresh_server, monkeypatch):
    """The collector's own loop (``Collector.run``, as the test fixture runs it): no
    capture by hand."""
    from traces.models import EnvelopeRecord

    from .conftest import CollectorThread, bus, run
    from .support import wait_until

    monkeypatch.setenv("NATS_URL", fresh_server.url)

    async def failing():
        nc = await bus(fresh_server.url)
        await work_stream(nc)
        await nc.jetstream().publish("orders.eu.7", b'{"messageId": "m-7", "messageType": '
                                                    b'"ShipOrder", "correlationId": "c-7"}')
        await nc.close()

    async def fail_it():
        nc = await bus(fresh_server.url)
        await fail(nc, set(), 1)
        await nc.close()

    run(failing())  # topology first: the collector follows every stream from its start
    collector = CollectorThread(fresh_server.url)
    try:
        run(fail_it())
        letter = wait_until(lambda: DeadLetter.objects.first(), 20, "the letter is indexed")
        assert (letter.stream, letter.stream_seq, letter.reason) == ("ORDERS", 1,
                                                                    dl.REASON_MAX_DELIVERIES)
        traced = wait_until(lambda: EnvelopeRecord.objects.filter(stream=dl.STREAM).first(), 20,
                            "the trace indexer has the dead letter")
        assert traced.correlation_id == "c-7" and traced.origin_stream == "ORDERS"
    finally:
        collector.stop()
