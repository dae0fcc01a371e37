"""The console comes back by itself after its bus freezes (SIGSTOP), crashes or
restarts, and says so while it is away (issue 11); the bus-unreachable alert fires
and notifies during an outage although no leader can be elected on the bus."""

from __future__ import annotations

import time

import pytest

from alerts import defaults
from alerts.models import Alert, Notification, Rule, Webhook
from kernel.models import Lease as DbLease
from lucent_bus import envelope, sync
from lucent_bus import jetstream as js
from lucent_bus.client import connect, web_client
from lucent_bus.config import BusConfig
from lucent_console import status
from lucent_console.collector import BUS_JUDGE, Collector
from lucent_console.leader import Standing, run_while_leader
from streams.live import relay

from .conftest import bus, run
from .support import WebhookReceiver, crash_and_restart, freeze, thaw, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.suite("faults")]
FROZEN_S = 7.0
BUS_FOR_S = 3.0  # > ping interval x outstanding pings, so the connections go stale


def healthy() -> bool:
    return sync.run(status.health, timeout=15)[0]


def add_stream(url: str, name: str) -> None:
    async def go():
        nc = await bus(url)
        try:
            await js.add_stream(nc, {"name": name, "subjects": [f"{name.lower()}.>"],
                                     "storage": "file"})
        finally:
            await nc.close()

    run(go())


def web_side_up(collector) -> None:
    """The web process's relay and connection, on one loop as under ASGI."""
    sync.run(relay.ensure_started)
    wait_until(lambda: relay.status()["ok"], what="the relay has fresh data")
    wait_until(healthy, what="/healthz is 200")


def recovered(url: str, name: str, since: float) -> dict:
    """Wait for /healthz, the relay and a stream created now; seconds each took."""
    times = {}
    wait_until(healthy, timeout=10, what="/healthz is 200 again", every=0.2)
    times["healthz"] = time.monotonic() - since
    wait_until(lambda: relay.status()["ok"], timeout=10, what="the relay has fresh data again")
    times["relay"] = time.monotonic() - since
    add_stream(url, name)
    wait_until(lambda: name in (relay.snapshot or {}).get("streams", {}), timeout=10,
               what=f"{name} reaches the web side")
    times["new_stream_seen"] = time.monotonic() - since
    nc = sync.run(_current)
    assert nc.is_connected and nc.read_loop_alive  # a live connection, not a zombie
    return times


async def _current():
    return web_client.current()


def test_the_web_side_says_stale_at_once_and_recovers_after_a_freeze(collector, fresh_server):
    web_side_up(collector)
    before = relay.snapshot["at"]
    freeze(fresh_server)
    frozen = time.monotonic()
    try:
        wait_until(lambda: not relay.status()["ok"], timeout=5, what="pages say stale")
        told = time.monotonic() - frozen
        state = relay.status()
        assert "bus unreachable" in state["error"]
        asked = time.monotonic()
        assert not healthy()  # 503, said from what the watchdog knows...
        assert time.monotonic() - asked < 3  # ...without waiting on the frozen server
        # The age is that of the last data, growing while the bus is away.
        wait_until(lambda: relay.status()["age_s"] >= time.time() - before - 1 >= 2,
                   timeout=5, what="the age of the data grows")
        time.sleep(max(0.0, FROZEN_S - (time.monotonic() - frozen)))  # the outage itself
    finally:
        thaw(fresh_server)
    times = recovered(fresh_server.url, "AFTER_FREEZE", time.monotonic())
    print(f"\nfreeze {FROZEN_S:.0f}s: stale shown after {told:.1f}s; after SIGCONT: "
          + ", ".join(f"{k} {v:.1f}s" for k, v in times.items()))
    assert times["healthz"] < 10 and times["relay"] < 10


def test_the_web_side_recovers_after_the_bus_is_killed_and_restarted(collector, fresh_server):
    add_stream(fresh_server.url, "BEFORE_CRASH")
    web_side_up(collector)
    wait_until(lambda: "BEFORE_CRASH" in relay.snapshot["streams"], what="stream seen")
    gen = sync.run(_generation)
    crash_and_restart(fresh_server)
    restarted = time.monotonic()
    times = recovered(fresh_server.url, "AFTER_CRASH", restarted)
    assert "BEFORE_CRASH" in relay.snapshot["streams"]  # the file store came back
    print("\nkill -9 + restart: " + ", ".join(f"{k} {v:.1f}s" for k, v in times.items())
          + f"; connection generation {gen} -> {sync.run(_generation)}")
    assert times["healthz"] < 10 and times["relay"] < 10


async def _generation():
    return web_client.generation()


