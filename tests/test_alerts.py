"""Alert rules fire once, stay firing, resolve by themselves, and notify (bus, webhooks)."""

import asyncio
import json

import pytest

from alerts import defaults
from alerts.models import Alert, Notification, Rule, Silence, Webhook
from alerts.rules import Evaluator, conditions
from kernel.models import AuditRecord
from lucent_bus import envelope
from lucent_bus import jetstream as js

from . import support
from .conftest import bus
from .support import WebhookReceiver

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def rules(db, settings, monkeypatch):
    """The default rules, with thresholds and durations small enough for a test."""
    defaults.install(Rule)
    Rule.objects.update(for_s=0)
    Rule.objects.filter(name="consumer-pending").update(threshold=3)
    Rule.objects.filter(name="deadletters-rate").update(threshold=5)
    settings.LUCENT_WEBHOOK_BACKOFF_S = 0.05
    monkeypatch.setattr("streams.snapshot.STALL_AFTER_S", 1.0)
    monkeypatch.setattr("lucent_console.collector.DL_RATE_WINDOW_S", 5)
    return Rule.objects


def firing() -> dict[str, Alert]:
    return {a.key: a for a in Alert.objects.filter(state=Alert.FIRING)}


def wait_until(check, timeout: float = 15.0, what: str = ""):
    """``support.wait_until`` with the time these alerts need on a loaded machine."""
    return support.wait_until(check, timeout, what)


def test_a_condition_fires_after_its_duration_and_resolves_when_it_stops(rules):
    rule = Rule.objects.get(name="consumer-pending")
    rule.for_s = 10
    snap = {"ok": True, "streams": {}, "consumers": {"S/c": {
        "stream": "S", "name": "c", "num_pending": 50, "num_ack_pending": 0, "max_ack_pending": -1,
        "stalled": False, "active_at": 0}}}
    ev = Evaluator()
    assert ev.step(snap, [rule], now=100.0) == ([], [])  # holds, not long enough yet
    fire, _ = ev.step(snap, [rule], now=110.0)
    assert [c.key for c in fire] == ["consumer-pending:S/c"] and "50 pending" in fire[0].message
    ev.firing["consumer-pending:S/c"] = 1
    assert ev.step(snap, [rule], now=111.0) == ([], [])  # fires once, stays firing
    down = {"ok": False, "error": "gone", "streams": {}, "consumers": {}}
    assert ev.step(down, [rule], now=112.0) == ([], [])  # stale data judges nothing
    snap["consumers"]["S/c"]["num_pending"] = 0
    assert ev.step(snap, [rule], now=113.0) == ([], ["consumer-pending:S/c"])
    rule.target = "OTHER*"
    snap["consumers"]["S/c"]["num_pending"] = 50
    assert conditions(snap, [rule]) == {}  # the rule's target does not match


def test_stream_and_consumer_rules_fire_and_resolve_on_a_real_bus(rules, client, users, collector):
    client.force_login(users["viewer"])

    async def build():
        nc = await bus(collector.url)
        await js.add_stream(nc, {"name": "WORK", "subjects": ["work.>"], "storage": "memory",
                                 "max_msgs": 10})
        await js.add_consumer(nc, "WORK", {"durable_name": "w", "ack_policy": "explicit",
                                           "max_ack_pending": 4})
        await js.add_stream(nc, {"name": "LOST", "subjects": ["lost.>"], "storage": "memory",
                                 "retention": "interest"})
        for i in range(9):
            await nc.jetstream().publish("work.job", str(i).encode())
        sub = await nc.jetstream().pull_subscribe_bind("w", "WORK")
        held = await sub.fetch(4, timeout=5)  # in flight, never acked (yet)
        return nc, sub, held

    nc, sub, held = run_keep(build())
    expected = {"consumer-pending:WORK/w", "stream-usage-80:WORK", "ack-pending-near-max:WORK/w",
                "consumer-stalled:WORK/w", "interest-without-consumers:LOST"}
    wait_until(lambda: expected <= set(firing()), what="every stream/consumer rule fires")
    assert "stream-usage-95:WORK" not in firing()  # 90 % is under the critical limit
    rows = {r["rule"]: r for r in client.get("/api/v1/alerts/?state=firing").json()["results"]}
    assert {"id", "rule", "severity", "state", "subject", "started_at"} <= set(rows["consumer-stalled"])
    assert rows["interest-without-consumers"]["severity"] == "critical"
    assert rows["consumer-pending"]["subject"] == "WORK/w"
    page = client.get("/alerts/").content.decode()
    assert "interest retention and no consumer" in page

    async def mend():
        await js.purge_stream(nc, "WORK")  # nothing pending: not stalled, not full
        for m in held:
            await m.ack_sync()
        await js.add_consumer(nc, "LOST", {"durable_name": "keeper", "ack_policy": "explicit"})
        await nc.close()

    run_keep(mend())
    wait_until(lambda: not (expected & set(firing())), what="every one resolves by itself")
    for key in expected:  # each fired exactly once and keeps its history
        assert Alert.objects.filter(key=key).count() == 1
        assert Alert.objects.get(key=key).resolved_at is not None


