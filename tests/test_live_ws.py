"""/ws/live/: refused without login; with login, the panel, then only what changes."""

import asyncio

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Group, User
from django.test import Client

from lucent_bus import jetstream as js
from lucent_console.asgi import application

from .conftest import bus
from .support import WebsocketClient

pytestmark = pytest.mark.django_db(transaction=True)


def _session_cookie() -> str:
    user = User.objects.create_user("watcher", password="pw")
    user.groups.add(Group.objects.get_or_create(name="viewer")[0])  # no group: no socket
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


async def _connect(path: str, cookie: str | None = None) -> WebsocketClient:
    headers = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1")]
    if cookie:
        headers.append((b"cookie", f"sessionid={cookie}".encode()))
    return WebsocketClient(application, path, headers=headers)


async def _frames_until(comm, text: str, timeout: float = 10.0) -> list[str]:
    """Every frame received up to and including the first that holds ``text``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    seen = []
    while loop.time() < deadline:
        try:
            frame = await comm.receive_from(timeout=max(0.1, deadline - loop.time()))
        except TimeoutError:
            break
        seen.append(frame)
        if text in frame:
            return seen
    raise AssertionError(f"{text!r} never arrived; got {len(seen)} frames")


async def _receive_until(comm, text: str, timeout: float = 10.0) -> str:
    return (await _frames_until(comm, text, timeout))[-1]


async def test_it_refuses_anonymous_sockets():
    comm = await _connect("/ws/live/?panel=streams")
    connected, _ = await comm.connect()
    assert connected is False
    await comm.disconnect()


async def test_a_new_stream_arrives_live_and_unchanged_rows_are_not_resent(collector):
    cookie = await sync_to_async(_session_cookie)()
    nc = await bus(collector.url)
    await js.add_stream(nc, {"name": "FIRST", "subjects": ["first.>"], "storage": "memory"})
    await asyncio.to_thread(collector.wait_for, lambda s: "FIRST" in s["streams"])
    comm = await _connect("/ws/live/?panel=streams", cookie)
    connected, _ = await comm.connect()
    assert connected
    try:
        first = await _receive_until(comm, 'id="streams-body"')  # the whole panel on connect
        assert 'id="stream-FIRST"' in first
        await js.add_stream(nc, {"name": "SECOND", "subjects": ["second.>"], "storage": "memory"})
        body = await _receive_until(comm, 'id="stream-SECOND"')
        assert 'hx-swap-oob="true"' in body
    finally:
        await comm.disconnect()
    # Both rows settled: a stream's rate is known from its second sweep on (a change).
    await asyncio.to_thread(collector.wait_for, lambda s: all(
        s["streams"].get(name, {}).get("msgs_in_per_s") is not None for name in ("FIRST", "SECOND")))
    comm = await _connect("/ws/live/?panel=streams", cookie)
    assert (await comm.connect())[0]
    try:
        await _receive_until(comm, 'id="streams-body"')
        # Sweeps go on with nothing new: no row is sent again (only the live status).
        await asyncio.to_thread(collector.next_sweep)
        await asyncio.to_thread(collector.next_sweep)
        # A message to FIRST changes its row: that row comes, not the whole table, and
        # SECOND's row, unchanged, is never sent again.
        await nc.jetstream().publish("first.x", b"1")
        since = await _frames_until(comm, '<td class="n">1</td>')
        assert since[-1].startswith('<tr id="stream-FIRST"')
        assert len(since) >= 3  # the live status of the sweeps without news came first
        resent = [f[:300] for f in since if 'id="streams-body"' in f or 'id="stream-SECOND"' in f]
        assert resent == []
    finally:
        await comm.disconnect()
        await nc.close()


async def test_the_stream_panel_sends_state_consumers_and_chart_points(collector):
    cookie = await sync_to_async(_session_cookie)()
    nc = await bus(collector.url)
    await js.add_stream(nc, {"name": "WORK", "subjects": ["work.>"], "storage": "memory"})
    await js.add_consumer(nc, "WORK", {"durable_name": "w1", "ack_policy": "explicit"})
    # Settled: rates are known from a record's second sweep on (a change of its row).
    await asyncio.to_thread(collector.wait_for, lambda s: s["consumers"].get(
        "WORK/w1", {}).get("delivered_per_s") is not None)
    comm = await _connect("/ws/live/?panel=stream&name=WORK", cookie)
    assert (await comm.connect())[0]
    try:
        await _receive_until(comm, 'id="consumers-body"')
        await nc.jetstream().publish("work.a", b"job")
        seen = await _frames_until(comm, 'id="chart-point"')
        assert 'id="stream-state"' in seen[-1]
        # The page's stream is watched: its consumer row may come first, from the fast read.
        if not any('id="consumer-WORK-w1"' in f for f in seen):
            seen.append(await _receive_until(comm, 'id="consumer-WORK-w1"'))
        row = next(f for f in seen if 'id="consumer-WORK-w1"' in f)
        assert ">1</span></td>" in row  # one pending (coloured by the pending rule)
    finally:
        await comm.disconnect()
        await nc.close()


async def test_the_dead_letter_panel_sends_its_rows_on_connect(collector):
    """A letter indexed after the page was served but before its socket joined (or while
    the socket reconnected) had no push of its own: the socket sends the rows it joins with."""
    from django.utils import timezone

    from deadletters.models import DeadLetter

    cookie = await sync_to_async(_session_cookie)()
    await sync_to_async(DeadLetter.objects.create)(
        dl_seq=1, dl_subject="lucent.deadletter.EARLY.worker", stream="EARLY", stream_seq=1,
        subject="early.<b>one</b>", consumer="worker", deliveries=2, reason="max_deliveries",
        captured_at=timezone.now(), payload_available=False)
    comm = await _connect("/ws/live/?panel=deadletters", cookie)
    assert (await comm.connect())[0]
    try:
        rows = await _receive_until(comm, 'id="dl-body"')
        assert "early.&lt;b&gt;one&lt;/b&gt;" in rows and 'class="dl-new"' in rows
        assert "<b>one</b>" not in rows
    finally:
        await comm.disconnect()
