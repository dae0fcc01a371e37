"""Issue 12: what the bus can make the console hold or send is bounded: message browser
pages, the service registry, alerts and notifications under a flood."""

from __future__ import annotations

import json
import time

import pytest

from agents.registry import UNTRACKED_KEY, ServiceRegistry
from alerts import defaults
from alerts.engine import Alerting
from alerts.models import Alert, Notification, Rule
from alerts.rules import GROUP_SUBJECT, Evaluator
from lucent_bus import envelope
from lucent_bus import jetstream as js

from .conftest import bus, run
from .support import wait_until

pytestmark = pytest.mark.django_db(transaction=True)
MB = 1_000_000


# ---------------------------------------------------------------- message browser

async def _big(url: str) -> None:
    nc = await bus(url)
    await js.add_stream(nc, {"name": "BIG", "subjects": ["big.>"], "storage": "file"})
    jsn = nc.jetstream()
    for i in range(20):
        if i % 2:
            body = json.dumps({"messageId": f"m-{i}", "messageType": "Big",
                               "payload": list(range(150_000))})[:MB - 2].encode()
            body = body[: body.rfind(b",")] + b"]}"  # still JSON, just under 1 MB
        else:
            body = (b"%02d" % i) * (MB // 2)
        await jsn.publish(f"big.{i}", body, headers={"X-Long": "h" * 5000})
    await nc.close()


@pytest.fixture
def big(collector):
    run(_big(collector.url))
    collector.wait_for(lambda s: s["streams"].get("BIG", {}).get("messages") == 20)
    return collector


def test_a_page_over_twenty_1mb_payloads_stays_under_1mb(viewer_client, big, settings):
    page = viewer_client.get("/streams/BIG/messages/?seq=1&count=20")
    assert page.status_code == 200
    assert len(page.content) < MB, len(page.content)
    html = page.content.decode()
    assert html.count('<article class="msg">') == 20
    assert html.count("the whole message</a>") == 20  # each body clipped, with a link
    assert 'href="/streams/BIG/messages/7/"' in html
    # count is capped at LUCENT_BROWSE_MAX_COUNT (50) whatever was asked
    assert settings.LUCENT_BROWSE_MAX_COUNT == 50
    many = viewer_client.get("/streams/BIG/messages/?seq=1&count=100")
    assert many.status_code == 200 and len(many.content) < MB
    # Larger previews: the page stops adding bodies at its budget and says how many it left.
    settings.LUCENT_BROWSE_PREVIEW_BYTES = 64 * 1024
    full = viewer_client.get("/streams/BIG/messages/?seq=1&count=20").content.decode()
    assert len(full.encode()) < 2 * settings.LUCENT_BROWSE_PAGE_BYTES
    assert full.count('<article class="msg">') == 20
    left = full.count("Body left out")
    assert left >= 10 and f"{left} message bodies left out" in full


def test_one_message_alone_is_capped_and_its_raw_bytes_download(viewer_client, big, settings):
    settings.LUCENT_MESSAGE_VIEW_BYTES = 100_000
    one = viewer_client.get("/streams/BIG/messages/2/")
    assert one.status_code == 200
    assert 100_000 < len(one.content) < 150_000
    assert "First 97.7" in one.content.decode() and "/streams/BIG/messages/2/raw/" in one.content.decode()
    raw = viewer_client.get("/streams/BIG/messages/2/raw/")
    assert raw.status_code == 200 and raw["Content-Type"] == "application/octet-stream"
    assert raw["Content-Disposition"] == 'attachment; filename="BIG-2.bin"'
    assert len(raw.content) > 990_000 and raw.content.startswith(b'{"messageId": "m-1"')
    assert viewer_client.get("/streams/BIG/messages/99/").status_code == 404
    assert viewer_client.get("/streams/BIG/messages/abc/").status_code == 400
    assert viewer_client.get("/streams/BIG/messages/99/raw/").status_code == 404


# ---------------------------------------------------------------- service registry

def _beat(service: str, instance: str, interval: float = 5.0) -> bytes:
    return envelope.encode(envelope.make(
        "HealthCheck", f"lucent.services.{service}.health", {"status": "ok", "interval_s": interval},
        sender={"serviceId": service, "instanceId": instance}))


def test_the_registry_forgets_the_silent_and_counts_what_it_cannot_keep():
    reg = ServiceRegistry(forget_s=100.0, max_instances=3)
    for i in range(5):
        reg.heartbeat("lucent.services.s.health", _beat("s", f"i-{i}"), now=10.0)
    records = reg.records(10.0)
    assert sorted(k for k in records if k != UNTRACKED_KEY) == ["s/i-0", "s/i-1", "s/i-2"]
    assert records[UNTRACKED_KEY] == {"key": UNTRACKED_KEY, "count": 2, "limit": 3, "at_least": False}
    reg.heartbeat("lucent.services.s.health", _beat("s", "i-4"), now=20.0)  # again: counted once
    reg.heartbeat("lucent.services.s.health", _beat("s", "i-0"), now=50.0)  # tracked: stays
    records = reg.records(115.0)  # i-1, i-2 and the untracked i-3 silent for over 100 s
    assert sorted(records) == ["s/i-0", UNTRACKED_KEY] and records[UNTRACKED_KEY]["count"] == 1
    reg.heartbeat("lucent.services.s.health", _beat("s", "i-4"), now=116.0)  # room again
    assert sorted(reg.records(116.0)) == ["s/i-0", "s/i-4"]


@pytest.fixture
def rules(db, settings):
    defaults.install(Rule)
    Rule.objects.update(for_s=0)
    settings.LUCENT_NOTIFY_PER_RULE_PER_MIN = 10
    return Rule.objects


def _services(n: int, status: str, now: float, prefix: str = "svc") -> dict:
    return {f"{prefix}/i-{i}": {"key": f"{prefix}/i-{i}", "service": prefix, "instance": f"i-{i}",
                                "status": status, "last_seen": now - 100}
            for i in range(n)}


def _judge(alerting: Alerting, snapshot: dict, now: float) -> None:
    fire, resolve = alerting.evaluator.step(snapshot, alerting.rules, now)
    if fire or resolve:
        alerting.record(fire, resolve)


def test_a_forgotten_instance_resolves_its_alert_and_tells_nobody(rules):
    alerting = Alerting()
    alerting.rules = list(Rule.objects.all())
    alerting.evaluator = Evaluator(now=0.0)
    _judge(alerting, {"ok": True, "services": _services(2, "down", 10.0)}, 10.0)
    assert set(Alert.objects.filter(state=Alert.FIRING).values_list("key", flat=True)) == {
        "service-down:svc/i-0", "service-down:svc/i-1"}
    # i-0 comes back (resolved, notified); i-1 is forgotten by the registry (resolved, silent).
    _judge(alerting, {"ok": True, "services": {"svc/i-0": {**_services(1, "up", 20.0)["svc/i-0"]}}},
           20.0)
    assert not Alert.objects.filter(state=Alert.FIRING).exists()
    resolved = dict(Notification.objects.filter(event="resolved").values_list("alert__key", "channel"))
    assert resolved == {"service-down:svc/i-0": "bus"}
    assert "forgotten" in Alert.objects.get(key="service-down:svc/i-1").message


def test_many_subjects_of_a_rule_make_one_grouped_alert(rules, settings):
    alerting = Alerting()
    alerting.rules = list(Rule.objects.all())
    alerting.evaluator = Evaluator(now=0.0, group_at=20)
    _judge(alerting, {"ok": True, "services": _services(412, "down", 10.0)}, 10.0)
    firing = list(Alert.objects.filter(state=Alert.FIRING))
    assert [a.key for a in firing] == [f"service-down:{GROUP_SUBJECT}"]
    assert firing[0].message.startswith("412 services down (service-down): svc/i-0, svc/i-1")
    assert "and 407 more" in firing[0].message and firing[0].value == 412
    # Below the cap again: the group resolves, the few left fire one by one.
    _judge(alerting, {"ok": True, "services": _services(3, "down", 20.0)}, 20.0)
    assert sorted(Alert.objects.filter(state=Alert.FIRING).values_list("key", flat=True)) == [
        "service-down:svc/i-0", "service-down:svc/i-1", "service-down:svc/i-2"]


def test_notifications_are_rate_limited_per_rule_and_the_rest_counted(rules, client, settings):
    alerting = Alerting()
    alerting.rules = list(Rule.objects.all())
    alerting.evaluator = Evaluator(now=0.0, group_at=100)
    _judge(alerting, {"ok": True, "services": _services(30, "down", 10.0)}, 10.0)
    assert Alert.objects.filter(state=Alert.FIRING).count() == 30
    assert Notification.objects.filter(channel="bus").count() == 10
    suppressed = Notification.objects.get(state=Notification.SUPPRESSED)
    assert suppressed.count == 20 and "over 10 a minute" in suppressed.last_error
    _judge(alerting, {"ok": True, "services": _services(30, "up", 20.0)}, 20.0)  # all resolve
    assert Notification.objects.filter(channel="bus").count() == 10  # still within the minute
    assert Notification.objects.get(state=Notification.SUPPRESSED).count == 50
    from django.core.cache import cache

    cache.delete("metrics-database")
    text = client.get("/metrics").content.decode()
    assert 'lucent_notifications_suppressed_total{rule="service-down"} 50' in text


# ---------------------------------------------------------------- a flood, end to end

def test_3000_fake_services_going_silent_stay_bounded(rules, viewer_client, collector, settings):
    settings.LUCENT_SERVICE_MAX = 1000
    settings.LUCENT_ALERT_GROUP_AT = 20
    started = time.monotonic()

    async def flood():
        nc = await bus(collector.url)
        for i in range(3000):
            await nc.publish(f"lucent.services.flood{i}.health", _beat(f"flood{i}", "x", 0.3))
        await nc.flush()
        await nc.close()

    run(flood())
    # The real collector's own heartbeat (console/collector) holds a place too: tracked or
    # not, 3,001 instances for 1,000 places leave 2,001 untracked.
    snap = collector.wait_for(lambda s: (s.get("services") or {}).get(UNTRACKED_KEY, {}).get("count")
                              == 2001, timeout=20)
    assert len(snap["services"]) == 1001
    wait_until(lambda: Alert.objects.filter(key=f"service-down:{GROUP_SUBJECT}",
                                            state=Alert.FIRING).exists(),
               timeout=20, what="one grouped service-down alert")
    time.sleep(1.0)  # a few more sweeps: nothing more may fire
    assert Alert.objects.count() < 25
    assert Alert.objects.filter(state=Alert.FIRING).count() < 25
    group = Alert.objects.get(key=f"service-down:{GROUP_SUBJECT}", state=Alert.FIRING)
    down = 1000 - ("console/collector" in collector.snapshot["services"])  # the console is up
    assert group.value == down and group.message.startswith(f"{down:,} services down")
    minutes = (time.monotonic() - started) / 60 + 1
    for rule in Rule.objects.all():
        sent = Notification.objects.filter(alert__rule=rule, channel="bus").count()
        assert sent <= settings.LUCENT_NOTIFY_PER_RULE_PER_MIN * minutes, (rule.name, sent)
    overview = viewer_client.get("/")
    assert overview.status_code == 200 and len(overview.content) < 60_000, len(overview.content)
    assert "2001 more instances not tracked (limit 1000)" in overview.content.decode()
    services = viewer_client.get("/services/").content.decode()
    assert services.count("2001 more instances not tracked (limit 1000)") == 1
    assert services.count('<tr id="service-') == 1000
    alerts_page = viewer_client.get("/alerts/")
    assert alerts_page.status_code == 200 and len(alerts_page.content) < 100_000
    metrics = viewer_client.get("/metrics").content.decode()
    assert "lucent_service_instances_untracked 2001" in metrics
