"""The console against nats-server 2.9 (Debian's package, /usr/sbin/nats-server), started
here on a free port with a store of its own (never the system service on 4222).

Topology, the collector's sweep, the leader lease, the core pages and the dead-letter
capture of a MAX_DELIVERIES advisory must all work there as on the current release.
"""

import asyncio

import pytest
from asgiref.sync import sync_to_async

from deadletters import capture as dl_capture
from deadletters import index as dl_index
from deadletters.models import DeadLetter
from lucent_bus import deadletters as dl
from lucent_bus import jetstream as js
from lucent_bus.lease import Lease
from streams import topology

from .conftest import CollectorThread, bus, run

pytestmark = pytest.mark.django_db(transaction=True)


async def _provision_and_fail_one(url: str) -> dict:
    """topology apply, a lease, and one job that exhausts max_deliver (a waiting pull
    makes the server advise MAX_DELIVERIES), captured and indexed."""
    nc = await bus(url)
    try:
        changes = await topology.apply(nc)
        lease, rival = Lease(nc, "compat", 2, "a"), Lease(nc, "compat", 2, "b")
        leased = [await lease.acquire(), await rival.acquire()]
        await lease.renew()
        await lease.release()
        leased.append(await rival.acquire())
        racers = [Lease(nc, "race", 2, f"r{i}") for i in range(8)]
        leased.append(sum(await asyncio.gather(*(r.acquire() for r in racers))))

        await js.add_stream(nc, {"name": "ORDERS", "subjects": ["orders.>"], "storage": "file"})
        await js.add_consumer(nc, "ORDERS", {"durable_name": "shipper", "ack_policy": "explicit",
                                             "max_deliver": 2})
        await js.publish(nc, "orders.eu.1", b'{"messageId": "m-1", "messageType": "ShipOrder"}')
        sub = await nc.jetstream().pull_subscribe_bind("shipper", "ORDERS")
        for _ in range(2):
            for m in await sub.fetch(1, timeout=5):
                await m.nak()
        try:
            await sub.fetch(1, timeout=1)
        except Exception:
            pass
        cap = await nc.jetstream().pull_subscribe_bind(dl_capture.CAPTURE_CONSUMER,
                                                       dl_capture.ADVISORY_STREAM)
        idx = await nc.jetstream().pull_subscribe_bind(dl_index.INDEX_CONSUMER, dl.STREAM)
        for _ in range(20):
            await dl_capture.capture_batch(nc, cap)
            await dl_index.index_batch(nc, idx)
            if await sync_to_async(DeadLetter.objects.exists)():
                break
            await asyncio.sleep(0.2)
        return {"changes": changes, "leased": leased, "version": js.server_summary(nc)["version"]}
    finally:
        await nc.close()


def test_the_console_works_on_nats_server_29(old_server, viewer_client):
    done = run(_provision_and_fail_one(old_server.url))
    assert done["version"].startswith("2.9"), old_server.version
    assert {c.stream for c in done["changes"]} >= {s.name for s in topology.DECLARED}
    assert all(c.action in ("created", "unchanged") for c in done["changes"])
    assert done["leased"] == [True, False, True, 1]  # one holder; a release hands over
    letter = DeadLetter.objects.get()
    assert (letter.stream, letter.consumer, letter.reason, letter.deliveries) == (
        "ORDERS", "shipper", dl.REASON_MAX_DELIVERIES, 2)
    assert letter.message_type == "ShipOrder" and letter.payload_available

    collector = CollectorThread(old_server.url)
    try:
        collector.wait_for(lambda s: s["ok"] and "ORDERS" in s["streams"]
                           and "ORDERS/shipper" in s["consumers"])
        pages = {"/": "nats-server 2.9", "/streams/": "DOMAIN_EVENTS", "/streams/ORDERS/": "shipper",
                 "/deadletters/": "ShipOrder", "/services/": "", "/api/v1/streams/": "LUCENT_ADVISORIES"}
        for path, text in pages.items():
            response = viewer_client.get(path)
            assert response.status_code == 200, (path, response.status_code)
            assert text in response.content.decode(), path
    finally:
        collector.stop()
