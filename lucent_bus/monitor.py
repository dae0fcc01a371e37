"""The servers' monitoring data: varz, connz, jsz, healthz, routez, leafz, gatewayz.

Two sources, from the environment (``source_from_env``):

- ``LUCENT_NATS_MONITOR_URLS``: comma-separated ``http://host:8222``, one per server;
  ``GET <url>/<endpoint>`` with a short timeout (``LUCENT_MONITOR_TIMEOUT_S``, 2 s).
- the system account (``NATS_SYSTEM_CREDS``, or ``NATS_SYSTEM_USER`` and
  ``NATS_SYSTEM_PASSWORD``) on the servers of ``NATS_URL``: a request on
  ``$SYS.REQ.SERVER.PING.<ENDPOINT>`` that every server of the cluster answers; replies
  are gathered until each known server answered, a quiet gap, or the timeout.

Monitoring URLs win when both are set (they need no credentials on the bus). Each
answer is a ``Reply`` per server: its data, or an error saying what failed; one dead
server does not hide the others. Secrets stay in ``Source`` (repr=False).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import urllib.request
import weakref
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

import nats

from . import own

ENDPOINTS = ("varz", "connz", "jsz", "healthz", "routez", "leafz", "gatewayz")
NEEDS = ("Server and connection figures need the servers' monitoring data: set "
         "LUCENT_NATS_MONITOR_URLS (comma-separated http://host:8222, the servers' -m port) "
         "or a system-account login (NATS_SYSTEM_CREDS, or NATS_SYSTEM_USER and "
         "NATS_SYSTEM_PASSWORD).")
QUIET_S = 0.25  # after a reply, this long without another ends the gathering
MAX_BYTES = 64 * 1024 * 1024  # one answer (a connz page of thousands is a few MB)
# HTTP query names -> the system request's JSON option names
SYS_OPTION = {"subs": "subscriptions", "acc": "account", "jsz_acc": "accounts"}


class MonitorError(Exception):
    """No answer at all (bad configuration, every server silent)."""


@dataclass(frozen=True)
class Source:
    kind: str  # "http" | "system"
    urls: tuple[str, ...] = ()
    servers: tuple[str, ...] = ()
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    creds: str | None = None
    timeout: float = 2.0

    def describe(self) -> str:
        if self.kind == "http":
            return "monitoring " + ", ".join(_redact(u) for u in self.urls)
        return "system account on " + ", ".join(_redact(s) for s in self.servers)


def _redact(url: str) -> str:
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"


def source_from_env(env=None) -> Source | None:
    """The configured source, or None (then the pages say ``NEEDS``). A malformed
    setting raises ``MonitorError`` naming it."""
    env = os.environ if env is None else env
    try:
        timeout = float(env.get("LUCENT_MONITOR_TIMEOUT_S") or 2.0)
    except ValueError:
        raise MonitorError("LUCENT_MONITOR_TIMEOUT_S must be a number of seconds") from None
    urls = [u.strip().rstrip("/") for u in env.get("LUCENT_NATS_MONITOR_URLS", "").split(",")
            if u.strip()]
    if urls:
        for url in urls:
            if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
                raise MonitorError(f"LUCENT_NATS_MONITOR_URLS: {_redact(url)!r} is not an "
                                   "http(s)://host:port URL")
        return Source("http", tuple(urls), timeout=timeout)
    creds, user = env.get("NATS_SYSTEM_CREDS"), env.get("NATS_SYSTEM_USER")
    if not (creds or user):
        return None
    if user and not env.get("NATS_SYSTEM_PASSWORD"):
        raise MonitorError("NATS_SYSTEM_USER and NATS_SYSTEM_PASSWORD go together")
    if creds and not os.path.isfile(creds):
        raise MonitorError(f"NATS_SYSTEM_CREDS: no such file {creds!r}")
    servers = [s.strip() for s in env.get("NATS_URL", "").split(",") if s.strip()]
    if not servers:
        raise MonitorError("the system account needs NATS_URL (the servers to ask)")
    return Source("system", servers=tuple(servers), user=user or None,
                  password=env.get("NATS_SYSTEM_PASSWORD") or None, creds=creds or None,
                  timeout=timeout)


@dataclass
class Reply:
    origin: str  # the URL, or the server id
    name: str  # the server's name (the origin until an answer names it)
    data: dict | None = None
    error: str | None = None


def server_count(source: Source) -> int | None:
    """How many servers answer: one per URL; for the system account, as many as answered
    last time (None before the first gathering)."""
    return len(source.urls) if source.kind == "http" else _known.get(source.servers)


async def gather(source: Source, endpoint: str, params: dict | None = None) -> list[Reply]:
    """``endpoint`` from every server. Never raises for one server's failure."""
    if endpoint not in ENDPOINTS:
        raise ValueError(f"unknown monitoring endpoint {endpoint!r}")
    params = {k: v for k, v in (params or {}).items() if v not in (None, "")}
    if source.kind == "http":
        return list(await asyncio.gather(*(_http(source, url, endpoint, params)
                                           for url in source.urls)))
    return await _system(source, endpoint, params)


