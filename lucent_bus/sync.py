"""Bus calls from synchronous code (views, Celery tasks, commands) on one loop.

``asgiref.async_to_sync`` outside an ASGI server starts a new event loop per
call, and a bus connection made on each would stay open (one per call in a
Celery worker or a command). Instead, synchronous callers share one event loop
in a background thread with one connection (``web_client`` keeps one per loop).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

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
    """Run ``fn(*args, **kwargs)`` on the shared bus loop and wait for its result."""
    loop = _get_loop()
    if threading.current_thread().name == "lucent-bus":
        raise RuntimeError("bus.sync.run called from the bus loop itself")
    return asyncio.run_coroutine_threadsafe(fn(*args, **kwargs), loop).result(timeout)


def with_client(fn: Callable[..., Awaitable], *args, **kwargs):
    """Run ``fn(nc, *args, **kwargs)`` with this process's shared connection."""
    from .client import web_client

    async def call():
        nc = await web_client.get()
        return await fn(nc, *args, **kwargs)

    return run(call)
