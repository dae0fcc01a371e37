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


async def _receive_until(comm, text: str, timeout: float = 10.0) -> str:
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
            return frame
    raise AssertionError(f"{text!r} never arrived; got {len(seen)} frames")


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
        # A message to FIRST changes its row: the row comes, not the whole table.
        await nc.jetstream().publish("first.x", b"1")
        row = await _receive_until(comm, '<td class="n">1</td>')
        assert row.startswith('<tr id="stream-FIRST"') and 'id="streams-body"' not in row
    finally:
        await comm.disconnect()
        await nc.close()


async def test_the_stream_panel_sends_state_consumers_and_chart_points(collector):
    cookie = await sync_to_async(_session_cookie)()
    nc = await bus(collector.url)
    await js.add_stream(nc, {"name": "WORK", "subjects": ["work.>"], "storage": "memory"})
    await js.add_consumer(nc, "WORK", {"durable_name": "w1", "ack_policy": "explicit"})
    await asyncio.to_thread(collector.wait_for, lambda s: "WORK/w1" in s["consumers"])
    comm = await _connect("/ws/live/?panel=stream&name=WORK", cookie)
    assert (await comm.connect())[0]
    try:
        await _receive_until(comm, 'id="consumers-body"')
        await nc.jetstream().publish("work.a", b"job")
        frame = await _receive_until(comm, 'id="chart-point"')
        assert 'id="stream-state"' in frame
        row = await _receive_until(comm, 'id="consumer-WORK-w1"')
        assert ">1</span></td>" in row  # one pending (coloured by the pending rule)
    finally:
        await comm.disconnect()
        await nc.close()