class Candidates:
    """Collector processes as ``manage.py collector`` runs them (an election on the bus,
    each term on a connection of its own, the bus judge beside the election), in one
    thread of the test process."""

    def __init__(self, url: str, names: list[str], ttl: float = 2.0, interval: float = 0.25) -> None:
        import asyncio
        import threading

        self.url, self.ttl, self.interval = url, ttl, interval
        self.loop = asyncio.new_event_loop()
        self.stops: dict[str, asyncio.Event] = {}
        self.standings: dict[str, Standing] = {}
        self.terms: dict[str, Collector] = {}
        self.tasks = {}
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        for name in names:
            self.tasks[name] = asyncio.run_coroutine_threadsafe(self._one(name), self.loop)
        wait_until(lambda: len(self.standings) == len(names), what="candidates connected")

    async def _one(self, name: str) -> None:
        import asyncio

        config = BusConfig.from_env({"NATS_URL": self.url})
        nc = await connect(f"candidate {name}", config, retry_initial=False)
        stop, standing = asyncio.Event(), Standing()

        async def collect(stop_work):
            term = await connect(f"collector {name} (leader)", config)
            mine = self.terms[name] = Collector(term, self.interval)
            try:
                await mine.run(stop_work)
            finally:
                if self.terms.get(name) is mine:  # an ended term's sweeps count for nobody
                    del self.terms[name]
                await term.close()

        self.stops[name], self.standings[name] = stop, standing
        try:
            await run_while_leader(nc, stop, "collector", collect, ttl=self.ttl, holder=name,
                                   standing=standing)
        finally:
            await nc.close()

    def leader(self) -> str | None:
        return next((n for n, s in self.standings.items() if s.leading), None)

    def swept(self, name: str) -> int:
        """Sweeps of ``name``'s current term (0 before its collector has started: a
        candidate leads from the election, its term's connection comes after)."""
        term = self.terms.get(name)
        return (term.snapshot or {}).get("seq", 0) if term is not None else 0

    def stop(self, name: str) -> None:
        self.loop.call_soon_threadsafe(self.stops[name].set)
        self.tasks[name].result(15)

    def close(self) -> None:
        from asgiref.sync import sync_to_async
        from django.db import connections

        for name, task in self.tasks.items():
            if not task.done():
                self.stop(name)
        import asyncio

        asyncio.run_coroutine_threadsafe(sync_to_async(connections.close_all)(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture
def alert_rules(db, settings):
    defaults.install(Rule)
    Rule.objects.update(for_s=0)
    # Longer than a leader takes to step down (TTL 2 s less 2 margins): the leader's
    # last sweeps cannot fire it, only a judge without a leader.
    Rule.objects.filter(kind=Rule.BUS).update(for_s=BUS_FOR_S)
    settings.LUCENT_WEBHOOK_BACKOFF_S = 0.05
    return Rule.objects


def _firing(key: str):
    return Alert.objects.filter(key=key, state=Alert.FIRING).first()


def _heartbeat_down(url: str) -> None:
    async def go():
        nc = await bus(url)
        try:
            await nc.publish("lucent.services.pricing.health", envelope.encode(envelope.make(
                "HealthCheck", "lucent.services.pricing.health", {"status": "down"},
                sender={"serviceId": "pricing", "instanceId": "p-1"})))
            await nc.flush()
        finally:
            await nc.close()

    run(go())


def test_bus_alert_fires_without_a_leader_and_firing_alerts_survive_new_terms(
        alert_rules, fresh_server, monkeypatch):
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    receiver = WebhookReceiver()
    Webhook.objects.create(name="oncall", url=receiver.url, kind=Webhook.JSON)
    candidates = Candidates(fresh_server.url, ["a", "b"])
    try:
        wait_until(candidates.leader, what="a leader")
        _heartbeat_down(fresh_server.url)
        down = wait_until(lambda: _firing("service-down:pricing/p-1"), what="service-down fires")
        wait_until(lambda: any(b["rule"] == "service-down" for b in receiver.bodies),
                   what="its webhook")

        # The bus goes away: nobody can lead, a collector judges it under the database lease.
        fresh_server.stop()
        gone = time.monotonic()
        bus_alert = wait_until(lambda: _firing("bus-unreachable:bus"), timeout=20,
                               what="bus-unreachable fires during the outage")
        fired_after = time.monotonic() - gone
        assert candidates.leader() is None  # no leader judged it: the database lease did
        assert DbLease.objects.get(name=BUS_JUDGE).owner in ("a", "b")
        wait_until(lambda: any(b["rule"] == "bus-unreachable" and b["state"] == "firing"
                               for b in receiver.bodies), what="the webhook, without the bus")
        assert set(Notification.objects.filter(alert=bus_alert, event="firing")
                   .values_list("channel", flat=True)) == {"bus", "webhook:oncall"}

        # The bus is back: the next term resolves the bus alert, keeps service-down.
        fresh_server.start().wait()
        back = time.monotonic()
        wait_until(lambda: Alert.objects.get(pk=bus_alert.pk).state == Alert.RESOLVED,
                   timeout=20, what="the bus alert resolves")
        resolved_after = time.monotonic() - back
        # A leader again, sweeping. Right after the restart both candidates race to create
        # the lease bucket again, and the first to lead may find the other holds the lease
        # and step down at once: the leader that stays is the one whose term sweeps.
        # (not a measured recovery: a new term's first sweeps wait for its catch-up on a
        # loaded machine)

        def sweeping_leader():
            name = candidates.leader()
            return name if name and candidates.swept(name) >= 5 else None

        first = wait_until(sweeping_leader, timeout=45, what="a leader again, sweeping")

        # A handover: the next term keeps service-down firing, without notifying again.
        candidates.stop(first)
        second = wait_until(candidates.leader, what="the standby leads")
        assert second != first
        wait_until(lambda: candidates.swept(second) >= 5, what="the next term sweeps")
        assert _firing("service-down:pricing/p-1").pk == down.pk  # still the same firing alert
        assert Alert.objects.filter(key="service-down:pricing/p-1").count() == 1
        assert Alert.objects.filter(key="bus-unreachable:bus").count() == 1
        events = list(Notification.objects.filter(alert=down).values_list("event", "channel"))
        assert sorted(events) == [("firing", "bus"), ("firing", "webhook:oncall")]
        print(f"\nbus killed: bus-unreachable fired after {fired_after:.1f}s (for_s {BUS_FOR_S:.0f}, TTL 2); "
              f"bus back: resolved after {resolved_after:.1f}s")
    finally:
        candidates.close()
        receiver.shutdown()
