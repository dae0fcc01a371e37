"""Connecting to the bus: reconnect forever with backoff, never log a secret."""

from __future__ import annotations

import asyncio
import logging
import random
import time

from nats import errors
from nats.aio.client import Client

from . import cancel, own
from .config import BusConfig

log = logging.getLogger("lucent.bus")

MAX_BACKOFF = 3.0  # an on-call console should be back within seconds of its bus
# A frozen server (SIGSTOP, a hung VM) keeps its sockets open: only unanswered pings
# tell. nats-py's defaults (120 s x 2) took minutes; 2 s x 2 declares it stale in ~6 s.
PING_INTERVAL_S = 2
MAX_OUTSTANDING_PINGS = 2


def backoff_delay(attempt: int, base: float = 0.25, cap: float = MAX_BACKOFF) -> float:
    """Exponential backoff with jitter: 0.25 s, 0.5 s, 1 s ... capped at ``cap``."""
    return min(cap, base * (2 ** min(attempt, 16))) * random.uniform(0.8, 1.2)


class LucentClient(Client):
    """nats-py's client, keeping the cluster's server list current.

    nats-py reads ``connect_urls`` from later INFO messages only to grow its
    server pool; we also keep them in ``_server_info`` so that the cluster
    size seen by ``jetstream.cluster_size`` follows the cluster as it forms.
    """

    # Connected as far as the socket knows, but the server stopped answering pings
    # (frozen): set by SharedClient's watchdog, so that pages say so at once rather
    # than when nats-py gives up on the connection.
    unanswered_since: float | None = None

    async def _process_info(self, info, initial_connection=False):
        await super()._process_info(info, initial_connection)
        if not initial_connection and info.get("connect_urls"):
            self._server_info["connect_urls"] = info["connect_urls"]

    async def _process_pong(self) -> None:
        # A ping whose waiter gave up (flush(timeout) against a frozen server) stays
        # queued with a cancelled future; its pong comes after the server resumes, and
        # nats-py's set_result on it raised InvalidStateError, which ended the read loop
        # while the client still said "connected" (issue 11). One pong per ping, in order:
        # drop the abandoned one.
        if self._pongs:
            future = self._pongs.pop(0)
            if not future.done():
                future.set_result(True)
            self._pongs_received += 1
            self._pings_outstanding = 0

    async def _read_loop(self) -> None:
        await super()._read_loop()
        # nats-py's loop ends quietly on an unexpected error and leaves the status
        # CONNECTED: nothing would be read again until the pings ran out. Reconnect now;
        # but not when the loop was cancelled (nats-py swallows that: its event loop is
        # ending, as a sync caller's loop does after each call).
        task = asyncio.current_task()
        if self.is_connected and not (task is not None and task.cancelling()):
            log.warning("bus: the read loop ended on a live connection; reconnecting")
            asyncio.get_running_loop().create_task(
                self._process_op_err(errors.StaleConnectionError()))

    @property
    def read_loop_alive(self) -> bool:
        return self._reading_task is not None and not self._reading_task.done()

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


def _state_callbacks(name: str, state: BusState, where: str, holder: list[Client]) -> dict:
    """nats-py's callbacks keeping ``state`` current and logging (never a secret)."""

    async def on_error(exc: Exception) -> None:
        state.last_error = f"{type(exc).__name__}: {exc}"
        log.warning("%s: bus error: %s", name, state.last_error)

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

    return {"error_cb": on_error, "disconnected_cb": on_disconnected,
            "reconnected_cb": on_reconnected}


