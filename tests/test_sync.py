"""lucent_bus.sync, the one way synchronous code reaches the bus (issue 13)."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time

import pytest
from django.core.management import call_command
from nats.errors import NoServersError

from lucent_bus import embedded, sync

from .conftest import bus


async def _connected(nc, extra):
    return nc, nc.is_connected, extra


async def _fails(nc):
    raise ValueError("the work failed")


def test_with_own_client_runs_on_a_connection_it_closes_afterwards(nats_server):
    nc, connected, extra = sync.with_own_client("test-own", _connected, 7)
    assert connected and extra == 7
    assert nc.is_closed
    with pytest.raises(ValueError, match="the work failed"):
        sync.with_own_client("test-own", _fails)


def test_with_own_client_fails_at_once_without_a_bus_unless_told_to_wait(monkeypatch, tmp_path):
    port = embedded.free_port()
    monkeypatch.setenv("NATS_URL", f"nats://127.0.0.1:{port}")
    with pytest.raises(NoServersError):
        sync.with_own_client("test-own", _connected, 1)

    server = embedded.single(tmp_path / "js", port=port)
    results = []
    waiting = threading.Thread(target=lambda: results.append(
        sync.with_own_client("test-own", _connected, 2, wait=True)))
    waiting.start()
    time.sleep(1.0)  # it is retrying meanwhile
    assert not results
    server.start().wait()
    try:
        waiting.join(30)
        assert results and results[0][1] and results[0][2] == 2
    finally:
        server.stop()


def test_run_gives_the_result_and_cancels_a_call_that_outlives_its_timeout():
    started, cancelled = threading.Event(), threading.Event()

    async def slow():
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def quick(x):
        return x * 2

    assert sync.run(quick, 21) == 42
    with pytest.raises(TimeoutError):
        sync.run(slow, timeout=0.2)
    assert started.is_set() and cancelled.wait(5)


def test_the_topology_command_applies_and_diffs_on_its_own_connection(fresh_server, monkeypatch):
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    out = io.StringIO()
    call_command("topology", "apply", "--json", stdout=out)
    applied = json.loads(out.getvalue())
    assert applied and all(c["action"] in ("created", "unchanged", "updated") for c in applied)
    out = io.StringIO()
    call_command("topology", "diff", "--json", stdout=out)  # SystemExit(1) on drift
    assert {d["state"] for d in json.loads(out.getvalue())} <= {"ok", "extra"}


# Python 3.11's asyncio.wait_for returns a result that arrived just as its task was
# cancelled, and the cancel is lost (lucent_bus.cancel). A per-call loop's teardown
# (asgiref's asyncio.run, from a synchronous view outside an ASGI server) cancels the
# web connection's watchdog and the relay's watch loop once and waits for them: a loop
# that lost its cancel hung the view, then the test process at exit (CI, twice).

async def _cancelled_as_its_result_arrives(start) -> float:
    """Start a loop whose await is ``wait_for`` on a gate; cancel it in the instant
    between the gate's result and the task running again; how long it took to end."""
    gate, entered = asyncio.get_running_loop().create_future(), asyncio.Event()

    async def waits(*args, **kwargs):
        entered.set()
        return await asyncio.wait_for(gate, 30)

    task = start(waits)
    await asyncio.wait_for(entered.wait(), 10)
    gate.set_result(0)
    await asyncio.sleep(0)  # the gate's callback ran: the task is due, not yet resumed
    assert not task.done()
    task.cancel()
    began = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)  # TimeoutError here: the loop ignored its cancel
    return time.monotonic() - began


def test_the_web_connection_watchdog_ends_when_a_cancel_meets_a_ready_result(nats_server):
    from lucent_bus.client import SharedClient

    async def main():
        client = SharedClient("test-watchdog")
        nc = await client.get()
        try:
            def start(waits):
                client._probe = waits  # the ping's wait_for, the race made certain
                return client._watchdogs[id(asyncio.get_running_loop())]

            took = await _cancelled_as_its_result_arrives(start)
            print(f"ended {took * 1000:.1f} ms after the cancel")
            assert took < 1.0
        finally:
            await nc.close()

    asyncio.run(main())


def test_the_relay_watch_loop_ends_when_a_cancel_meets_a_ready_result(settings):
    from streams.live import Relay

    settings.LUCENT_SWEEP_INTERVAL = 0.5

    async def main():
        relay = Relay()
        relay._loop = loop = asyncio.get_running_loop()
        try:
            def start(waits):
                relay._recover = waits  # its bus reads wait that way
                return loop.create_task(relay._watch(loop))

            took = await _cancelled_as_its_result_arrives(start)
            print(f"ended {took * 1000:.1f} ms after the cancel")
            assert took < 1.0
        finally:
            relay._loop = None  # a loop that ignored the cancel stops at its next turn

    asyncio.run(main())


def test_a_message_callback_that_loses_its_cancel_still_ends_its_subscription(nats_server):
    """nats-py runs a callback in the subscription's task and loops on its queue until a
    CancelledError comes out of the callback; one lost inside it (a wait_for whose answer
    arrived with the cancel) kept the task waiting forever. That is what hung the fuzz
    run's GET /api/v1/services/ for 40 s: the relay's callbacks on a per-call loop."""
    from lucent_bus import cancel

    async def main():
        nc = await bus(nats_server.url)
        try:
            gate, entered = asyncio.get_running_loop().create_future(), asyncio.Event()

            @cancel.callback  # without it, the task below never ends
            async def on_msg(msg):
                entered.set()
                await asyncio.wait_for(gate, 30)

            sub = await nc.subscribe("lucent.test.cancel", cb=on_msg)
            await nc.publish("lucent.test.cancel", b"x")
            await asyncio.wait_for(entered.wait(), 10)
            task = sub._wait_for_msgs_task
            gate.set_result(0)
            await asyncio.sleep(0)  # the answer is in; the callback has not run on yet
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=5)
            assert done, "the subscription's task went on waiting after its cancel"
        finally:
            await nc.close()

    asyncio.run(main())


def test_a_call_outside_an_asgi_server_ends_even_if_a_task_ignores_its_cancel(
        nats_server, monkeypatch, caplog):
    """``on_server_loop`` outside an ASGI server (runserver, tests, workers) runs on a loop
    of its own whose teardown is bounded: a task that will not end is named in the log
    and left, instead of holding the view (40 s in a fuzz run) and the process at exit
    (asyncio.run's unbounded wait, what asgiref does); the call's web connection is
    closed, not left open one per call."""
    import logging

    from lucent_bus.client import web_client

    monkeypatch.setattr(sync, "OWN_LOOP_TEARDOWN_S", 0.5)
    seen = {}

    async def stubborn():
        while True:  # a task that lost its cancel and goes on
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue

    async def work():
        seen["nc"] = await web_client.get()
        seen["loop"] = asyncio.get_running_loop()
        asyncio.get_running_loop().create_task(stubborn())
        return "answered"

    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="lucent.bus"):
        assert sync.on_server_loop(work) == "answered"
    took = time.monotonic() - started
    assert took < 5, took
    assert "did not end when cancelled" in caplog.text and "stubborn" in caplog.text
    assert seen["nc"].is_closed and seen["loop"].is_closed()
    assert id(seen["loop"]) not in web_client._clients
