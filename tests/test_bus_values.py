"""Issue 12: values from the bus never break a page or an endpoint.

Hostile heartbeats, service events, agent jobs, hierarchy events, stream messages and
dead letters (tests/malformed.py) are published to a real bus with the collector
running; then every page and endpoint that shows them must answer 200, with JSON a
strict parser reads (no NaN, no Infinity).
"""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from agents.registry import MAX_DEPTH, ServiceRegistry, event_from, safe_value
from deadletters import index as dl_index
from deadletters.models import DeadLetter
from lucent_bus import deadletters as dl
from lucent_bus import envelope
from streams import topology

from .conftest import bus, run
from .malformed import CASES, VALUES, publish_raw, value_payloads

pytestmark = pytest.mark.django_db(transaction=True)


def _strict(text: str):
    """JSON as a browser reads it: NaN and Infinity are no JSON."""
    def refuse(name):
        raise AssertionError(f"{name} in a JSON response")

    return json.loads(text, parse_constant=refuse)


def _depth(value, depth: int = 0) -> int:
    if isinstance(value, dict):
        return max([_depth(v, depth + 1) for v in value.values()] or [depth + 1])
    if isinstance(value, list):
        return max([_depth(v, depth + 1) for v in value] or [depth + 1])
    return depth


# ---------------------------------------------------------------- the sanitiser

def test_safe_value_keeps_json_safe_bounded_values():
    assert safe_value({"a": math.inf, "b": -math.inf, "c": math.nan}) == {
        "a": "Infinity", "b": "-Infinity", "c": "NaN"}
    assert safe_value(10**30) == str(10**30) and safe_value(2**63 - 1) == 2**63 - 1
    assert safe_value(-(2**63) - 5) == str(-(2**63) - 5)
    assert safe_value(10**4000).startswith("9999") or safe_value(10**4000).startswith("1000")
    assert len(safe_value("x" * 100_000)) == 200
    assert safe_value("\ud800 half").encode("utf-8")  # a lone surrogate, escaped
    assert "\x00" not in safe_value("a\x00b")
    deep: list = []
    for _ in range(2000):
        deep = [deep]
    kept = safe_value({"deep": deep})
    assert _depth(kept) <= MAX_DEPTH + 1 and "…(deeper)" in json.dumps(kept, ensure_ascii=False)
    assert len(safe_value(list(range(5000)))) == 30
    json.dumps(kept, allow_nan=False)


def test_heartbeats_and_events_of_every_hostile_value_are_kept_safe():
    reg = ServiceRegistry(forget_s=3600, max_instances=100_000)
    for name, value in VALUES.items():
        for i, body in enumerate(value_payloads(value)):
            record = reg.heartbeat(f"lucent.services.v{i}.health", body, now=1.0)
            json.dumps(record, allow_nan=False)  # snapshot, API and /metrics can carry it
            assert math.isfinite(record["interval_s"]) and 0.1 <= record["interval_s"] <= 86_400
            assert len(json.dumps(record, ensure_ascii=False)) < 3_000, name
            event = event_from(f"lucent.services.v{i}.alerts", body)
            json.dumps(event.payload, allow_nan=False)
            assert event.message.encode("utf-8") and len(event.message) <= 2000, name
    for case in CASES:
        json.dumps(reg.heartbeat("lucent.services.case.health", case.payload, now=1.0),
                   allow_nan=False)
    assert reg.records(2.0)["v0/v0"]["status"] in ("up", "down", "stale")


# ---------------------------------------------------------------- everything, end to end

def _messages() -> tuple[list[tuple[str, dict, bytes]], int]:
    """(subject, headers, payload) of every hostile input, on every path the collector
    or a page reads; and how many land in the MAL stream."""
    bodies = [case.payload for case in CASES] + [
        body for value in VALUES.values() for body in value_payloads(value)]
    out: list[tuple[str, dict, bytes]] = []
    for i, body in enumerate(bodies):
        out.append((f"lucent.services.mal{i % 7}.health", {}, body))
        out.append((f"lucent.services.mal{i % 7}.alerts", {}, body))
        out.append((f"lucent.services.mal{i % 7}.config", {}, body))
        out.append((f"lucent.agents.mal{i % 3}.task", {}, body))
        out.append((f"lucent.hierarchy.node.n{i % 5}", {}, body))
    stored = 0
    for case in CASES:
        out.append((f"mal.{stored}", case.headers, case.payload))
        stored += 1
    for body in bodies[len(CASES):]:
        out.append((f"mal.{stored}", {}, body))
        stored += 1
    for case in CASES:
        out.append((dl.subject("MAL", "reader"), case.headers, case.payload))
    for body in bodies[len(CASES):]:
        out.append((dl.subject("MAL", "reader"), {}, body))
    return out, stored


