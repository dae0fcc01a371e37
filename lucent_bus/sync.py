"""Bus calls from synchronous code (views, Celery tasks, commands): the one way.

``asgiref.async_to_sync`` outside an ASGI server starts a new event loop per
call, and a bus connection made on each would stay open (one per call in a
Celery worker or a command). Instead, synchronous callers share one event loop
in a background thread with one connection (``web_client`` keeps one per loop):

- ``with_client(fn, *args)``: ``fn(nc, *args)`` on the shared connection (views,
  tasks, most commands);
- ``with_own_client(name, fn, *args, wait=False)``: on a connection of its own,
  named, closed afterwards (a command's one-shot work: ``topology apply``, ``up``);
- ``run(fn, *args)``: any coroutine function on the shared loop;
- ``on_server_loop(fn, *args)``: on the ASGI server's own loop when called from a
  synchronous view under it (what lives there is shared with the websockets: the
  relay; ``streams.operations.current_snapshot``).

Long-lived daemons (collector, beat) are another thing: ``runner.run_until_signalled``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Awaitable, Callable

from asgiref.sync import SyncToAsync, async_to_sync

from .client import connect, web_client
from .config import BusConfig

log = logging.getLogger("lucent.bus")
_loop: asyncio.AbstractEventLoop | None = None
_lock = threading.Lock()


def _get_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="lucent-bus", daemon=True).start()
        return _loop


def run(fn: Callable[..., Awaitable], *args, timeout: float | None = 300, **kwargs):
    """Run ``fn(*args, **kwargs)`` on the shared bus loop and wait for its result.
    If the wait ends otherwise (timeout, Ctrl-C), the call is cancelled."""
    loop = _get_loop()
    if threading.current_thread().name == "lucent-bus":
        raise RuntimeError("bus.sync.run called from the bus loop itself")
    future = asyncio.run_coroutine_threadsafe(fn(*args, **kwargs), loop)
    try:
        return future.result(timeout)
    except BaseException:
        future.cancel()  # no-op when it finished (raised itself)
        raise


def with_client(fn: Callable[..., Awaitable], *args, **kwargs):
    """Run ``fn(nc, *args, **kwargs)`` with this process's shared connection."""

    async def call():
        nc = await web_client.get()
        return await fn(nc, *args, **kwargs)

    return run(call)


def with_own_client(name: str, fn: Callable[..., Awaitable], *args, wait: bool = False,
                    timeout: float | None = None):
    """Connect as ``name``, run ``fn(nc, *args)``, close: for a command's one-shot work
    that should not keep a connection. ``wait``: retry the first connect until the bus
    answers (no timeout by default: the work decides how long it takes)."""

    async def call():
        nc = await connect(name, BusConfig.from_env(), retry_initial=wait)
        try:
            return await fn(nc, *args)
        finally:
            await nc.close()

    return run(call, timeout=timeout)


def on_server_loop(fn: Callable[..., Awaitable], *args):
    """Run ``fn(*args)`` where the caller's async code lives: under an ASGI server, a
    synchronous view's call runs on the server's own loop (what it starts there is
    shared with the websockets: the relay). Elsewhere (tests, runserver, workers) the
    call gets a loop of its own (``_on_own_loop``); moving those callers to the shared
    loop needs the relay to follow a change of ``NATS_URL`` first."""
    if _server_loop() is not None:
        return async_to_sync(fn)(*args)
    return _on_own_loop(fn, *args)


def _server_loop() -> asyncio.AbstractEventLoop | None:
    """The ASGI server's running loop when this thread runs a synchronous view for it
    (asgiref's ``sync_to_async`` records it, as ``async_to_sync`` reads it)."""
    local = SyncToAsync.threadlocal
    loop = getattr(local, "main_event_loop", None)
    if getattr(local, "main_event_loop_pid", None) != os.getpid() or loop is None:
        return None
    return loop if loop.is_running() else None


OWN_LOOP_TEARDOWN_S = 5.0


def _on_own_loop(fn: Callable[..., Awaitable], *args):
    """``fn(*args)`` on a new loop in this thread, then a bounded teardown: the loop's
    web connection closed (one per call otherwise stayed open), every other task
    cancelled and given ``OWN_LOOP_TEARDOWN_S``. ``asyncio.run`` (asgiref's way) waits
    for them without a bound: a task that lost its cancel (lucent_bus.cancel) hung the
    view that called it, and the process at exit; such a task is now named and left."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(fn(*args))
    finally:
        try:
            loop.run_until_complete(web_client.forget(loop))
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                _, stuck = loop.run_until_complete(asyncio.wait(pending, timeout=OWN_LOOP_TEARDOWN_S))
                if stuck:
                    log.error("a call's own loop: %d task(s) did not end when cancelled, left "
                              "behind: %s", len(stuck), ", ".join(sorted(map(_name, stuck)))[:2000])
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


def _name(task: asyncio.Task) -> str:
    coro = task.get_coro()
    return getattr(coro, "__qualname__", None) or task.get_name()
