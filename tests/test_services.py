"""Services: heartbeats make instances up, stale, down and up again; alerts are kept."""

import asyncio
import contextlib
import threading
import time

import pytest

from agents.models import ServiceEvent
from agents.registry import ServiceRegistry
from lucent_bus import envelope

from .conftest import bus, run

pytestmark = pytest.mark.django_db(transaction=True)


def _beat(service: str, status: str = "ok", interval: float = 5.0, instance: str = "i-1") -> bytes:
    return envelope.encode(envelope.make(
        "HealthCheck", f"lucent.services.{service}.health",
        {"status": status, "version": "1.2.3", "nodeId": "edge-1", "interval_s": interval,
         "connection": "connected", "circuitBreaker": "CLOSED"},
        sender={"serviceId": service, "instanceId": instance}))


def test_status_follows_the_heartbeat_intervals():
    reg = ServiceRegistry()
    reg.heartbeat("lucent.services.trading.health", _beat("trading", interval=1.0), now=100.0)
    assert reg.records(100.5)["trading/i-1"]["status"] == "up"
    assert reg.records(102.5)["trading/i-1"]["status"] == "stale"  # > 2 intervals
    assert reg.records(105.5)["trading/i-1"]["status"] == "down"  # > 5 intervals
    reg.heartbeat("lucent.services.trading.health", _beat("trading", interval=1.0), now=106.0)
    record = reg.records(106.1)["trading/i-1"]
    assert record["status"] == "up" and record["version"] == "1.2.3" and record["node"] == "edge-1"
    assert record["details"]["circuitBreaker"] == "CLOSED"
    reg.heartbeat("lucent.services.trading.health", _beat("trading", "down", 1.0), now=107.0)
    assert reg.records(107.0)["trading/i-1"]["status"] == "down"  # it said so
    reg.heartbeat("lucent.services.odd.health", b"\xff not json", now=1.0)
    assert reg.records(1.0)["odd/odd"]["status"] == "up"  # recorded, never raises


def test_a_silent_service_turns_stale_then_down_and_comes_back(client, users, collector):
    client.force_login(users["viewer"])

    @contextlib.contextmanager
    def beating(service: str = "trading"):
        """Heartbeats every 0.1 s (interval 0.3 s) until the block ends: "up" lasts only
        0.6 s after the last one, so the beats go on while the test looks for it."""
        stop = threading.Event()

        async def beats():
            nc = await bus(collector.url)
            while not stop.is_set():
                await nc.publish(f"lucent.services.{service}.health", _beat(service, interval=0.3))
                await asyncio.sleep(0.1)
            await nc.close()

        thread = threading.Thread(target=asyncio.run, args=(beats(),), daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(5)

    def status():
        rows = client.get("/api/v1/services/").json()
        return {r["instance"]: r["status"] for r in rows if r["service"] == "trading"}.get("i-1")

    def wait_for(state, timeout=8.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if status() == state:
                return True
            time.sleep(0.1)
        return False

    with beating():
        assert wait_for("up")
    assert wait_for("stale")  # no heartbeat for 2 intervals
    assert wait_for("down")  # 5 intervals
    with beating():
        assert wait_for("up")


def test_alerts_are_kept_and_shown_escaped(client, users, collector):
    client.force_login(users["viewer"])

    async def alert():
        nc = await bus(collector.url)
        await nc.publish("lucent.services.<b>evil</b>.health", _beat("<b>evil</b>"))
        await nc.publish("lucent.services.risk.alerts", envelope.encode(envelope.make(
            "AlertRaised", "lucent.services.risk.alerts",
            {"severity": "critical", "message": "breaker OPEN <script>x()</script>"},
            sender={"serviceId": "risk", "instanceId": "r-1"})))
        await nc.flush()
        await nc.close()

    run(alert())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not ServiceEvent.objects.exists():
        time.sleep(0.05)
    event = ServiceEvent.objects.get()
    assert (event.kind, event.service, event.severity) == ("alert", "risk", "critical")
    collector.wait_for(lambda s: any(k.startswith("<b>evil</b>") for k in s.get("services", {})))
    page = client.get("/services/").content.decode()
    assert "breaker OPEN &lt;script&gt;x()&lt;/script&gt;" in page and "<script>x()" not in page
    assert "&lt;b&gt;evil&lt;/b&gt;" in page and "<b>evil</b>" not in page