async def _publish_everything(url: str) -> int:
    from lucent_bus import jetstream as js

    nc = await bus(url)
    try:
        await topology.apply(nc)
        await js.add_stream(nc, {"name": "MAL", "subjects": ["mal.>"], "storage": "file"})
        await asyncio.sleep(1.0)  # the collector follows the agent stream
        messages, stored = _messages()
        # Core subjects (heartbeats, events, hierarchy) get no PubAck: published on their own.
        core = [m for m in messages if m[0].startswith(("lucent.services.", "lucent.hierarchy."))]
        stream = [m for m in messages if m not in core]
        for subject, headers, payload in core:
            hdrs = {k: v for k, v in headers.items() if isinstance(v, str)} or None
            await nc.publish(subject, payload, headers=hdrs)
        # The issue's own case: a heartbeat kept for ever that once made the API answer 500.
        await nc.publish("lucent.services.inf.health", b'{"status":"up","latencyMs": Infinity}')
        await nc.flush()
        acks = await publish_raw(url, stream)
        assert all(a.get("seq") for a in acks), [a for a in acks if not a.get("seq")][:3]
        await dl_index.ensure_consumer(nc, dl.STREAM, dl_index.INDEX_CONSUMER)
        sub = await nc.jetstream().pull_subscribe_bind(dl_index.INDEX_CONSUMER, dl.STREAM)
        while await dl_index.index_batch(nc, sub):
            pass
        await sub.unsubscribe()
        return stored
    finally:
        await nc.close()


def test_every_page_and_endpoint_answers_with_hostile_values_on_the_bus(viewer_client, collector):
    stored = run(_publish_everything(collector.url))
    collector.wait_for(lambda s: s["streams"].get("MAL", {}).get("messages") == stored
                       and "inf/inf" in (s.get("services") or {}) and s.get("agents"),
                       timeout=20)
    letters = list(DeadLetter.objects.filter(stream="MAL").values_list("id", flat=True))
    assert len(letters) >= len(CASES)
    collector.wait_for(lambda s: True)  # one more sweep: the relay has the latest
    pages = ["/", "/streams/", "/streams/MAL/", "/services/", "/agents/", "/agents/hierarchy/",
             "/alerts/", "/deadletters/", "/agents/mal0/"]
    pages += [f"/streams/MAL/messages/?seq={seq}&count=50" for seq in range(1, stored + 1, 20)]
    pages += [f"/streams/MAL/messages/{seq}/" for seq in range(1, stored + 1)]
    endpoints = ["/api/v1/services/", "/api/v1/agents/", "/api/v1/streams/"]
    # The dead-letter pages are not this change's (streams/deadletter_*, envelope.py):
    # what they fail on is reported below, apart from the rest.
    dead_letter_pages = [f"/deadletters/{pk}/" for pk in letters]
    dead_letter_api = [f"/api/v1/deadletters/{pk}/" for pk in letters]
    broken: dict[str, str] = {}
    for path in pages + dead_letter_pages:
        try:
            response = viewer_client.get(path)
        except Exception as exc:  # the test client re-raises what the view raised
            broken[path] = f"{type(exc).__name__}: {exc}"[:200]
            continue
        if response.status_code != 200:
            broken[path] = str(response.status_code)
            continue
        assert len(response.content) < 2_000_000, (path, len(response.content))
        assert b"<script>alert(1)</script>" not in response.content, path
    for path in endpoints + dead_letter_api:
        try:
            response = viewer_client.get(path)
            assert response.status_code == 200, response.status_code
            _strict(response.content.decode())
        except Exception as exc:
            broken[path] = f"{type(exc).__name__}: {exc}"[:200]
    assert not broken, broken
    raw = viewer_client.get("/streams/MAL/messages/1/raw/")
    assert raw.status_code == 200 and raw["Content-Type"] == "application/octet-stream"
    services = _strict(viewer_client.get("/api/v1/services/").content.decode())
    assert next(r for r in services if r["service"] == "inf")["details"] == {"latencyMs": "Infinity"}
    metrics = viewer_client.get("/metrics")
    assert metrics.status_code == 200
    for line in metrics.content.decode().splitlines():
        assert not line.endswith((" inf", " nan", " Infinity", " NaN")), line


def test_a_websocket_panel_renders_hostile_services(collector):
    """The live services panel is rendered from the same records as the page."""
    from agents.views import panel
    from lucent_console.consumers import _fragment

    async def beats():
        nc = await bus(collector.url)
        for value in VALUES.values():
            for body in value_payloads(value):
                await nc.publish("lucent.services.ws.health", body)
        await nc.publish("lucent.services.env.health", envelope.encode(envelope.make(
            "HealthCheck", "lucent.services.env.health", {"status": "up"})))
        await nc.close()

    run(beats())
    snap = collector.wait_for(lambda s: "env/env" in (s.get("services") or {}))
    assert "services-panel" in _fragment("fragments/services_table.html", **panel(snap))
