"""Cancellation that Python 3.11 can lose, made to stick in our loops.

On 3.11, ``asyncio.wait_for`` returns the inner result when the task is cancelled
just as that result arrives (the cancel is swallowed; fixed in 3.12, whose
``wait_for`` is built on ``asyncio.timeout``). nats-py waits that way in every
request and ``flush``, so a long-lived loop cancelled at that moment went on
forever, and whoever waited for it with it: ``asyncio.run``'s teardown of a
per-call loop (asgiref, from a synchronous view outside an ASGI server) hung in
``_cancel_all_tasks``, and the test suite's process with it. The task still counts
the request (``Task.cancelling()``), so a loop that calls ``check()`` each turn
ends as it was asked to.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable


def check() -> None:
    """Raise ``CancelledError`` if the current task was asked to stop and the request
    was swallowed on the way."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def callback(fn: Callable[..., Awaitable]) -> Callable[..., Awaitable]:
    """For a message callback: nats-py runs it in the subscription's task, which loops
    on its queue until a ``CancelledError`` comes out of the callback. A cancel the
    callback's own waits lost is raised as it returns, so that task ends as asked
    (else it waited on its queue forever, and a loop's teardown with it)."""

    @functools.wraps(fn)
    async def guarded(*args, **kwargs):
        try:
            return await fn(*args, **kwargs)
        finally:
            check()

    return guarded
