"""Leader election on the bus (``bus.lease``, ``leader``): one holder at a time, prompt
handover, and a deposed leader's work stopped before anyone else's starts."""

import asyncio
import time

import pytest

from lucent_bus import lease as kv
from lucent_bus.lease import Lease, LeaseLost
from lucent_console.leader import run_while_leader

from .conftest import bus


async def test_one_holder_at_a_time_and_a_release_hands_over_at_once(fresh_nc):
    a, b = Lease(fresh_nc, "job", 2, "a"), Lease(fresh_nc, "job", 2, "b")
    assert await a.acquire()
    assert not await b.acquire() and b.seen["holder"] == "a"
    await a.renew()
    assert not await b.acquire()
    assert (await kv.read(fresh_nc, "job"))["holder"] == "a"
    await a.release()
    assert await b.acquire()
    with pytest.raises(LeaseLost, match="held by b"):
        await a.renew()
    racers = [Lease(fresh_nc, "race", 2, f"r{i}") for i in range(8)]
    assert sum(await asyncio.gather(*(r.acquire() for r in racers))) == 1


async def test_a_lease_nobody_renews_ages_out_after_its_ttl(fresh_nc):
    a, b = Lease(fresh_nc, "job", 1, "a"), Lease(fresh_nc, "job", 1, "b")
    assert await a.acquire()
    started = time.monotonic()
    while not await b.acquire():
        assert time.monotonic() - started < 3, "the lease never aged out"
        await asyncio.sleep(0.05)
    assert 0.9 < time.monotonic() - started
    assert not a.held or a.valid_until <= time.monotonic() + 0.1


class Candidate:
    """One process's part in an election: its work records when it ran."""

    def __init__(self, url: str, name: str, ttl: float, runs: list) -> None:
        self.url, self.name, self.ttl, self.runs = url, name, ttl, runs
        self.stop = asyncio.Event()
        self.leading = asyncio.Event()

    async def work(self, stop: asyncio.Event) -> None:
        started = time.monotonic()
        self.leading.set()
        try:
            await stop.wait()
        finally:
            self.leading.clear()
            self.runs.append((self.name, started, time.monotonic()))

    async def run(self) -> None:
        nc = await bus(self.url)
        try:
            await run_while_leader(nc, self.stop, "job", self.work, ttl=self.ttl, holder=self.name)
        finally:
            await nc.close()


async def test_the_standby_takes_over_a_stopped_leader_at_once(fresh_server):
    runs = []
    a, b = (Candidate(fresh_server.url, n, 1.5, runs) for n in "ab")
    task_a = asyncio.create_task(a.run())
    await asyncio.wait_for(a.leading.wait(), 5)
    task_b = asyncio.create_task(b.run())
    await asyncio.sleep(2)  # a renews through more than one TTL; b stands by
    assert a.leading.is_set() and not b.leading.is_set() and runs == []
    a.stop.set()
    await task_a
    stopped = time.monotonic()
    await asyncio.wait_for(b.leading.wait(), 5)
    assert time.monotonic() - stopped < 0.6  # released, not aged out (1.5 s)
    b.stop.set()
    await task_b
    assert [r[0] for r in runs] == ["a", "b"] and runs[0][2] <= runs[1][1]


async def test_a_deposed_leader_stops_its_work_before_another_can_start(fresh_server):
    runs = []
    a = Candidate(fresh_server.url, "a", 1.5, runs)
    task = asyncio.create_task(a.run())
    await asyncio.wait_for(a.leading.wait(), 5)
    nc = await bus(fresh_server.url)
    try:
        # Another process believes it holds the lease and writes it: a must notice at
        # its next renewal (TTL/3) and stop, long before the thief's lease could age out.
        thief = Lease(nc, "job", 1.5, "thief")
        thief.revision = (await kv.read(nc, "job"))["seq"]
        await thief.renew()
        stolen = time.monotonic()
        while a.leading.is_set():
            assert time.monotonic() - stolen < 1.0, "a kept working on a lost lease"
            await asyncio.sleep(0.02)
        # The thief never renews: a takes the lease back once it has aged out.
        await asyncio.wait_for(a.leading.wait(), 5)
    finally:
        await nc.close()

    # The bus goes away: a cannot renew and stops before its lease could have aged out.
    fresh_server.stop()
    gone = time.monotonic()
    while a.leading.is_set():
        assert time.monotonic() - gone < 1.5, "a kept working past its lease"
        await asyncio.sleep(0.02)
    fresh_server.start().wait()
    await asyncio.wait_for(a.leading.wait(), 15)  # and leads again once it is back
    a.stop.set()
    await task
    assert [r[0] for r in runs] == ["a", "a", "a"]


async def test_work_that_fails_as_it_stops_is_logged_not_left_unretrieved(fresh_server, caplog):
    """A term's work whose own teardown fails (its connection dropped by the bus, say) is
    logged by the leader; before, asyncio said "exception was never retrieved" at random
    later (in a CI run, from another thread while pytest wrote a report)."""
    nc = await bus(fresh_server.url)
    stop, started = asyncio.Event(), asyncio.Event()

    async def work(stop_work: asyncio.Event) -> None:
        started.set()
        await stop_work.wait()
        raise ConnectionResetError("Connection lost")

    try:
        task = asyncio.create_task(run_while_leader(nc, stop, "job", work, ttl=1.5, holder="a"))
        await asyncio.wait_for(started.wait(), 5)
        stop.set()
        await asyncio.wait_for(task, 5)
    finally:
        await nc.close()
    assert "job: the work failed as it stopped: ConnectionResetError('Connection lost')" in caplog.text
