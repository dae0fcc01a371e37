"""Watched streams: a stream page open in a browser follows its stream between full sweeps.

The real collector (``collector`` fixture) sweeps everything at a long interval; a
socket showing one stream makes the web side announce it, and the collector's fast task
carries that stream's changes (a publish, an ack, a pause, its deletion) to the socket
before the next full sweep. A stream no page shows changes only at a full sweep.
Watches expire unrenewed, and no more than ``MAX_WATCHED`` are kept.
"""

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import sync_to_async

from lucent_bus import jetstream as js
from lucent_bus import notify_subjects, watch_streams
from lucent_console import watched
from lucent_console.asgi import application
from streams.live import relay

from .conftest import bus
from .support import WebsocketClient, wait_until
from .test_live_ws import _session_cookie

pytestmark = pytest.mark.django_db(transaction=True)
LONG_S = 60.0  # the full-sweep interval while a test looks between two full sweeps


async def _socket(path: str, cookie: str) -> WebsocketClient:
    comm = WebsocketClient(application, path, headers=[
        (b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1"),
        (b"cookie", f"sessionid={cookie}".encode())])
    connected, _ = await comm.connect()
    assert connected
    return comm


async def _until(comm, marker: str, holds=lambda: True, timeout: float = 10.0) -> str:
    """The first frame holding ``marker`` received once ``holds()`` (on the relay's copy
    of the snapshot, which the frame was rendered from) is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            frame = await comm.receive_from(timeout=max(0.05, deadline - loop.time()))
        except TimeoutError:
            break
        if marker in frame and holds():
            return frame
    raise AssertionError(f"{marker!r} never arrived with the condition holding")


async def _drain(comm) -> list[str]:
    """The frames sent so far (without waiting: a receive that times out ends the app)."""
    await asyncio.sleep(0.2)
    queue, frames = comm.comm.output_queue, []
    while not queue.empty():
        frames.append(queue.get_nowait().get("text") or "")
    return frames


def _full_sweep(collector) -> dict:
    """Have the collector run one full sweep now (in its own loop) and return it."""
    return asyncio.run_coroutine_threadsafe(collector.collector.sweep_once(),
                                            collector.loop).result(10)


def _consumer(name: str) -> dict:
    return (relay.snapshot or {}).get("consumers", {}).get(name) or {}


async def test_a_watched_stream_is_live_between_full_sweeps_and_an_unwatched_one_is_not(collector):
    cookie = await sync_to_async(_session_cookie)()
    nc = await bus(collector.url)
    for name in ("WATCHED", "OTHER"):
        await js.add_stream(nc, {"name": name, "subjects": [f"{name.lower()}.>"],
                                 "storage": "memory"})
        for i in range(3):
            await js.publish(nc, f"{name.lower()}.x", b"m%d" % i)
    await js.add_consumer(nc, "WATCHED", {"durable_name": "worker", "ack_policy": "explicit"})
    await asyncio.to_thread(collector.wait_for, lambda s: s["streams"].get("OTHER", {}).get(
        "messages") == 3 and "WATCHED/worker" in s["consumers"])
    collector.collector.interval = LONG_S
    full_at = (await asyncio.to_thread(collector.next_sweep))["at"]  # the last full sweep
    page = await _socket("/ws/live/?panel=stream&name=WATCHED", cookie)
    listing = await _socket("/ws/live/?panel=streams", cookie)
    try:
        await _until(page, 'id="stream-state"')
        await _until(listing, 'id="streams-body"')
        assert relay.watching == {"WATCHED": 1}
        await asyncio.to_thread(wait_until, lambda: "WATCHED" in collector.collector.watched.expires,
                                5, "the collector watches the stream the page shows")

        for i in range(4):  # a publish: the page's figures
            await js.publish(nc, "other.x", b"o%d" % i)
            await js.publish(nc, "watched.x", b"w%d" % i)
        frame = await _until(page, 'id="stream-state"',
                             lambda: relay.snapshot["streams"]["WATCHED"]["messages"] == 7)
        assert "<strong>7</strong>" in frame
        sub = await nc.jetstream().pull_subscribe_bind("worker", stream="WATCHED")
        msgs = await sub.fetch(1, timeout=5)  # an ack: the consumer's row
        await msgs[0].ack_sync()
        await _until(page, 'id="consumer-WATCHED-worker"',
                     lambda: _consumer("WATCHED/worker").get("ack_floor_stream_seq") == 1)
        until = (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
        await js.api(nc, "CONSUMER.PAUSE.WATCHED.worker", {"pause_until": until})  # a pause
        frame = await _until(page, 'id="consumer-WATCHED-worker"',
                             lambda: _consumer("WATCHED/worker").get("paused"))
        assert "paused, resumes" in frame
        # All of it before the next full sweep; the unwatched stream was not carried.
        assert collector.snapshot["at"] == full_at
        assert relay.snapshot["streams"]["OTHER"]["messages"] == 3
        assert not any('id="stream-OTHER"' in f for f in await _drain(listing))

        swept = await asyncio.to_thread(_full_sweep, collector)  # the unwatched one: at a full sweep
        assert swept["at"] > full_at
        frame = await _until(listing, 'id="stream-OTHER"',
                             lambda: relay.snapshot["streams"]["OTHER"]["messages"] == 7)
        assert '<td class="n">7</td>' in frame

        await js.delete_stream(nc, "WATCHED")  # deleted: gone at once, and no longer watched
        await asyncio.to_thread(wait_until, lambda: "WATCHED" not in collector.snapshot["streams"]
                                and "WATCHED" not in collector.collector.watched.expires, 5,
                                "the deleted stream leaves the snapshot and the watch list")
        assert collector.snapshot["at"] == swept["at"]  # the fast task, not a full sweep
        await relay.announce_watched()  # the open page still renews it: refused, unknown
        await nc.flush()
        await asyncio.sleep(0.2)
        assert "WATCHED" not in collector.collector.watched.expires
    finally:
        await page.disconnect()
        await listing.disconnect()
        await nc.close()
    assert relay.watching == {}  # closed pages renew nothing


async def test_watches_expire_the_cap_holds_and_bad_announcements_are_dropped(
        collector, monkeypatch, caplog):
    monkeypatch.setattr(watched, "WATCH_TTL_S", 1.0)
    nc = await bus(collector.url)
    names = [f"S{i:02d}" for i in range(watched.MAX_WATCHED + 5)]
    try:
        for name in names:
            await js.add_stream(nc, {"name": name, "subjects": [f"s.{name}"], "storage": "memory"})
        await asyncio.to_thread(collector.wait_for, lambda s: all(n in s["streams"] for n in names))
        w = collector.collector.watched
        for body in (b"not json", b'{"S00": 1}', json.dumps(["a.b", "*", 5, "", "NOPE"]).encode()):
            await nc.publish(notify_subjects.LIVE_WATCH, body)
        await nc.flush()
        await asyncio.sleep(0.2)
        assert w.expires == {}
        with caplog.at_level(logging.WARNING, "lucent.collector"):
            for _ in range(3):  # renewed three times: still the same first fifty
                await watch_streams.announce(nc, names)
                await nc.flush()
            await asyncio.to_thread(wait_until, lambda: w.refused >= 15, 5, "announcements read")
        assert sorted(w.expires) == names[:watched.MAX_WATCHED]
        assert len([r for r in caplog.records if "more than" in r.getMessage()]) == 1
        ticks = w.ticks
        await asyncio.to_thread(wait_until, lambda: w.ticks > ticks, 5, "fast sweeps run")
        await asyncio.to_thread(wait_until, lambda: not w.expires, 5, "the watches expire")
        ticks = w.ticks
        await asyncio.sleep(0.3)
        assert w.ticks == ticks  # nothing watched: the fast task reads nothing
    finally:
        await nc.close()


def test_announcements_are_parsed_strictly():
    assert watch_streams.parse(b"") == []
    assert watch_streams.parse(b"\xff") == []
    assert watch_streams.parse(b'"ORDERS"') == []
    assert watch_streams.parse(b'["ORDERS", "a b", "x.y", ">", null, "' + b"L" * 300 + b'"]') == [
        "ORDERS"]


async def test_the_fast_sweep_survives_a_bus_outage_quietly(collector, fresh_server, caplog):
    nc = await bus(collector.url)
    await js.add_stream(nc, {"name": "KEPT", "subjects": ["kept.>"], "storage": "file"})
    await asyncio.to_thread(collector.wait_for, lambda s: "KEPT" in s["streams"])
    collector.collector.interval = LONG_S
    full_at = (await asyncio.to_thread(collector.next_sweep))["at"]
    w = collector.collector.watched
    await watch_streams.announce(nc, ["KEPT"])
    await nc.close()
    await asyncio.to_thread(wait_until, lambda: "KEPT" in w.expires, 5, "KEPT watched")
    with caplog.at_level(logging.INFO, "lucent.collector"):
        await asyncio.to_thread(fresh_server.stop)
        await asyncio.sleep(2.0)  # some 40 ticks' worth of a bus away
        await asyncio.to_thread(fresh_server.start().wait)
        nc = await bus(collector.url)
        try:
            await js.publish(nc, "kept.x", b"after")  # seen by the fast sweep once reconnected
            await asyncio.to_thread(wait_until, lambda: collector.snapshot["streams"]["KEPT"][
                "messages"] == 1, 15, "the watched stream followed again after the outage")
        finally:
            await nc.close()
    assert collector.snapshot["at"] == full_at  # no full sweep carried it
    said = [r.getMessage() for r in caplog.records if "watched streams" in r.getMessage()]
    assert len([m for m in said if "not swept" in m]) <= 1, said  # no log flood


async def test_a_consumer_page_follows_its_consumer_between_full_sweeps(collector):
    cookie = await sync_to_async(_session_cookie)()
    nc = await bus(collector.url)
    await js.add_stream(nc, {"name": "CPAGE", "subjects": ["cpage.>"], "storage": "memory"})
    await js.add_consumer(nc, "CPAGE", {"durable_name": "worker", "ack_policy": "explicit"})
    await asyncio.to_thread(collector.wait_for, lambda s: "CPAGE/worker" in s["consumers"])
    collector.collector.interval = LONG_S
    full_at = (await asyncio.to_thread(collector.next_sweep))["at"]
    page = await _socket("/ws/live/?panel=consumer&name=CPAGE&consumer=worker", cookie)
    try:
        await _until(page, 'id="consumer-live"')
        assert relay.watching == {"CPAGE": 1}  # the consumer page watches its stream
        await asyncio.to_thread(wait_until, lambda: "CPAGE" in collector.collector.watched.expires,
                                5, "the collector watches the consumer's stream")
        await js.publish(nc, "cpage.x", b"one")
        frame = await _until(page, 'id="consumer-live"',
                             lambda: _consumer("CPAGE/worker").get("num_pending") == 1)
        assert "Pending</th><td class=\"n\">1<" in frame
        until = (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
        await js.api(nc, "CONSUMER.PAUSE.CPAGE.worker", {"pause_until": until})
        frame = await _until(page, 'id="consumer-live"',
                             lambda: _consumer("CPAGE/worker").get("paused"))
        assert "paused, resumes" in frame
        assert collector.snapshot["at"] == full_at  # no full sweep carried it
    finally:
        await page.disconnect()
        await nc.close()
