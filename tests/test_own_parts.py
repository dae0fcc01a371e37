"""The console's own streams and consumers are labelled and grouped apart; the message
browser opens at the newest messages with bodies collapsed. Real bus, real collector."""

import re

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Group, User
from django.test import Client

from lucent_bus import jetstream as js
from streams import topology
from streams.browser import newest_before

from .conftest import bus, run
from .support import WebsocketClient

pytestmark = pytest.mark.django_db(transaction=True)

OWN_HEADER = 'id="consumers-own"'


async def _setup(url, declared: bool = True):
    nc = await bus(url)
    if declared:
        await topology.apply(nc)
    await js.add_stream(nc, {"name": "SHOP", "subjects": ["shop.>"], "storage": "memory"})
    await js.add_consumer(nc, "SHOP", {"durable_name": "shipper", "ack_policy": "explicit"})
    jsn = nc.jetstream()
    for i in range(1, 31):
        body = b'{"n": %d, "note": "<script>alert(%d)</script>", "pad": "%s"}' % (i, i, b"x" * 300)
        await jsn.publish(f"shop.{'us' if i % 3 == 0 else 'eu'}.{i}", body)
    await nc.close()


@pytest.fixture
def shop(collector):
    """A business stream beside the declared topology, and the collector's own durable
    consumers and ordered consumers (its agent watch on AGENT_COORDINATION)."""
    run(_setup(collector.url))
    collector.wait_for(lambda s: s["streams"].get("SHOP", {}).get("messages") == 30
                       and "LUCENT_ADVISORIES/deadletter-capture" in s["consumers"]
                       and "DEAD_LETTERS/deadletter-index" in s["consumers"]
                       and any(c["own_live"] for c in s["consumers"].values()), timeout=20)
    return collector


@pytest.fixture
def shop_only(collector):
    """The business stream alone (the browser needs no more)."""
    run(_setup(collector.url, declared=False))
    collector.wait_for(lambda s: s["streams"].get("SHOP", {}).get("messages") == 30)
    return collector


def test_the_console_s_streams_and_consumers_are_labelled_and_grouped_apart(viewer_client, shop):
    snapshot = shop.wait_for(lambda s: True)
    assert snapshot["streams"]["DEAD_LETTERS"]["own"] and snapshot["streams"]["SHOP"]["own"] is None
    assert snapshot["consumers"]["SHOP/shipper"]["own"] is None
    listing = viewer_client.get("/streams/").content.decode()
    business, own = listing.split('id="streams-own"')
    assert 'id="stream-SHOP"' in business and 'id="stream-COMMANDS"' in business
    assert 'id="stream-DEAD_LETTERS"' in own and 'id="stream-LUCENT_ADVISORIES"' in own
    assert 'id="stream-DEAD_LETTERS"' not in business and "console</span>" not in business
    assert own.count('class="own-tag"') == 2
    assert 'title="The console\'s own: the dead-letter store' in own

    page = viewer_client.get("/streams/AGENT_COORDINATION/").content.decode()
    business, own = page.split(OWN_HEADER)
    assert 'id="consumer-AGENT_COORDINATION-risk-assessment"' in business
    assert "console live view" not in business and "own-tag" not in business
    own_rows = own.split("</tbody>")[0].split("<tr id=")[1:]
    assert own_rows and all("console live view" in r and 'class="own-tag"' in r for r in own_rows)
    assert "ordered · no ack" in own
    assert "wait 22" not in own.split("</tbody>")[0]  # not the ordered consumer's ack wait

    capture = viewer_client.get("/streams/LUCENT_ADVISORIES/").content.decode()
    assert 'id="consumer-LUCENT_ADVISORIES-deadletter-capture"' in capture.split(OWN_HEADER)[1]
    assert "advisories pile up" in capture and "own-tag" in capture

    shop_page = viewer_client.get("/streams/SHOP/").content.decode()
    assert 'id="consumer-SHOP-shipper"' in shop_page and OWN_HEADER not in shop_page
    assert "own-tag" not in shop_page.split("<h2>Messages</h2>")[0]


def _seqs(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'<strong><a href="/streams/SHOP/messages/(\d+)/"', html)]


