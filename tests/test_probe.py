"""The command probe: replies and round trips, no responders, timeouts, roles; safe by
default (a ping no stream stores) and confirmed on the page (issue 14)."""

import asyncio
import threading

import pytest

from agents import demo, probe
from kernel.models import AuditRecord
from lucent_bus import jetstream as js
from streams import topology

from .conftest import bus, run

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
        await d.answer_pings()

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
    page = client.post("/services/probe/", {"subject": "lucent.nobody.home", "count": "1",
                                            "confirm": "lucent.nobody.home × 1"})
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


def stored_counts(url: str) -> dict[str, int]:
    async def go():
        nc = await bus(url)
        try:
            return {s["config"]["name"]: s["state"]["messages"] for s in await js.list_streams(nc)}
        finally:
            await nc.close()

    return run(go())


def test_the_default_probe_pings_the_demo_services_and_stores_nothing(
        client, users, trading, fresh_server):
    assert probe.DEFAULT_SUBJECT == "lucent.services.trading-service.ping"
    assert probe.stored_by(probe.DEFAULT_SUBJECT) == []  # no declared stream stores it
    before = stored_counts(fresh_server.url)
    assert "COMMANDS" in before
    client.force_login(users["operator"])
    r = client.post("/api/v1/probe/", {"subject": probe.DEFAULT_SUBJECT, "count": 5},
                    content_type="application/json")  # no payload, no confirmation: the API
    body = r.json()
    assert r.status_code == 200 and body["ok"] == 5 and body["errors"] == 0
    assert body["replies"][0]["message_type"] == "PingReply"
    assert stored_counts(fresh_server.url) == before  # no order, no job, no stored request


def test_the_form_pings_by_default_and_a_business_payload_must_be_typed(client, users, trading):
    client.force_login(users["operator"])
    form = client.get("/services/probe/").content.decode()
    assert 'value="lucent.services.trading-service.ping"' in form
    assert "ExecuteTradeCommand" not in form and "execute_trade" not in form
    form = client.get("/services/probe/?subject=lucent.commands.trading.execute").content.decode()
    assert "ExecuteTradeCommand" not in form and "execute_trade" not in form
    assert client.put("/services/probe/").status_code == 405


def test_the_pages_probe_sends_only_once_subject_x_count_is_confirmed(
        client, users, trading, fresh_server):
    client.force_login(users["operator"])
    before = stored_counts(fresh_server.url)
    fields = {"subject": "lucent.commands.trading.execute", "count": "3", "timeout": "2",
              "payload": '{"kind": "typed by hand"}'}
    ask = client.post("/services/probe/", fields).content.decode()
    assert "Send 3 × <code>lucent.commands.trading.execute</code>?" in ask
    assert 'name="confirm" value="lucent.commands.trading.execute × 3"' in ask
    assert "COMMANDS" in ask and "your payload" in ask  # stored by a stream, and typed
    assert stored_counts(fresh_server.url) == before  # the first step sends nothing
    assert not AuditRecord.objects.filter(action="probe").exists()
    # A confirmation of another count (the form changed since) asks again.
    again = client.post("/services/probe/", {**fields, "count": "4",
                                             "confirm": "lucent.commands.trading.execute × 3"})
    assert "Send 4 ×" in again.content.decode() and stored_counts(fresh_server.url) == before
    done = client.post("/services/probe/", {**fields,
                                            "confirm": "lucent.commands.trading.execute × 3"})
    assert "3 / 3" in done.content.decode()
    assert stored_counts(fresh_server.url)["COMMANDS"] == before["COMMANDS"] + 3
    assert AuditRecord.objects.get(action="probe").outcome == "ok"
    # The bus's own subjects stay refused, confirmed or not.
    own = client.post("/services/probe/", {"subject": "$JS.API.STREAM.LIST", "count": "1",
                                           "confirm": "$JS.API.STREAM.LIST × 1"})
    assert own.status_code == 400
