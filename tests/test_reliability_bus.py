"""The console comes back by itself after its bus freezes (SIGSTOP), crashes or
restarts, and says so while it is away (issue 11); the bus-unreachable alert fires
and notifies during an outage although no leader can be elected on the bus."""

from __future__ import annotations

import time

import pytest

from lucent_console import status
from lucent_console.bus import jetstream as js
from lucent_console.bus import sync
from lucent_console.bus.client import web_client
from streams.live import relay

from .conftest import bus, run
from .support import crash_and_restart, freeze, thaw, wait_until

pytestmark = pytest.mark.django_db(transaction=True)
FROZEN_S = 7.0  # > ping interval x outstanding pings, so the connections go stale


def healthy() -> bool:
    return sync.run(status.health, timeout=15)[0]


def add_stream(url: str, name: str) -> None:
    async def go():
        nc = await bus(url)
        try:
            await js.add_stream(nc, {"name": name, "subjects": [f"{name.lower()}.>"],
                                     "storage": "file"})
        finally:
            await nc.close()

    run(go())


def web_side_up(collector) -> None:
    """The web process's relay and connection, on one loop as under ASGI."""
    sync.run(relay.ensure_started)
    wait_until(lambda: relay.status()["ok"], what="the relay has fresh data")
    wait_until(healthy, what="/healthz is 200")


def recovered(url: str, name: str, since: float) -> dict:
    """Wait for /healthz, the relay and a stream created now; seconds each took."""
    times = {}
    wait_until(healthy, timeout=10, what="/healthz is 200 again", every=0.2)
    times["healthz"] = time.monotonic() - since
    wait_until(lambda: relay.status()["ok"], timeout=10, what="the relay has fresh data again")
    times["relay"] = time.monotonic() - since
    add_stream(url, name)
    wait_until(lambda: name in (relay.snapshot or {}).get("streams", {}), timeout=10,
               what=f"{name} reaches the web side")
    times["new_stream_seen"] = time.monotonic() - since
    nc = sync.run(_current)
    assert nc.is_connected and nc.read_loop_alive  # a live connection, not a zombie
    return times


async def _current():
    return web_client.current()


def test_the_web_side_says_stale_at_once_and_recovers_after_a_freeze(collector, fresh_server):
    web_side_up(collector)
    before = relay.snapshot["at"]
    freeze(fresh_server)
    frozen = time.monotonic()
    try:
        wait_until(lambda: not relay.status()["ok"], timeout=5, what="pages say stale")
        told = time.monotonic() - frozen
        state = relay.status()
        assert "bus unreachable" in state["error"]
        asked = time.monotonic()
        assert not healthy()  # 503, said from what the watchdog knows...
        assert time.monotonic() - asked < 3  # ...without waiting on the frozen server
        # The age is that of the last data, growing while the bus is away.
        wait_until(lambda: relay.status()["age_s"] >= time.time() - before - 1 >= 2,
                   timeout=5, what="the age of the data grows")
        time.sleep(max(0.0, FROZEN_S - (time.monotonic() - frozen)))  # the outage itself
    finally:
        thaw(fresh_server)
    times = recovered(fresh_server.url, "AFTER_FREEZE", time.monotonic())
    print(f"\nfreeze {FROZEN_S:.0f}s: stale shown after {told:.1f}s; after SIGCONT: "
          + ", ".join(f"{k} {v:.1f}s" for k, v in times.items()))
    assert times["healthz"] < 10 and times["relay"] < 10


def test_the_web_side_recovers_after_the_bus_is_killed_and_restarted(collector, fresh_server):
    add_stream(fresh_server.url, "BEFORE_CRASH")
    web_side_up(collector)
    wait_until(lambda: "BEFORE_CRASH" in relay.snapshot["streams"], what="stream seen")
    gen = sync.run(_generation)
    crash_and_restart(fresh_server)
    restarted = time.monotonic()
    times = recovered(fresh_server.url, "AFTER_CRASH", restarted)
    assert "BEFORE_CRASH" in relay.snapshot["streams"]  # the file store came back
    print("\nkill -9 + restart: " + ", ".join(f"{k} {v:.1f}s" for k, v in times.items())
          + f"; connection generation {gen} -> {sync.run(_generation)}")
    assert times["healthz"] < 10 and times["relay"] < 10


async def _generation():
    return web_client.generation()