async def _http(source: Source, url: str, endpoint: str, params: dict) -> Reply:
    query = f"?{urlencode(params)}" if params else ""
    reply = Reply(_redact(url), _redact(url))
    try:
        data = await asyncio.wait_for(
            asyncio.to_thread(_get_json, f"{url}/{endpoint}{query}", source.timeout),
            source.timeout + 0.5)
    except (TimeoutError, OSError, ValueError) as exc:
        reply.error = f"{reply.origin}/{endpoint}: {_say(exc)}"
        return reply
    reply.data = data
    reply.name = data.get("server_name") or data.get("name") or reply.name
    return reply


def _get_json(url: str, timeout: float) -> dict:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http(s) only (checked)
            body = response.read(MAX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        if exc.code == 503:  # healthz says unhealthy with 503 and a JSON body
            body = exc.read(MAX_BYTES)
            try:
                return json.loads(body)
            except ValueError:
                pass
        raise OSError(f"HTTP {exc.code} {exc.reason}") from None
    if len(body) > MAX_BYTES:
        raise ValueError(f"answer over {MAX_BYTES // 1024 // 1024} MB")
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("answer is not a JSON object")
    return data


def _say(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer (timed out)"
    if isinstance(exc, urllib.error.URLError):
        return f"unreachable ({exc.reason})"
    if isinstance(exc, json.JSONDecodeError):
        return "not JSON (is this the monitoring port?)"
    return f"{type(exc).__name__}: {exc}"


# ------------------------------------------------------------------ the system account

_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # loop -> (source, nc)
_locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # loop -> asyncio.Lock
_known: dict[tuple, int] = {}  # source servers -> how many servers answered last time


async def _system_client(source: Source):
    """This loop's system-account connection (one: concurrent gatherings wait for it)."""
    loop = asyncio.get_running_loop()
    lock = _locks.setdefault(loop, asyncio.Lock())
    async with lock:
        return await _connected(source, loop)


async def _connected(source: Source, loop):
    held = _clients.get(loop)
    if held is not None and held[0] == source and not held[1].is_closed:
        return held[1]
    if held is not None:
        await held[1].close()
    opts: dict = {"servers": list(source.servers), "name": "lucent-console-monitor",
                  "inbox_prefix": own.INBOX_PREFIX.encode(), "allow_reconnect": True,
                  "max_reconnect_attempts": -1, "connect_timeout": source.timeout}
    if source.creds:
        opts["user_credentials"] = source.creds
    else:
        opts["user"], opts["password"] = source.user, source.password
    try:
        nc = await asyncio.wait_for(nats.connect(**opts, error_cb=_quiet,
                                                 reconnected_cb=_nothing,
                                                 disconnected_cb=_nothing),
                                    source.timeout + 1)
    except Exception as exc:
        raise MonitorError(f"system account: cannot connect: {_say(exc)}") from exc
    _clients[loop] = (source, nc)
    return nc


async def _quiet(exc: Exception) -> None:
    """nats-py's error callback: the failure is reported by the next gathering."""


async def _nothing() -> None:
    """Reconnects are nats-py's business; a gathering meanwhile reports no answer."""


async def _system(source: Source, endpoint: str, params: dict) -> list[Reply]:
    nc = await _system_client(source)
    options = {SYS_OPTION.get(k, k): (True if v in (1, "1", True) and k in ("subs", "auth")
                                      else v) for k, v in params.items()}
    inbox = nc.new_inbox()
    replies: list[Reply] = []
    got = asyncio.Event()

    async def on_reply(msg) -> None:
        try:
            body = json.loads(msg.data)
            server = body.get("server") or {}
            reply = Reply(server.get("id", "?"), server.get("name") or server.get("id", "?"))
            if body.get("error"):
                err = body["error"]
                reply.error = f"{reply.name}: {err.get('description', err)}"
            else:
                reply.data = body.get("data") or {}
        except (ValueError, AttributeError) as exc:
            reply = Reply("?", "?", error=f"unreadable reply: {exc}")
        replies.append(reply)
        got.set()

    sub = await nc.subscribe(inbox, cb=on_reply)
    try:
        await nc.publish(f"$SYS.REQ.SERVER.PING.{endpoint.upper()}", json.dumps(options).encode(),
                         reply=inbox)
        await _collect(replies, got, source.timeout, _known.get(source.servers))
    finally:
        await sub.unsubscribe()
    if not replies:
        raise MonitorError(f"system account: no server answered "
                           f"$SYS.REQ.SERVER.PING.{endpoint.upper()} within {source.timeout:g} s"
                           f"{'' if nc.is_connected else ' (not connected)'}")
    _known[source.servers] = max(len(replies), _known.get(source.servers, 0))
    return replies


async def _collect(replies: list, got: asyncio.Event, timeout: float, expected: int | None):
    """Until ``expected`` replies, ``QUIET_S`` without a new one, or ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if expected and len(replies) >= expected:
            return
        got.clear()
        wait = deadline - time.monotonic() if not replies else min(
            QUIET_S, deadline - time.monotonic())
        try:
            await asyncio.wait_for(got.wait(), max(0.0, wait))
        except TimeoutError:
            if replies:
                return


async def close() -> None:
    """Close this loop's system-account connection (tests, shutdown)."""
    held = _clients.pop(asyncio.get_running_loop(), None)
    if held is not None:
        await held[1].close()
