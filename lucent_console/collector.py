"""The collector: the one process (the elected leader) that sweeps the bus for every
reader, captures and indexes dead letters (``deadletters``), indexes envelope
metadata for the correlation trace (``traces.indexer``), watches agents and services
and judges the alert rules (``alerts.engine``).

Each sweep (every ``LUCENT_SWEEP_INTERVAL`` seconds, 1 by default) builds one
snapshot (``streams.snapshot``), publishes what changed on the bus for the web
processes (``bus.live``) and answers their full-snapshot requests. Every few
seconds it records its health (``Heartbeat``, read by /healthz) and announces
the console on ``lucent.services.console.health`` like any Lucent service.

If the bus goes away, sweeps fail fast, the last data is republished marked
``ok: false`` (pages then say how old it is) and nats-py reconnects with
backoff; the first good sweep after that carries everything that changed.

Leadership lives on the bus, so during a bus outage nobody leads, and the leader
steps down before its lease could age out. Meanwhile every collector process runs a
``BusJudge`` beside its election: the one holding the database lease ``bus-judge``
judges the bus rule, so that the bus-unreachable alert fires and notifies (webhooks
go through Celery, not the bus); the next leader term resolves it once it sweeps.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from asgiref.sync import sync_to_async
from django.conf import settings
from nats.aio.client import Client

from agents import registry
from agents.activity import STREAM, AgentActivity, Window
from agents.hierarchy import Hierarchy
from agents.registry import ServiceRegistry
from alerts.engine import Alerting
from deadletters import index as dl_index
from deadletters.models import DeadLetter
from kernel.models import Heartbeat, Lease
from lucent_bus import cancel, envelope, live, notify_subjects, watch
from lucent_bus import jetstream as js
from servers.overview import ServerSampler
from streams import snapshot as snap
from traces import indexer as trace_indexer

from . import leader
from .watched import WatchedStreams

if TYPE_CHECKING:
    from alerts.engine import Alerting

log = logging.getLogger("lucent.collector")
SERVICES_NOTIFY = notify_subjects.LIVE_SERVICES
EVENT_COALESCE_S = 0.05
DL_RATE_WINDOW_S = 60  # "dead letters a minute" (the alert rule) counts this window


def _end_with_term(*tasks: asyncio.Task) -> None:
    """Cancel ``tasks`` when the task that started them (a leader's term) ends, however it
    ends: a term cancelled before it awaited them left its trace indexer retrying beside
    the next term's."""
    term = asyncio.current_task()
    if term is not None:
        term.add_done_callback(lambda _: [t.cancel() for t in tasks if not t.done()])


class Collector:
    def __init__(self, nc: Client, interval: float | None = None) -> None:

        self.nc = nc
        self.interval = interval or settings.LUCENT_SWEEP_INTERVAL
        self.tracker = snap.Tracker()
        self.services = ServiceRegistry()
        self.hierarchy = Hierarchy()
        self.agents = AgentActivity()
        self.snapshot: dict | None = None
        self.last_delta_bytes = 0
        self._lock = asyncio.Lock()  # one delta at a time, in order
        self._poked = asyncio.Event()
        self._watching_agents = False
        self.alerting = Alerting()
        self.deadletters_1h = Window(60, 3600)  # from DEAD_LETTERS' last_seq, sweep to sweep
        self.deadletters_1m = Window(5, DL_RATE_WINDOW_S)
        self._dl_last_seq: int | None = None
        self.server_sampler = ServerSampler()  # snapshot "servers" (monitoring data)
        self.watched = WatchedStreams(self)  # the streams open pages show, swept fast

    @property
    def watching_agents(self) -> bool:
        """The agent stream is followed (``watch_agents`` tries every sweep until it exists)."""
        return self._watching_agents

    async def sweep_once(self) -> dict:
        """Sweep, build, publish the delta. Never raises."""
        try:
            if not self.nc.is_connected:
                raise ConnectionError("bus unreachable (reconnecting)")
            new = await self.tracker.collect(self.nc, js.server_summary(self.nc))
        except Exception as exc:
            new = snap.failed(self.snapshot, f"{type(exc).__name__}: {exc}")
            new.pop("event", None)
        self._count_deadletters(new)
        await self.server_sampler.fill(new)
        async with self._lock:
            self.watched.prefer_fresh(new)
            self._event_tables(new)
            await self._publish(new)
        await self.alerting.evaluate(self.nc, new)
        return new

    def _count_deadletters(self, new: dict) -> None:
        dl = new.get("streams", {}).get("DEAD_LETTERS")
        if new.get("ok") and dl is not None:
            if self._dl_last_seq is not None and dl["last_seq"] > self._dl_last_seq:
                self.deadletters_1h.add(time.time(), dl["last_seq"] - self._dl_last_seq)
                self.deadletters_1m.add(time.time(), dl["last_seq"] - self._dl_last_seq)
            self._dl_last_seq = dl["last_seq"]
        new["deadletters_1h"] = self.deadletters_1h.total(time.time())
        new["deadletters_1m"] = self.deadletters_1m.total(time.time())

    def _event_tables(self, new: dict) -> None:
        """The tables fed by events rather than sweeps."""
        new["services"] = self.services.records()
        new["hierarchy"] = self.hierarchy.records()
        new["agents"], new["agent_feed"] = self.agents.tables(new.get("consumers", {}),
                                                              new["services"])

    async def _publish(self, new: dict) -> None:
        delta = snap.diff(self.snapshot, new)
        self.snapshot = new
        if self.nc.is_connected:
            try:
                self.last_delta_bytes = await live.publish_delta(self.nc, delta)
            except Exception as exc:
                log.warning("collector: could not publish the delta: %s", exc)

    def poke(self) -> None:
        """Something happened (a heartbeat, an agent job, an ack): push it soon,
        without waiting for the next sweep."""
        self._poked.set()

    async def push_events(self, stop: asyncio.Event) -> None:
        """Between sweeps, publish what events changed, at most every ``EVENT_COALESCE_S``."""
        while not stop.is_set():
            cancel.check()
            await self._poked.wait()
            await asyncio.sleep(EVENT_COALESCE_S)
            self._poked.clear()
            if self.snapshot is None:
                continue
            async with self._lock:
                new = {**self.snapshot, "event": True}
                self._event_tables(new)
                if all(new[t] == self.snapshot.get(t) for t in snap.EVENT_TABLES):
                    continue
                self.tracker.seq += 1
                new["seq"] = self.tracker.seq
                await self._publish(new)

    async def watch_services(self) -> None:
        """Heartbeats update the registry; alerts and config updates are kept."""

        async def on_heartbeat(msg):
            self.services.heartbeat(msg.subject, msg.data, msg.headers)
            self.poke()

        @cancel.callback  # it waits on a thread and the bus: a cancel lost there
        async def on_event(msg):
            try:
                await sync_to_async(registry.store_event)(
                    registry.event_from(msg.subject, msg.data, msg.headers))
                await self.nc.publish(SERVICES_NOTIFY, b"")
            except Exception:
                log.exception("collector: could not keep a service event")

        async def on_hierarchy(msg):
            self.hierarchy.event(msg.subject, msg.data, msg.headers)
            self.poke()

        await self.nc.subscribe("lucent.services.*.health", cb=on_heartbeat)
        await self.nc.subscribe("lucent.hierarchy.>", cb=on_hierarchy)
        await self.nc.subscribe("lucent.services.*.alerts", cb=on_event)
        await self.nc.subscribe("lucent.services.*.config", cb=on_event)

    async def watch_agents(self, seed: bool = True) -> None:
        """Agent jobs, acks, failures and outputs (``agents.activity``). The jobs
        need the agent stream: until topology is applied this is retried every sweep."""

        if self._watching_agents or not self.nc.is_connected:
            return
        activity = self.agents

        async def on_job(msg):
            activity.job(msg.metadata.sequence.stream, msg.subject, msg.data, msg.headers)
            self.poke()

        async def on_ack(ack):
            activity.ack(ack)
            self.poke()

        async def on_failure(kind, advisory):
            activity.failure(advisory, consumers=(self.snapshot or {}).get("consumers"))
            self.poke()

        async def on_output(msg):
            activity.outbound(msg.data)

        try:
            await watch.follow_new(self.nc, STREAM, "lucent.agents.>", on_job)
        except Exception as exc:
            log.debug("collector: agent stream not followed yet: %s", exc)
            return
        self._watching_agents = True
        await watch.watch_acks(self.nc, STREAM, on_ack)
        await watch.watch_failures(self.nc, STREAM, on_failure)
        await self.nc.subscribe("lucent.events.>", cb=on_output)

        def recent_deadletters():
            since = datetime.fromtimestamp(time.time() - 3600, UTC)
            return list(DeadLetter.objects.filter(captured_at__gte=since)
                        .values_list("stream", "subject", "captured_at")[:200_000])

        try:
            if seed:  # so a restarted collector does not count from zero
                rows = await sync_to_async(recent_deadletters)()
                activity.seed_failures([(subj, at.timestamp()) for stream, subj, at in rows
                                        if stream == STREAM])
                for *_, at in rows:
                    self.deadletters_1h.add(at.timestamp())
        except Exception:
            log.exception("collector: could not read the recent dead letters")

    def health(self) -> dict:
        s = self.snapshot or {}
        return {"connected": self.nc.is_connected, "ok": s.get("ok", False),
                "error": s.get("error"), "seq": s.get("seq", 0), "sweep_ms": s.get("sweep_ms"),
                "streams": len(s.get("streams", {})), "consumers": len(s.get("consumers", {})),
                "delta_bytes": self.last_delta_bytes, **js.server_summary(self.nc)}

    async def announce(self) -> None:
        health = self.health()
        try:
            await sync_to_async(Heartbeat.beat)("collector", **health)
        except Exception:
            log.exception("collector: could not record its heartbeat")
        if self.nc.is_connected:
            await self.nc.publish("lucent.services.console.health", envelope.encode(envelope.make(
                "HealthCheck", "lucent.services.console.health",
                {"status": "ok" if health["ok"] else "degraded", **health},
                sender={"serviceId": "console", "instanceId": "collector"})))

    async def run(self, stop: asyncio.Event, heartbeat_every: float = 5.0) -> None:

        await live.serve_full(self.nc, lambda: self.snapshot)
        await self.watch_services()

        capturing = asyncio.create_task(dl_index.run(self.nc, stop))
        indexing = asyncio.create_task(trace_indexer.run(self.nc, stop))
        _end_with_term(capturing, indexing)
        pushing = asyncio.create_task(self.push_events(stop))
        watching = asyncio.create_task(self.watched.run(stop))
        _end_with_term(pushing, watching)
        last_beat, was_ok = 0.0, None
        while not stop.is_set():
            cancel.check()
            started = time.monotonic()
            await self.watch_agents()
            ok = (await self.sweep_once()).get("ok")
            # At once when the bus goes or comes back: the bus judges read it (BusJudge).
            if started - last_beat >= heartbeat_every or ok != was_ok:
                last_beat, was_ok = started, ok
                await self.announce()
            elapsed = time.monotonic() - started
            try:
                await asyncio.wait_for(stop.wait(), max(0.05, self.interval - elapsed))
            except TimeoutError:
                pass
        pushing.cancel()
        watching.cancel()
        await capturing
        await indexing


async def run(nc: Client, stop: asyncio.Event, interval: float | None = None) -> None:
    await Collector(nc, interval).run(stop)


BUS_JUDGE = "bus-judge"  # the database lease under which the bus is judged without a leader
HEARTBEAT_S = 5.0  # Collector.run's heartbeat_every


def _a_leader_sweeps() -> bool:
    """A leader reported a good sweep lately (a partition hides the bus from us only)."""
    hb = Heartbeat.objects.filter(component="collector").first()
    return bool(hb and hb.age_seconds() < 2 * HEARTBEAT_S and hb.detail.get("ok"))


class BusJudge:
    """Beside a collector's election: while it cannot reach the bus lease and no leader
    sweeps, judge the bus rule under the database lease ``BUS_JUDGE`` (one judge among
    all collectors); hand back as soon as the bus lease answers."""

    def __init__(self, nc: Client, standing: leader.Standing, interval: float | None = None) -> None:
        self.nc, self.standing = nc, standing
        self.interval = interval or settings.LUCENT_SWEEP_INTERVAL
        self.ttl = max(3 * self.interval, float(settings.LUCENT_LEADER_TTL))
        self.alerting: Alerting | None = None  # while we hold the database lease

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                cancel.check()
                try:
                    await self.tick()
                except Exception:
                    log.exception("collector: bus judge")
                try:
                    await asyncio.wait_for(stop.wait(), self.interval)
                except TimeoutError:
                    pass
        finally:
            await self.hand_back()

    async def tick(self) -> None:
        if (self.standing.leading or self.standing.unreachable_since is None
                or await sync_to_async(_a_leader_sweeps)()):
            await self.hand_back()
            return
        if not await sync_to_async(Lease.claim)(BUS_JUDGE, self.standing.holder, self.ttl):
            self.alerting = None  # another collector judges
            return
        if self.alerting is None:

            log.warning("collector: no leader on an unreachable bus; %s judges it under the "
                        "database lease %r", self.standing.holder, BUS_JUDGE)
            self.alerting = Alerting()  # reads the firing alerts afresh
        await self.alerting.evaluate(self.nc, {
            "ok": False, "error": self.standing.error, "at": None, "seq": 0,
            "streams": {}, "consumers": {}, "server": {}})

    async def hand_back(self) -> None:
        if self.alerting is None:
            return
        alerting, self.alerting = self.alerting, None
        try:
            if alerting.unsent and self.nc.is_connected:  # what could not be published
                await alerting.flush(self.nc, changed=True)
            await sync_to_async(Lease.release)(BUS_JUDGE, self.standing.holder)
        except Exception:
            log.exception("collector: bus judge hand-back (the lease ages out)")
        log.info("collector: the bus answers again; %s stops judging it", self.standing.holder)


async def _judge_bus(nc: Client, standing: leader.Standing, stop: asyncio.Event) -> None:
    await BusJudge(nc, standing).run(stop)


leader.WITHOUT_LEADER["collector"] = _judge_bus
