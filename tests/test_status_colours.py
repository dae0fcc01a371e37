"""Status colours follow the alert rules' thresholds, and states agree with their counts.

No bus is needed: the pages read the relay's copy of the snapshot, so each test hands
the relay a snapshot made by hand (as the collector would send it) and renders pages."""

import re
import time

import pytest

from agents.models import ServiceEvent
from agents.registry import ServiceRegistry as Registry
from alerts import thresholds
from alerts.models import Rule

pytestmark = pytest.mark.django_db


def _stream(name, usage_pct=0.0, retention="limits", consumers=1):
    return {"name": name, "subjects": [f"{name.lower()}.>"], "retention": retention,
            "messages": 10, "bytes": 1000, "msgs_in_per_s": 1.0, "usage_pct": usage_pct,
            "consumer_count": consumers, "pending": 0, "ack_pending": 0, "replicas": 1,
            "replicas_ok": True, "no_ack": False, "cluster": {"replicas": [], "leader": "n1"}}


def _consumer(stream, name, pending=0, ack_pending=0, max_ack_pending=1000, stalled=False):
    return {"stream": stream, "name": name, "durable": True, "filter_subjects": [],
            "num_pending": pending, "num_ack_pending": ack_pending,
            "max_ack_pending": max_ack_pending, "num_redelivered": 0, "num_waiting": 0,
            "delivered_stream_seq": 1, "ack_floor_stream_seq": 1, "delivered_per_s": 0.0,
            "acked_per_s": 0.0, "drain_s": None, "ack_policy": "explicit", "max_deliver": 5,
            "ack_wait_s": 30, "backoff_s": [], "stalled": stalled, "floor_stuck": False,
            "active_at": time.time() - 5}


def _agent(name, status, failures=0):
    return {"key": name, "name": name, "subject": f"lucent.agents.{name}.>", "status": status,
            "tasks": [], "msgs_per_s": 1.0, "out_per_s": 1.0, "acked_per_s": 1.0,
            "consumers": [], "instances": [], "instances_up": 0, "workers": 0, "in_flight": 0,
            "waiting": 0, "redeliveries": 0, "failures": failures, "mean_ms": None,
            "p95_ms": None, "last_seen": time.time()}


def _service(service, details, last_seen_ago=1.0):
    record = {"key": f"{service}/{service}-1", "service": service, "instance": f"{service}-1",
              "version": "1", "node": "n1", "reported": "ok", "interval_s": 5.0,
              "last_seen": time.time() - last_seen_ago, "details": details, "problems": []}
    status = Registry.status(record, time.time())
    return {**record, "status": status, "state": Registry.state(record, status)}


def _snapshot(**parts):
    snap = {"seq": 1, "at": time.time(), "ok": True, "error": None, "streams": {},
            "consumers": {}, "agents": {}, "agent_feed": {}, "services": {}, "hierarchy": {},
            "deadletters_1h": 0, "deadletters_1m": 0}
    snap.update(parts)
    return snap


@pytest.fixture
def live(fresh_relay, monkeypatch):
    """The relay's copy, set by the test; the relay never goes to a bus."""
    from alerts.defaults import install

    install(Rule)
    thresholds.forget()

    async def started():
        return None

    monkeypatch.setattr(fresh_relay, "ensure_started", started)

    def give(**parts):
        fresh_relay.snapshot = _snapshot(**parts)
        fresh_relay.received_at = time.time()
        return fresh_relay.snapshot

    yield give
    thresholds.forget()


def _class_of(page: str, element_id: str) -> str:
    m = re.search(rf'id="{element_id}"[^>]*class="([^"]*)"', page)
    assert m, f"no #{element_id}"
    return m.group(1)


def test_the_level_follows_the_enabled_rules(live):
    assert thresholds.level("stream_usage", 50) == "ok"
    assert thresholds.level("stream_usage", 85) == "warn"
    assert thresholds.level("stream_usage", 97) == "crit"
    assert thresholds.level("consumer_pending", 1000) == "ok"  # over, as the rule says
    assert thresholds.level("consumer_pending", 1001) == "warn"
    assert thresholds.level("ack_pending_near_max", 899, limit=1000) == "ok"
    assert thresholds.level("ack_pending_near_max", 900, limit=1000) == "warn"
    assert thresholds.level("deadletter_rate", 11) == "warn"
    assert thresholds.level("consumer_stalled", True) == "crit"
    # An edited rule counts after the cache is let go.
    Rule.objects.filter(name="consumer-pending").update(threshold=10, severity="critical")
    thresholds.forget()
    assert thresholds.level("consumer_pending", 11) == "crit"
    Rule.objects.filter(kind="stream_usage").update(enabled=False)
    thresholds.forget()
    assert thresholds.level("stream_usage", 99) == "ok"


def test_overview_cards_are_coloured_by_the_thresholds(viewer_client, live):
    live(consumers={"A/low": _consumer("A", "low", pending=5)}, streams={"A": _stream("A")},
         deadletters_1h=3, deadletters_1m=1)
    page = viewer_client.get("/").content.decode()
    assert "lvl-ok" in _class_of(page, "card-pending")
    assert "lvl-ok" in _class_of(page, "card-deadletters")

    live(consumers={"A/deep": _consumer("A", "deep", pending=5000)}, streams={"A": _stream("A")},
         deadletters_1h=44, deadletters_1m=30)
    page = viewer_client.get("/").content.decode()
    assert "lvl-warn" in _class_of(page, "card-pending")
    assert "lvl-warn" in _class_of(page, "card-deadletters")
    assert "30 in the last minute" in page


