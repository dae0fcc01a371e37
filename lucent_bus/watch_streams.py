"""Watched streams: the streams a page open in a browser shows, swept fast.

The web processes announce on ``WATCH_SUBJECT`` which streams their sockets show
(``announce``: a JSON list of names, renewed every few seconds); the collector keeps
them (``subscribe``) and reads just those streams' info and consumers (``read``)
every few tens of milliseconds, beside its full sweep of everything.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from nats.aio.client import Client

from . import jetstream as js
from . import notify_subjects

WATCH_SUBJECT = notify_subjects.LIVE_WATCH
MAX_NAMES = 200  # names read from one announcement (the collector caps what it keeps)
MAX_NAME_LEN = 255
REQUEST_TIMEOUT_S = 1.0  # a fast read that takes longer is given up (the next one retries)


async def announce(nc: Client, names: list[str]) -> None:
    await nc.publish(WATCH_SUBJECT, json.dumps(sorted(names)[:MAX_NAMES]).encode())


def parse(body: bytes) -> list[str]:
    """The stream names of an announcement; whatever is not a list of plausible stream
    names (strings without spaces, dots or wildcards) is dropped."""
    try:
        names = json.loads(body or b"[]")
    except ValueError:
        return []
    if not isinstance(names, list):
        return []
    return [n for n in names[:MAX_NAMES] if isinstance(n, str) and 0 < len(n) <= MAX_NAME_LEN
            and not any(c in n for c in " \t\r\n.*>")]


async def subscribe(nc: Client, on_names: Callable[[list[str]], Awaitable[None] | None]):
    async def on_msg(msg):
        result = on_names(parse(msg.data))
        if asyncio.iscoroutine(result):
            await result

    return await nc.subscribe(WATCH_SUBJECT, cb=on_msg)


async def _consumers(nc: Client, stream: str) -> list[dict]:
    items: list[dict] = []
    while True:
        reply = await js.api(nc, f"CONSUMER.LIST.{stream}", {"offset": len(items)},
                             timeout=REQUEST_TIMEOUT_S)
        page = reply.get("consumers") or []
        items.extend(page)
        if not page or len(items) >= reply.get("total", 0):
            return items


async def read(nc: Client, stream: str) -> tuple[dict, list[dict]] | None:
    """One stream's raw info and its consumers' infos (both asked at once), or None when
    the stream does not exist (any other error is raised)."""
    info = asyncio.ensure_future(js.api(nc, f"STREAM.INFO.{stream}", timeout=REQUEST_TIMEOUT_S))
    consumers = asyncio.ensure_future(_consumers(nc, stream))
    try:
        got = await asyncio.gather(info, consumers, return_exceptions=True)
    except BaseException:
        info.cancel()
        consumers.cancel()
        raise
    for result in got:
        if isinstance(result, js.JetStreamError) and result.err_code == js.STREAM_NOT_FOUND:
            return None
    for result in got:
        if isinstance(result, BaseException):
            raise result
    return got[0], got[1]