_loop = None


def run_keep(coro):
    """Like ``run``, on one loop kept across calls (a connection outlives a call)."""
    global _loop
    if _loop is None or _loop.is_closed():
        _loop = asyncio.new_event_loop()
    return _loop.run_until_complete(coro)


def test_services_agents_and_deadletters_fire_notify_and_silences_hold(rules, collector):
    receiver = WebhookReceiver(fail=2)
    Webhook.objects.create(name="oncall", url=receiver.url, kind=Webhook.JSON)
    Silence.objects.create(key="service-stale:quiet/q-1", until="2999-01-01T00:00:00Z")
    on_bus = []
    published = asyncio.Event()  # the agent-failing alert was heard on the bus

    async def build():
        nc = await bus(collector.url)

        async def heard(msg):
            body = json.loads(msg.data)
            on_bus.append(body)
            if body.get("messageType") == "AlertFiring" and body["payload"]["rule"] == "agent-failing":
                published.set()

        await nc.subscribe("lucent.services.console.alerts", cb=heard)
        for service, instance in (("pricing", "p-1"), ("quiet", "q-1")):
            await nc.publish(f"lucent.services.{service}.health", envelope.encode(envelope.make(
                "HealthCheck", f"lucent.services.{service}.health", {"status": "ok", "interval_s": 0.3},
                sender={"serviceId": service, "instanceId": instance})))
        await js.add_stream(nc, {"name": "DEAD_LETTERS", "subjects": ["lucent.deadletter.>"],
                                 "storage": "memory"})
        await js.add_stream(nc, {"name": "AGENT_COORDINATION", "subjects": ["lucent.agents.>"],
                                 "storage": "memory"})
        await js.add_consumer(nc, "AGENT_COORDINATION", {
            "durable_name": "risk-assessment", "ack_policy": "explicit",
            "filter_subject": "lucent.agents.risk.>"})
        await asyncio.to_thread(collector.following_agents)  # jobs and acks are heard from now
        for _ in range(3):
            await nc.jetstream().publish("lucent.agents.risk.assessment", b"{}")
        sub = await nc.jetstream().pull_subscribe_bind("risk-assessment", "AGENT_COORDINATION")
        jobs = await sub.fetch(3, timeout=5)
        await jobs[0].term()  # 1 of 3 jobs failed: over the 10 % share
        for m in jobs[1:]:
            await m.ack_sync()
        for i in range(12):
            await nc.jetstream().publish(f"lucent.deadletter.S.c{i}", b"x")
        await nc.flush()
        return nc

    nc = run_keep(build())
    try:
        wanted = {"service-down:pricing/p-1", "service-down:quiet/q-1", "agent-failing:risk",
                  "deadletters-rate:DEAD_LETTERS"}
        wait_until(lambda: wanted <= {a.key for a in Alert.objects.all()}, what="fired")
        wait_until(lambda: any(b["rule"] == "service-down" and b["subject"] == "pricing/p-1"
                               for b in receiver.bodies), what="webhook got it, after 2 failures")
        hooks = Notification.objects.filter(channel="webhook:oncall")
        wait_until(lambda: not hooks.exclude(state=Notification.SENT).exists(), what="all sent")
        assert receiver.calls == len(receiver.bodies) + 2  # two failed, then all got through
        assert sum(hooks.values_list("attempts", flat=True)) >= len(hooks) + 2  # retried
        assert Alert.objects.get(key="service-down:pricing/p-1").severity == "critical"
        # The silenced one fired and is kept, but nobody was told.
        assert Alert.objects.filter(key="service-stale:quiet/q-1").exists()
        assert not Notification.objects.filter(alert__key="service-stale:quiet/q-1").exists()
        assert not any(b["subject"] == "quiet/q-1" and b["rule"] == "service-stale"
                       for b in receiver.bodies)
        try:  # the subscription's loop runs while this waits
            run_keep(asyncio.wait_for(published.wait(), 15))
        except TimeoutError:
            raise AssertionError("agent-failing never published on lucent.services.console.alerts;"
                                 f" heard {on_bus!r:.2000}") from None
        # Dead letters stop arriving: the rate falls and that alert resolves by itself.
        wait_until(lambda: Alert.objects.filter(key="deadletters-rate:DEAD_LETTERS",
                                                state=Alert.RESOLVED).exists(), timeout=20,
                   what="the dead-letter rate alert resolves")
    finally:
        run_keep(nc.close())
        receiver.shutdown()