async def _connect_once(name: str, config: BusConfig, callbacks: dict,
                        connect_timeout: float) -> Client:
    """One try at the first connection; once connected, reconnects are unlimited."""
    nc = LucentClient()
    await nc.connect(
        name=f"lucent-console {name}",
        # its ordered consumers deliver here: pages tell them apart (own.py)
        inbox_prefix=own.INBOX_PREFIX,
        max_reconnect_attempts=1,
        reconnect_time_wait=0.5,
        reconnect_to_server_handler=_pick_server,
        connect_timeout=connect_timeout,
        ping_interval=PING_INTERVAL_S,
        max_outstanding_pings=MAX_OUTSTANDING_PINGS,
        # nats-py would retry a failed *first* connect forever; connect() does it
        # instead, with backoff and a way out.
        allow_reconnect=False,
        **callbacks,
        **config.connect_options(),
    )
    nc.options["allow_reconnect"] = True
    nc.options["max_reconnect_attempts"] = -1
    return nc


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
    holder: list[Client] = []
    callbacks = _state_callbacks(name, state, where, holder)
    attempt = 0
    while True:
        cancel.check()  # a SIGTERM's cancel lost in a failed connect must still end this
        try:
            nc = await _connect_once(name, config, callbacks, connect_timeout)
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

    A watchdog per loop probes the connection every ``CHECK_S``: a server that stops
    answering is marked unreachable at once (``nc.unanswered_since``) and, after
    ``PROBES_BEFORE_RECONNECT`` silent probes, dropped for a reconnect (nats-py keeps
    the subscriptions across it); a connection that cannot recover by itself (closed,
    or its reconnect task gone) is replaced by a new one, and ``generation(loop)``
    changes so that holders of subscriptions (the relay) subscribe again.
    """

    CHECK_S = 1.0
    PROBE_TIMEOUT_S = 1.5
    PROBES_BEFORE_RECONNECT = 2
    STUCK_AFTER_S = 15.0  # not connected and no reconnect under way this long: replace

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = BusState()
        self._clients: dict[int, tuple[asyncio.AbstractEventLoop, Client, list[str]]] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._generations: dict[int, int] = {}
        self._watchdogs: dict[int, asyncio.Task] = {}
        self.replaced = 0  # connections replaced by the watchdog (all loops)

    def generation(self, loop: asyncio.AbstractEventLoop | None = None) -> int:
        """Changes whenever this loop's connection is a new one."""
        loop = loop or asyncio.get_running_loop()
        return self._generations.get(id(loop), 0)

    def current(self, loop: asyncio.AbstractEventLoop | None = None) -> Client | None:
        loop = loop or asyncio.get_running_loop()
        known = self._clients.get(id(loop))
        return known[1] if known is not None and known[0] is loop else None

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
            return await self._connect(loop, config, timeout)

    async def _connect(self, loop: asyncio.AbstractEventLoop, config: BusConfig,
                       timeout: float) -> Client:
        key = id(loop)
        nc = await connect(
            self.name, config, state=self.state, retry_initial=False, connect_timeout=timeout
        )
        self._clients[key] = (loop, nc, config.servers)
        self._generations[key] = self._generations.get(key, 0) + 1
        watchdog = self._watchdogs.get(key)
        if watchdog is None or watchdog.done() or watchdog.get_loop() is not loop:
            self._watchdogs[key] = loop.create_task(self._watch(loop))
        return nc

    async def forget(self, loop: asyncio.AbstractEventLoop) -> None:
        """A loop about to close: its connection closed (bounded) and its entries gone, so
        neither the socket nor the server's client outlives it."""
        key = id(loop)
        watchdog = self._watchdogs.pop(key, None)
        if watchdog is not None and watchdog.get_loop() is loop:
            watchdog.cancel()
        known = self._clients.pop(key, None)
        self._locks.pop(key, None)
        if known is not None and known[0] is loop and not known[1].is_closed:
            try:
                await asyncio.wait_for(known[1].close(), 2)
            except Exception as exc:  # closing is best effort: the loop closes next
                log.debug("%s: closing a call's connection: %s", self.name, exc)

    async def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        silent, stuck_since = 0, None
        while True:
            cancel.check()
            await asyncio.sleep(self.CHECK_S)
            nc = self.current(loop)
            if nc is None:
                continue
            try:
                silent = await self._probe(nc, silent)
                stuck_since = self._stuck_since(nc, stuck_since)
                if nc.is_closed or (stuck_since and time.monotonic() - stuck_since > self.STUCK_AFTER_S):
                    stuck_since = None
                    await self._replace(loop, nc)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: bus watchdog", self.name)

    async def _probe(self, nc: Client, silent: int) -> int:
        """One ping; returns how many in a row went unanswered."""
        if not nc.is_connected:
            nc.unanswered_since = None  # is_connected says it now
            return 0
        alive = getattr(nc, "read_loop_alive", True)
        try:
            if not alive:
                raise errors.StaleConnectionError("read loop ended")
            await nc.flush(timeout=self.PROBE_TIMEOUT_S)
        except Exception as exc:
            silent += 1
            if nc.unanswered_since is None:
                nc.unanswered_since = time.time() - self.PROBE_TIMEOUT_S
                self.state.last_error = f"no answer from the bus ({type(exc).__name__})"
                log.warning("%s: the bus stopped answering", self.name)
            if not alive or silent >= self.PROBES_BEFORE_RECONNECT:
                log.warning("%s: dropping an unanswering bus connection to reconnect", self.name)
                await nc._process_op_err(errors.StaleConnectionError())
                return 0
            return silent
        nc.unanswered_since = None
        return 0

    def unreachable(self, loop: asyncio.AbstractEventLoop | None = None) -> str | None:
        """Why this loop's connection cannot reach the bus now (None: it can, or there is
        none yet), with for how long."""
        nc = self.current(loop)
        if nc is None or nc.is_closed:
            return None if nc is None else "bus connection closed"
        known = self._clients.get(id(loop or asyncio.get_running_loop()))
        if known is not None and known[2] != BusConfig.from_env().servers:
            return None  # a connection to a bus no longer configured: the next get() replaces it
        since = getattr(nc, "unanswered_since", None)
        if nc.is_connected and since is None:
            return None
        since = since if nc.is_connected else self.state.disconnected_since
        away = f" for {time.time() - since:.0f}s" if since else ""
        doing = "no answer from the bus" if nc.is_connected else "reconnecting"
        return f"bus unreachable{away} ({doing})"

    @staticmethod
    def _stuck_since(nc: Client, since: float | None) -> float | None:
        """Since when the connection is down with no reconnect under way."""
        task = nc._reconnection_task
        if nc.is_connected or nc.is_closed or (task is not None and not task.done()):
            return None
        return since or time.monotonic()

    async def _replace(self, loop: asyncio.AbstractEventLoop, old: Client) -> None:
        lock = self._locks.setdefault(id(loop), asyncio.Lock())
        async with lock:
            if self.current(loop) is not old:
                return  # get() made a new one meanwhile
            log.warning("%s: replacing a bus connection that cannot recover", self.name)
            try:
                await asyncio.wait_for(old.close(), 2)
            except Exception:
                pass
            await self._connect(loop, BusConfig.from_env(), 2.0)
            self.replaced += 1


web_client = SharedClient("web")
