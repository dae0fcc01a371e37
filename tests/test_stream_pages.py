"""Stream pages, API and /metrics, fed by a real collector over a real bus."""

import re

import pytest
from rest_framework.authtoken.models import Token

from lucent_bus import jetstream as js

from .conftest import bus, run

pytestmark = pytest.mark.django_db


async def _setup(url, wq=False):
    nc = await bus(url)
    await js.add_stream(nc, {"name": "ORDERS", "subjects": ["orders.>"], "storage": "file",
                             "retention": "workqueue" if wq else "limits"})
    await js.add_consumer(nc, "ORDERS", {"durable_name": "shipper", "ack_policy": "explicit"})
    jsn = nc.jetstream()
    await jsn.publish("orders.eu.1", b'{"messageId": "m-1", "messageType": "OrderPlaced", '
                                     b'"correlationId": "c-1", '
                                     b'"payload": {"note": "<script>alert(1)</script>"}}')
    await jsn.publish("orders.eu.2", b"<script>alert(2)</script>", headers={"X-Evil": "<b>bold</b>"})
    await jsn.publish("orders.us.3", b"\x00\xff binary")
    await nc.close()


def _shown(html: str) -> list[int]:
    """The sequences of the messages a browser page lists, in its order."""
    return [int(n) for n in re.findall(r'<strong><a href="/streams/ORDERS/messages/(\d+)/"', html)]


@pytest.fixture
def orders(collector):
    run(_setup(collector.url))
    collector.wait_for(lambda s: s["streams"].get("ORDERS", {}).get("messages") == 3)
    return collector


def test_the_list_shows_every_stream_sorted_filtered_and_paged(viewer_client, orders):
    page = viewer_client.get("/streams/").content.decode()
    assert 'id="stream-ORDERS"' in page and "orders.&gt;" in page
    assert viewer_client.get("/streams/?q=nomatch").content.decode().count('id="stream-') == 0
    page = viewer_client.get("/streams/?sort=messages&desc=1").content.decode()
    assert 'id="stream-ORDERS"' in page


def test_the_list_pages_a_thousand_streams(viewer_client, collector):
    async def many(url):
        nc = await bus(url)
        for i in range(120):
            await js.add_stream(nc, {"name": f"S{i:04d}", "subjects": [f"s{i}.>"], "storage": "memory"})
        await nc.close()

    run(many(collector.url))
    collector.wait_for(lambda s: len(s["streams"]) == 120)
    first = viewer_client.get("/streams/").content.decode()
    assert first.count('id="stream-') == 50 and "page 1 of 3" in first
    last = viewer_client.get("/streams/?page=3").content.decode()
    assert last.count('id="stream-') == 20 and 'id="stream-S0119"' in last


def test_the_detail_page_shows_state_consumers_and_top_subjects(viewer_client, orders):
    page = viewer_client.get("/streams/ORDERS/").content.decode()
    assert 'id="stream-state"' in page and 'id="consumer-ORDERS-shipper"' in page
    assert "orders.eu.1" in page  # top subjects
    assert viewer_client.get("/streams/NOPE/").status_code == 404


def test_the_message_browser_renders_payloads_as_text(viewer_client, orders):
    page = viewer_client.get("/streams/ORDERS/messages/?seq=1").content.decode()
    assert "<script>alert" not in page and "<b>bold</b>" not in page
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "OrderPlaced" in page and "correlation c-1" in page
    assert "00 ff 20 62" in page  # binary shown as hex
    only_us = viewer_client.get("/streams/ORDERS/messages/?subject=orders.us.>").content.decode()
    assert _shown(only_us) == [3]
    # With no start it opens at the newest, newest first; a jump reads from there on.
    assert _shown(viewer_client.get("/streams/ORDERS/messages/").content.decode()) == [3, 2, 1]
    paged = viewer_client.get("/streams/ORDERS/messages/?seq=1&count=1").content.decode()
    assert _shown(paged) == [1] and "?count=1&amp;seq=2" in paged  # the newer page
    bad = viewer_client.get("/streams/ORDERS/messages/?seq=abc")
    assert bad.status_code == 400 and "whole number" in bad.content.decode()


def test_the_message_browser_works_on_a_work_queue_stream(viewer_client, collector):
    run(_setup(collector.url, wq=True))
    collector.wait_for(lambda s: s["streams"].get("ORDERS", {}).get("messages") == 3)
    page = viewer_client.get("/streams/ORDERS/messages/?seq=2").content.decode()
    assert _shown(page) == [3, 2] and "?before=2" in page  # and an older page
    newest = viewer_client.get("/streams/ORDERS/messages/?count=1").content.decode()
    assert _shown(newest) == [3]


def test_the_api_lists_streams_and_consumers_with_the_interface_keys(client, users, orders):
    token = Token.objects.create(user=users["viewer"])
    auth = {"HTTP_AUTHORIZATION": f"Token {token.key}"}
    body = client.get("/api/v1/streams/", **auth).json()
    row = next(r for r in body["results"] if r["name"] == "ORDERS")
    for key in ("name", "subjects", "retention", "storage", "replicas", "messages", "bytes",
                "first_seq", "last_seq", "consumer_count"):
        assert key in row
    detail = client.get("/api/v1/streams/ORDERS/", **auth).json()
    assert "consumers" in detail and "cluster" in detail
    consumers = client.get("/api/v1/streams/ORDERS/consumers/", **auth).json()
    for key in ("name", "stream", "num_pending", "num_ack_pending", "num_redelivered",
                "num_waiting", "delivered_stream_seq", "ack_floor_stream_seq", "max_deliver"):
        assert key in consumers[0]
    assert consumers[0]["num_pending"] == 3
    assert client.get("/api/v1/streams/NOPE/", **auth).status_code == 404
    assert client.get("/api/v1/streams/").status_code in (401, 403)


def test_metrics_come_from_the_snapshot(client, orders, settings):
    text = client.get("/metrics").content.decode()
    assert 'jetstream_stream_messages{stream_name="ORDERS"} 3' in text
    assert 'jetstream_consumer_num_pending{stream_name="ORDERS",consumer_name="shipper"} 3' in text
    assert "lucent_bus_up 1" in text
    settings.LUCENT_METRICS_TOKEN = "metrics-secret"
    assert client.get("/metrics").status_code == 403
    ok = client.get("/metrics", HTTP_AUTHORIZATION="Bearer metrics-secret")
    assert ok.status_code == 200
    settings.LUCENT_METRICS_TOKEN = ""
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 403


def test_pages_say_when_no_data_can_be_had(viewer_client, monkeypatch):
    from lucent_bus import embedded

    monkeypatch.setenv("NATS_URL", f"nats://127.0.0.1:{embedded.free_port()}")
    page = viewer_client.get("/streams/")
    assert page.status_code == 200
    assert "no data from the collector yet" in page.content.decode()
    assert viewer_client.get("/api/v1/streams/").status_code == 503