def test_bus_unreachable_fires_and_resolves(rules, collector, fresh_server):
    wait_until(lambda: collector.snapshot.get("ok"), what="first sweep")
    fresh_server.stop()
    wait_until(lambda: "bus-unreachable:bus" in firing(), what="bus alert")
    fresh_server.start().wait()
    wait_until(lambda: "bus-unreachable:bus" not in firing(), timeout=30, what="bus alert resolves")
    assert Alert.objects.filter(key="bus-unreachable:bus").count() == 1


def test_operators_acknowledge_and_silence_viewers_cannot(rules, client, users):
    alert = Alert.objects.create(rule=Rule.objects.get(name="consumer-pending"), key="k:S/c",
                                 subject="S/c", severity="warning", message="50 pending")
    client.force_login(users["viewer"])
    assert client.post(f"/api/v1/alerts/{alert.pk}/ack/").status_code == 403
    assert client.post(f"/api/v1/alerts/{alert.pk}/silence/", {"minutes": 5}).status_code == 403
    alert.refresh_from_db()
    assert alert.acknowledged_by is None and not Silence.objects.exists()
    client.force_login(users["operator"])
    assert client.post(f"/api/v1/alerts/{alert.pk}/silence/", {"minutes": "x"}).status_code == 400
    assert client.post(f"/api/v1/alerts/{alert.pk}/ack/").json()["acknowledged_by"] == "operator"
    body = client.post(f"/api/v1/alerts/{alert.pk}/silence/", {"minutes": 30}).json()
    assert body["silenced_until"] is not None
    assert client.post("/api/v1/alerts/999999/ack/").status_code == 404
    outcomes = list(AuditRecord.objects.filter(action__startswith="alert.")
                    .order_by("id").values_list("outcome", flat=True))
    assert outcomes == ["refused", "refused", "failed", "ok", "ok", "failed"]
    page = client.post(f"/alerts/{alert.pk}/ack/").content.decode()
    assert "acknowledged by operator" in page


def test_metrics_export_firing_alerts(rules, client):
    from django.core.cache import cache

    Alert.objects.create(rule=Rule.objects.get(name="service-down"), key="service-down:a/b",
                         subject='a/"b"', severity="critical", message="down")
    cache.clear()
    text = client.get("/metrics").content.decode()
    assert 'lucent_alert_firing{rule="service-down",severity="critical",subject="a/\\"b\\""} 1' in text
    assert "# TYPE lucent_deadletters gauge" in text and "lucent_websocket_clients 0" in text


async def test_a_firing_alert_reaches_the_alerts_page_live(rules, collector):
    from asgiref.sync import sync_to_async

    from .test_live_ws import _connect, _receive_until, _session_cookie

    cookie = await sync_to_async(_session_cookie)()
    comm = await _connect("/ws/live/?panel=alerts", cookie)
    assert (await comm.connect())[0]
    nc = await bus(collector.url)
    try:
        await _receive_until(comm, 'id="alerts-panel"')  # the panel on connect
        await nc.publish("lucent.services.<b>svc</b>.health", envelope.encode(envelope.make(
            "HealthCheck", "x", {"status": "down"}, sender={"serviceId": "<b>svc</b>", "instanceId": "i"})))
        frame = await _receive_until(comm, "service-down")
        assert "&lt;b&gt;svc&lt;/b&gt;/i" in frame and "<b>svc</b>" not in frame
    finally:
        await comm.disconnect()
        await nc.close()


def test_slack_webhooks_get_text_and_a_dead_receiver_is_given_up_on(rules, settings):
    from alerts import notify

    settings.LUCENT_JOBS_INLINE = False  # deliver() by hand, one attempt at a time
    receiver = WebhookReceiver()
    Webhook.objects.create(name="slack", url=receiver.url, kind=Webhook.SLACK,
                                   min_severity="critical")
    Webhook.objects.create(name="gone", url="http://127.0.0.1:9/nothing-listens")
    alert = Alert.objects.create(rule=Rule.objects.get(name="service-down"), key="service-down:x/1",
                                 subject="x/1", severity="critical", message="no heartbeat <b>")
    try:
        made = {n.channel: n for n in notify.record(alert, "firing")}
        assert set(made) == {"bus", "webhook:slack", "webhook:gone"}
        assert notify.deliver(made["webhook:slack"].pk) is True
        assert receiver.bodies == [{"text": ":red_circle: [FIRING] critical service-down: x/1: "
                                            "no heartbeat <b>"}]
        for _ in range(notify.MAX_ATTEMPTS):
            notify.deliver(made["webhook:gone"].pk)
        failed = Notification.objects.get(pk=made["webhook:gone"].pk)
        assert failed.state == Notification.FAILED and failed.attempts == notify.MAX_ATTEMPTS
        assert "Connection refused" in failed.last_error or "URLError" in failed.last_error
        warning = Alert.objects.create(rule=Rule.objects.get(name="service-stale"), key="s:y",
                                       subject="y", severity="warning", message="stale")
        assert {n.channel for n in notify.record(warning, "firing")} == {"bus", "webhook:gone"}
    finally:
        receiver.shutdown()