def test_stream_and_consumer_rows_use_the_same_thresholds(viewer_client, live, fresh_relay):
    live(streams={"LOW": _stream("LOW", 50), "MID": _stream("MID", 85), "HI": _stream("HI", 97)},
         consumers={"HI/slow": _consumer("HI", "slow", pending=5000, ack_pending=950),
                    "HI/ok": _consumer("HI", "ok", pending=3)})
    page = viewer_client.get("/streams/").content.decode()
    row = {n: re.search(rf'id="stream-{n}".*?</tr>', page, re.S).group(0) for n in ("LOW", "MID", "HI")}
    assert 'class="lvl-ok"' in row["LOW"]
    assert 'class="lvl-warn"' in row["MID"] and "lvl-crit" not in row["MID"]
    assert 'class="lvl-crit"' in row["HI"]
    from django.template.loader import render_to_string

    # The detail page's consumer rows are this fragment (its other parts need a real bus).
    page = "".join(render_to_string("fragments/consumer_row.html", {"c": c, "oob": False})
                   for c in fresh_relay.snapshot["consumers"].values())
    slow = re.search(r'id="consumer-HI-slow".*?</tr>', page, re.S).group(0)
    fine = re.search(r'id="consumer-HI-ok".*?</tr>', page, re.S).group(0)
    assert slow.count('class="lvl-warn"') == 2  # pending over 1,000; ack pending at 95% of max
    assert "lvl-warn" not in fine and "lvl-crit" not in fine


def test_an_agent_with_failures_is_not_green_working(viewer_client, live):
    live(agents={"pricing": _agent("pricing", "degraded", failures=25),
                 "billing": _agent("billing", "working")})
    page = viewer_client.get("/agents/").content.decode()
    pricing = re.search(r'id="agent-pricing".*?</tr>', page, re.S).group(0)
    billing = re.search(r'id="agent-billing".*?</tr>', page, re.S).group(0)
    assert "lvl-warn" in pricing and "degraded" in pricing
    assert "lvl-ok" not in pricing and ">working<" not in pricing
    assert "agent-working lvl-ok" in billing
    assert "1 degraded" in page and "1 working" in page
    overview = viewer_client.get("/").content.decode()
    assert "lvl-warn" in _class_of(overview, "card-agents") and "1 degraded" in overview


def test_the_activity_table_calls_an_agent_with_failures_degraded():
    from agents.activity import AgentActivity

    activity = AgentActivity()
    now = time.time()
    kind = activity._kind("pricing")
    for _ in range(100):
        kind.recent_jobs.add(now)
        kind.jobs_in.add(now)
    kind.failures.add(now - 1200)  # failed 20 minutes ago: too few of late to be failing
    record = activity._record("pricing", [], [], now)
    assert record["status"] == "degraded" and record["failures"] == 1


def test_a_service_with_an_open_circuit_breaker_is_degraded(viewer_client, live):
    open_ = _service("orders", {"circuitBreaker": "OPEN"})
    closed = _service("pay", {"circuitBreaker": "CLOSED"})
    assert open_["status"] == "up" and open_["state"] == "degraded"  # alive: /metrics says up
    assert closed["state"] == "up"
    live(services={open_["key"]: open_, closed["key"]: closed})
    page = viewer_client.get("/services/").content.decode()
    orders = re.search(r'id="service-orders/orders-1".*?</tr>', page, re.S).group(0)
    pay = re.search(r'id="service-pay/pay-1".*?</tr>', page, re.S).group(0)
    assert "status-degraded lvl-warn" in orders and "lvl-ok" not in orders
    assert "status-up lvl-ok" in pay
    assert "1 up" in page and "1 degraded" in page
    overview = viewer_client.get("/").content.decode()
    assert "lvl-warn" in _class_of(overview, "card-services") and "1 up" in overview


def test_circuit_breaker_closed_is_not_shown_critical(viewer_client, live):
    from datetime import UTC, datetime

    live()
    ServiceEvent.objects.create(kind=ServiceEvent.ALERT, service="orders", instance="orders-1",
                                at=datetime.now(UTC), severity="critical",
                                message="circuit breaker CLOSED", payload={})
    ServiceEvent.objects.create(kind=ServiceEvent.ALERT, service="pay", instance="pay-1",
                                at=datetime.now(UTC), severity="critical",
                                message="circuit breaker OPEN", payload={})
    page = viewer_client.get("/services/").content.decode()
    closed = re.search(r'<li[^>]*>(?:(?!</li>).)*circuit breaker CLOSED', page, re.S).group(0)
    opened = re.search(r'<li[^>]*>(?:(?!</li>).)*circuit breaker OPEN', page, re.S).group(0)
    assert "error" not in closed.split(">")[0] and "lvl-line-ok" in closed
    assert "lvl-line-crit error" in opened
