"""Long-lived daemons (collector, beat) on a connection of their own until a signal.

One-shot bus calls from synchronous code go through ``lucent_bus.sync``."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

from nats.aio.client import Client

from .client import connect
from .config import BusConfig


def run_until_signalled(name: str, work: Callable[[Client, asyncio.Event], Awaitable]) -> None:
    """Run a long-lived ``work(nc, stop)`` until SIGINT/SIGTERM sets ``stop``."""

    async def main():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        connecting = asyncio.create_task(connect(name, BusConfig.from_env(), retry_initial=True))
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if connecting not in done:
            connecting.cancel()
            return
        nc = connecting.result()
        try:
            await work(nc, stop)
        finally:
            stopping.cancel()
            await nc.close()

    asyncio.run(main())
