"""Connecting to the bus: reconnect forever with backoff, never log a secret."""

from __future__ import annotations

import asyncio
import logging
import random
import time

from nats.aio.client import Client

from .config import BusConfig

log = logging.getLogger("lucent.bus")

MAX_BACKOFF = 3.0  # an on-call console should be back within seconds of its bus


def backoff_delay(attempt: int, base: float = 0.25, cap: float = MAX_BACKOFF) -> float:
    """Exponential backoff with jitter: 0.25 s, 0.5 s, 1 s ... capped at ``cap``."""
    return min(cap, base * (2 ** min(attempt, 16))) * random.uniform(0.8, 1.2)


class LucentClient(Client):
    """nats-py's client, keeping the cluster's server list current.

    nats-py reads ``connect_urls`` from later INFO messages only to grow its
    server pool; we also keep them in ``_server_info`` so that the cluster
    size seen by ``jetstream.cluster_size`` follows the cluster as it forms.
    """

    async def _process_info(self, info, initial_connection=False):
        await super()._process_info(info, initial_connection)
        if not initial_connection and info.get("connect_urls"):
            self._server_info["connect_urls"] = info["connect_urls"]

    @staticmethod
    def _parse_header_lines(raw: bytes) -> dict[str, str]:
        """nats-py's header parser, same answers, without testing each character of
        each name in a generator: a stored dead letter carries ~18 headers, and this
        was most of reading one (bench/deadletter_replay.py)."""
        out: dict[str, str] = {}
        for line in raw.split(b"\r\n"):
            name, sep, value = line.partition(b":")
            if not sep:
                continue
            try:
                key = name.strip().decode("ascii")
            except UnicodeDecodeError:
                continue  # a malformed name: skipped, as nats-py does
            if key and key.split() != [key]:
                continue  # whitespace inside a name: skipped, as nats-py does
            out[key] = value.strip().decode("utf-8", "replace")
        return out


def _pick_server(servers, _info):
    # The server tried least recently (fewest failed attempts) goes first; the
    # delay grows with the failures of that server, so a dead cluster is not
    # hammered while a single dead node is skipped at once.
    server = min(servers, key=lambda s: s.reconnects)
    return server, backoff_delay(server.reconnects) if server.reconnects else 0.0


class BusState:
    """Connection state that pages and /healthz may show."""

    def __init__(self) -> None:
        self.connected_since: float | None = None
        self.disconnected_since: float | None = time.time()
        self.last_error: str | None = None

    def as_dict(self) -> dict:
        return {
            "connected": self.connected_since is not None,
            "connected_since": self.connected_since,
            "disconnected_since": self.disconnected_since,
            "last_error": self.last_error,
        }


async def connect(
    name: str,
    config: BusConfig | None = None,
    *,
    state: BusState | None = None,
    retry_initial: bool = True,
    connect_timeout: float = 2.0,
) -> Client:
    """Connect to the bus and stay connected.

    The first connection is retried forever with backoff when ``retry_initial``
    (a collector started before its bus must simply wait); afterwards nats-py
    reconnects forever, choosing servers through ``_pick_server``.
    """
    config = config or BusConfig.from_env()
    state = state or BusState()
    where = ", ".join(config.redacted_servers)

    async def on_error(exc: Exception) -> None:
        state.last_error = f"{type(exc).__name__}: {exc}"
        log.warning("%s: bus error: %s", name, state.last_error)

    holder: list[Client] = []

    async def on_disconnected() -> None:
        state.connected_since = None
        state.disconnected_since = time.time()
        if holder and holder[0].is_closed:
            return  # our own close(), not an outage
        log.warning("%s: disconnected from the bus (%s)", name, where)

    async def on_reconnected() -> None:
        state.connected_since = time.time()
        state.disconnected_since = None
        log.info("%s: reconnected to the bus", name)

    attempt = 0
    while True:
        try:
            nc = LucentClient()
            await nc.connect(
                name=f"lucent-console {name}",
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.5,
                reconnect_to_server_handler=_pick_server,
                connect_timeout=connect_timeout,
                # nats-py would retry a failed *first* connect forever; this loop
                # does it instead, with backoff and a way out. Once connected,
                # reconnects are unlimited.
                allow_reconnect=False,
                **config.connect_options(),
            )
            nc.options["allow_reconnect"] = True
            nc.options["max_reconnect_attempts"] = -1
        except Exception as exc:  # nats-py raises several unrelated types here
            state.last_error = f"{type(exc).__name__}: {exc}"
            if not retry_initial:
                raise
            delay = backoff_delay(attempt)
            attempt += 1
            log.warning(
                "%s: cannot reach the bus at %s (%s); retrying in %.1fs",
                name, where, state.last_error, delay,
            )
            await asyncio.sleep(delay)
            continue
        state.connected_since = time.time()
        state.disconnected_since = None
        log.info("%s: connected to the bus at %s", name, where)
        holder.append(nc)
        nc.lucent_config = config  # for sibling()
        return nc


async def sibling(nc: Client, name: str) -> Client:
    """Another connection to the bus ``nc`` is on, with the same configuration.

    For a reader that may fall far behind: nats-server lets each flow-controlled
    consumer have up to 32 MiB in flight and closes a connection with more than
    64 MiB waiting for it (a slow consumer), so two such readers catching up on one
    connection get it closed, and with it everything else that uses it.
    """
    return await connect(name, getattr(nc, "lucent_config", None), retry_initial=False)


class SharedClient:
    """One connection per event loop, for the web process.

    Under ASGI there is one loop and so one connection shared by every request;
    code run by ``async_to_sync`` elsewhere (tests, management commands) gets
    its own, tied to its own loop.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = BusState()
        self._clients: dict[int, tuple[asyncio.AbstractEventLoop, Client, list[str]]] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    async def get(self, timeout: float = 2.0) -> Client:
        loop = asyncio.get_running_loop()
        key = id(loop)
        config = BusConfig.from_env()
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            known = self._clients.get(key)
            if known is not None and known[0] is loop and not known[1].is_closed:
                if known[2] == config.servers:
                    return known[1]
                await known[1].close()  # NATS_URL changed (tests): a new connection
            nc = await connect(
                self.name, config, state=self.state, retry_initial=False, connect_timeout=timeout
            )
            self._clients[key] = (loop, nc, config.servers)
            return nc


web_client = SharedClient("web")
