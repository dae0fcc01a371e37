"""The command probe: replies and round trips, no responders, timeouts, roles."""

import asyncio
import threading

import pytest

from agents import demo
from kernel.models import AuditRecord
from streams import topology

from .conftest import bus

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def trading(fresh_server, monkeypatch):
    """The demo's trading service (and a mute one) on their own loop, for the test's duration."""
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()

    async def serve():
        nc = await bus(fresh_server.url)
        await topology.apply(nc)
        d = demo.Demo(nc)
        await nc.subscribe("lucent.commands.trading.execute", "trading", cb=d.trading_service)

        async def mute(msg):
            return None  # receives, never answers

        await nc.subscribe("lucent.commands.mute.execute", cb=mute)
        ready.set()
        await stop.wait()
        await nc.close()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)


def test_the_probe_reports_replies_and_round_trips(client, users, trading):
    client.force_login(users["operator"])
    r = client.post("/api/v1/probe/", {"subject": "lucent.commands.trading.execute", "count": 20},
                    content_type="application/json")
    body = r.json()
    assert r.status_code == 200 and body["ok"] == 20 and body["errors"] == 0
    assert 0 < body["p50_ms"] <= body["p99_ms"]
    assert body["replies"][0]["message_type"] == "TradeResult"  # the service, not a PubAck
    record = AuditRecord.objects.get(action="probe")
    assert record.outcome == "ok" and "20/20 replied" in record.detail


def test_no_responders_and_timeouts_are_said_clearly(client, users, trading):
    client.force_login(users["operator"])
    nobody = client.post("/api/v1/probe/", {"subject": "lucent.nobody.home", "count": 3},
                         content_type="application/json").json()
    assert (nobody["ok"], nobody["no_responders"], nobody["p50_ms"]) == (0, 3, None)
    mute = client.post("/api/v1/probe/", {"subject": "lucent.commands.mute.execute", "count": 2,
                                          "timeout": 0.2}, content_type="application/json").json()
    assert (mute["ok"], mute["timeouts"]) == (0, 2)
    page = client.post("/services/probe/", {"subject": "lucent.nobody.home", "count": "1"})
    assert "No responders: nothing serves lucent.nobody.home" in page.content.decode()
    bad = client.post("/api/v1/probe/", {"subject": "lucent.*", "count": 1},
                      content_type="application/json")
    assert bad.status_code == 400


def test_viewers_get_403_on_the_probe(client, users, trading):
    client.force_login(users["viewer"])
    r = client.post("/api/v1/probe/", {"subject": "lucent.commands.trading.execute"},
                    content_type="application/json")
    assert r.status_code == 403
    assert client.post("/services/probe/", {"subject": "x.y"}).status_code == 403
    assert AuditRecord.objects.filter(action="probe", outcome="refused").count() == 2


def test_the_form_is_pre_filled_with_a_valid_envelope(client, users, trading):
    client.force_login(users["operator"])
    form = client.get("/services/probe/?subject=lucent.commands.trading.execute").content.decode()
    assert "execute_trade" in form and "messageId" in form
    assert client.put("/services/probe/").status_code == 405