def test_the_browser_opens_at_the_newest_with_bodies_collapsed(viewer_client, shop_only):
    detail = viewer_client.get("/streams/SHOP/").content.decode()
    assert 'hx-trigger="submit, load"' in detail  # reads at once, with no sequence given
    page = viewer_client.get("/streams/SHOP/messages/").content.decode()
    assert _seqs(page) == list(range(30, 10, -1))
    assert page.count('<details class="body">') == 20 and "<details open" not in page
    assert "&lt;script&gt;alert(30)&lt;/script&gt;" in page and "<script>alert" not in page
    assert "?before=11" in page and "?seq=1" in page  # older, oldest
    assert "newer" not in page and "newest" not in page  # already there

    older = viewer_client.get("/streams/SHOP/messages/?before=11").content.decode()
    assert _seqs(older) == list(range(10, 0, -1))
    assert "?seq=11" in older and "older" not in older and "newest" in older

    us = viewer_client.get("/streams/SHOP/messages/?subject=shop.us.>&count=4").content.decode()
    assert _seqs(us) == [30, 27, 24, 21] and "before=21" in us and "subject=shop.us." in us
    jump = viewer_client.get("/streams/SHOP/messages/?seq=5&count=3").content.decode()
    assert _seqs(jump) == [7, 6, 5] and "?count=3&amp;seq=8" in jump and "before=5" in jump

    for bad, words in (("before=abc", "whole number"), ("before=3&seq=1", "not both"),
                       ("subject=a..b", "not a valid subject")):
        response = viewer_client.get(f"/streams/SHOP/messages/?{bad}")
        assert response.status_code == 400 and words in response.content.decode(), bad


async def _session_cookie() -> str:
    def make() -> str:
        user = User.objects.create_user("own-watcher", password="pw")
        user.groups.add(Group.objects.get_or_create(name="viewer")[0])
        client = Client()
        client.force_login(user)
        return client.cookies["sessionid"].value

    return await sync_to_async(make)()


async def _first_frame_with(path: str, cookie: str, text: str) -> str:
    from lucent_console.asgi import application  # the ASGI app after Django is set up

    comm = WebsocketClient(application, path, headers=[
        (b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1"),
        (b"cookie", f"sessionid={cookie}".encode())])
    connected, _ = await comm.connect()
    assert connected
    try:
        for _ in range(20):
            frame = await comm.receive_from(timeout=10)
            if text in frame:
                return frame
        raise AssertionError(f"{text!r} never arrived")
    finally:
        await comm.disconnect()


async def test_the_live_panels_keep_the_groups_and_labels(shop):
    cookie = await _session_cookie()
    frame = await _first_frame_with("/ws/live/?panel=stream&name=AGENT_COORDINATION", cookie,
                                    'id="consumers-body"')
    assert "console live view" in frame.split(OWN_HEADER)[1]
    assert "console live view" not in frame.split(OWN_HEADER)[0]
    frame = await _first_frame_with("/ws/live/?panel=streams", cookie, 'id="streams-body"')
    assert 'id="stream-DEAD_LETTERS"' in frame.split('id="streams-own"')[1]


def test_newest_before_pages_back_over_gaps_and_sparse_subjects(nats_server):
    """The backward search on its own: a rare subject far back, deleted messages."""
    async def scenario():
        nc = await bus(nats_server.url)
        name = "OWN_PARTS_SPARSE"
        await js.add_stream(nc, {"name": name, "subjects": ["sparse.>"], "storage": "memory"})
        jsn = nc.jetstream()
        try:
            for i in range(1, 3001):
                await jsn.publish("sparse.rare" if i in (7, 1500) else "sparse.common", b"x")
            for seq in (2996, 2997, 2998):
                await js.delete_message(nc, name, seq)
            return (await newest_before(nc, name, "sparse.rare", 1, 3001, 5),
                    await newest_before(nc, name, "sparse.rare", 1, 1500, 5),
                    await newest_before(nc, name, ">", 1, 3001, 4),
                    await newest_before(nc, name, "sparse.none", 1, 3001, 4))
        finally:
            await js.delete_stream(nc, name)
            await nc.close()

    rare, before, newest, none = run(scenario())
    assert rare == [7, 1500] and before == [7]
    assert newest == [2994, 2995, 2999, 3000] and none == []


def test_the_overview_counts_business_streams_and_the_console_s_own_apart():
    from streams.operations import totals

    snapshot = {"streams": {"ORDERS": {"messages": 5, "bytes": 50, "own": None},
                            "DEAD_LETTERS": {"messages": 7, "bytes": 70, "own": "store"}},
                "consumers": {"ORDERS/w": {"num_pending": 2, "num_ack_pending": 0, "own": None},
                              "DEAD_LETTERS/deadletter-index": {"num_pending": 9,
                                                                "num_ack_pending": 0,
                                                                "own": "index"}}}
    figures = totals(snapshot)
    assert (figures["streams"], figures["own_streams"], figures["messages"]) == (1, 1, 5)
    assert (figures["consumers"], figures["own_consumers"], figures["pending"]) == (1, 1, 2)
