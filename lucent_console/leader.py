"""Run a piece of work in exactly one process at a time (the collector: sweeps and
dead-letter capture), whichever machines the candidates run on.

Every candidate runs ``run_while_leader`` with a lease on the bus (``bus.lease``):

1. standby: try to acquire the lease every ``POLL`` seconds (TTL/10, at most 1 s).
2. leader: start ``work(stop_work)`` and renew the lease every TTL/3.
3. a renew answers that someone else holds the lease, or no renew has succeeded
   for TTL - 2 margins (bus away): set ``stop_work``, give the work one margin
   to return, then cancel it; back to 1. The work has ended before the lease can
   have aged out on the server, so two never run at once.
4. the process is stopped (SIGTERM): stop the work, then release the lease so a
   standby takes over at once rather than after the TTL.

If the process dies (kill -9, machine lost), its lease ages out after the TTL
and a standby takes over. While the bus cannot be reached nobody can lead; each
candidate says so in its ``Standing``, for work that must go on without a leader
(``collector.BusJudge``, under a lease in the database).

``work`` must own everything it subscribes to (e.g. its own bus connection,
closed when it returns or is cancelled), so that nothing of it outlives its term.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from django.conf import settings
from nats.aio.client import Client

from lucent_bus import cancel
from lucent_bus.lease import Lease, LeaseLost

log = logging.getLogger("lucent.leader")


@dataclass
class Standing:
    """What one candidate knows of its election."""

    holder: str = ""
    leading: bool = False
    unreachable_since: float | None = None  # time.time(): the lease could not be reached since
    error: str | None = None

    def reached(self) -> None:
        self.unreachable_since, self.error = None, None

    def unreachable(self, error: str) -> None:
        self.unreachable_since = self.unreachable_since or time.time()
        self.error = error


# Work each candidate of an election does while no leader can be elected, by election
# name: ``fn(nc, standing, stop)``, run beside the election until ``stop``. The collector
# registers its bus judge (``collector.BusJudge``) for "collector".
WITHOUT_LEADER: dict[str, Callable[[Client, Standing, asyncio.Event], Awaitable]] = {}


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """Wait for ``event`` at most ``seconds``; True when it was set."""
    try:
        await asyncio.wait_for(event.wait(), max(0.0, seconds))
    except TimeoutError:
        return False
    return True


async def run_while_leader(nc: Client, stop: asyncio.Event, name: str,
                           work: Callable[[asyncio.Event], Awaitable], *,
                           ttl: float | None = None, holder: str | None = None,
                           standing: Standing | None = None) -> None:
    """Stand by, lead, stand by again... until ``stop``; see the module docstring."""
    lease = Lease(nc, name, ttl or settings.LUCENT_LEADER_TTL, holder)
    standing = standing or Standing()
    standing.holder = lease.holder
    beside = WITHOUT_LEADER.get(name)
    side = asyncio.create_task(beside(nc, standing, stop)) if beside else None
    try:
        await _elect(lease, stop, name, work, standing)
    finally:
        if side is not None:
            side.cancel()
            await asyncio.gather(side, return_exceptions=True)


async def _elect(lease: Lease, stop: asyncio.Event, name: str,
                 work: Callable[[asyncio.Event], Awaitable], standing: Standing) -> None:
    poll = min(1.0, lease.ttl / 10)
    shown = None
    log.info("%s: %s electing (lease %s/%s, TTL %.1fs)", name, lease.holder, lease.bucket,
             name, lease.ttl)
    while not stop.is_set():
        cancel.check()
        if not lease.nc.is_connected:  # said at once, not after a request times out
            standing.unreachable("no connection to the bus (reconnecting)")
            await _wait(stop, poll)
            continue
        try:
            won = await lease.acquire()
        except Exception as exc:
            won, leader = False, f"unknown ({type(exc).__name__}: {exc})"
            standing.unreachable(f"no answer on the leader lease ({type(exc).__name__}: {exc})"
                                 .replace(": )", ")"))
        else:
            leader = (lease.seen or {}).get("holder")
            standing.reached()
        if not won:
            if leader != shown:
                shown = leader
                log.info("%s: standby; the leader is %s", name, leader)
            await _wait(stop, poll)
            continue
        shown = None
        log.info("%s: %s is the leader", name, lease.holder)
        standing.leading = True
        try:
            crashed = await _lead(lease, stop, name, work)
        finally:
            standing.leading = False
        if crashed:
            await _wait(stop, 2 * poll)  # let a healthier standby take it


def _say_how_it_ended(task: asyncio.Task, name: str, said: bool) -> None:
    """A term's work that failed while stepping down (its connection lost with the bus,
    say) is logged here, not left to asyncio's "exception was never retrieved"."""
    if not task.done():
        log.error("%s: the work did not end when told to nor when cancelled; left running",
                  name)
    elif not said and not task.cancelled() and task.exception() is not None:
        log.warning("%s: the work failed as it stopped: %r", name, task.exception())


async def _lead(lease: Lease, stop: asyncio.Event, name: str,
                work: Callable[[asyncio.Event], Awaitable]) -> bool:
    """Run ``work`` while the lease holds; True when the work failed by itself."""
    margin = lease.ttl / 10
    stop_work = asyncio.Event()
    task = asyncio.create_task(work(stop_work))
    stopped = asyncio.create_task(stop.wait())
    crashed = False
    try:
        next_renew = time.monotonic() + lease.ttl / 3
        while not stop.is_set():
            cancel.check()
            deadline = lease.valid_until - 2 * margin
            wake = min(next_renew, deadline) - time.monotonic()
            await asyncio.wait({task, stopped}, timeout=max(0.0, wake),
                               return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                crashed = True
                log.error("%s: the work ended by itself: %r; stepping down", name,
                          task.exception() if not task.cancelled() else "cancelled")
                break
            if stop.is_set():
                break
            if time.monotonic() >= next_renew:
                try:
                    await asyncio.wait_for(lease.renew(), max(0.1, deadline - time.monotonic()))
                    next_renew = time.monotonic() + lease.ttl / 3
                except LeaseLost as exc:
                    log.warning("%s: lost the lease (%s); stepping down", name, exc)
                    break
                except Exception as exc:
                    log.warning("%s: could not renew the lease: %s", name,
                                f"{type(exc).__name__}: {exc}".rstrip(": "))
                    next_renew = time.monotonic() + margin
            if time.monotonic() >= lease.valid_until - 2 * margin:
                log.warning("%s: no renewal for %.1fs; stepping down before the lease ages out",
                            name, lease.ttl - 2 * margin)
                break
    finally:
        stop_work.set()
        stopped.cancel()
        done, _ = await asyncio.wait({task}, timeout=margin)
        if not done:
            task.cancel()
            await asyncio.wait({task}, timeout=margin)
        _say_how_it_ended(task, name, crashed)
        if stop.is_set() or crashed:
            await lease.release()
        else:
            lease.revision = 0
        log.info("%s: %s no longer leads", name, lease.holder)
    return crashed
