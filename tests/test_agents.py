"""Agent activity: figures match what was published and acked; live feed; escaped names."""

import asyncio

import pytest
from asgiref.sync import sync_to_async

from agents.activity import AgentActivity, Window
from lucent_bus import envelope, watch
from lucent_bus import jetstream as js

from .conftest import bus, run
from .test_live_ws import _connect, _receive_until, _session_cookie

pytestmark = pytest.mark.django_db(transaction=True)
STREAM = "AGENT_COORDINATION"


def _job(subject: str, mtype: str = "RiskAssessmentJob", sender: str = "trading-service",
         correlation: str | None = None) -> tuple[bytes, dict]:
    env = envelope.make(mtype, subject, {"x": 1}, sender={"serviceId": sender},
                        correlation_id=correlation)
    return envelope.encode(env), envelope.headers_for(env)


async def _agent_bus(url: str, consumer: str = "risk-assessment", kind: str = "risk"):
    nc = await bus(url)
    await js.add_stream(nc, {"name": STREAM, "subjects": ["lucent.agents.>"], "storage": "memory"})
    await js.add_consumer(nc, STREAM, {"durable_name": consumer, "ack_policy": "explicit",
                                       "filter_subject": f"lucent.agents.{kind}.>",
                                       "max_deliver": 3, "ack_wait": 30_000_000_000})
    return nc


def test_ack_subjects_parse_in_both_formats():
    v1 = watch.parse_ack("$JS.ACK.S.w.2.7.5.1795744247847770027.0", b"-NAK")
    assert (v1.stream, v1.consumer, v1.delivered, v1.stream_seq, v1.kind) == ("S", "w", 2, 7, "nak")
    v2 = watch.parse_ack("$JS.ACK._.ACCHASH.S.w.1.9.9.1795744247847770027.0.tok", b"+TERM reason")
    assert (v2.stream, v2.stream_seq, v2.kind) == ("S", 9, "term")
    assert watch.parse_ack("$JS.ACK.S.w.1.1.1.x.0", b"") is None
    assert watch.parse_ack("$JS.ACK.S.w.1.1.1.1.0", b"?") is None


def test_windows_rates_timings_and_status():
    w = Window(10, 60)
    w.add(100.0)
    w.add(105.0, 2)
    w.add(131.0)
    assert w.total(131.0) == 4 and w.total(165.0) == 1 and w.total(200.0) == 0

    activity = AgentActivity()
    consumer = {"name": "risk-assessment", "stream": STREAM, "filter_subjects": ["lucent.agents.risk.>"],
                "num_ack_pending": 3, "num_pending": 5, "num_redelivered": 1, "stalled": False}
    for seq in range(1, 11):
        data, headers = _job("lucent.agents.risk.assessment")
        activity.job(seq, "lucent.agents.risk.assessment", data, headers, now=1000.0 + seq / 10)
    for seq in range(1, 5):  # published at 1000.1..1000.4, acked at 1001.0
        activity.ack(watch.Ack(STREAM, "risk-assessment", 1, seq, 1000.0 + seq / 10, "ack"), now=1001.0)
    activity.ack(watch.Ack(STREAM, "risk-assessment", 1, 5, 1000.5, "nak"), now=1001.0)
    activity.ack(watch.Ack(STREAM, "risk-assessment", 2, 5, 1000.5, "nak"), now=1001.2)
    activity.failure({"stream_seq": 6, "consumer": "risk-assessment"}, now=1001.0)
    activity.outbound(b'{"sender": {"serviceId": "risk-agent"}}', now=1001.0)
    agents, feed = activity.tables({f"{STREAM}/risk-assessment": consumer}, {
        "risk-agent/r1": {"service": "risk-agent", "instance": "r1", "status": "up"}}, now=1002.0)
    risk = agents["risk"]
    assert risk["msgs_per_s"] == 1.0 and risk["out_per_s"] == 0.1
    # in flight and waiting from the consumer; a redelivery is an outcome of a 2nd delivery
    assert (risk["in_flight"], risk["waiting"], risk["redeliveries"], risk["failures"]) == (3, 5, 1, 1)
    assert risk["consumers"] == ["risk-assessment"] and risk["instances"] == ["r1"]
    assert risk["mean_ms"] == 750.0 and risk["p95_ms"] == 900.0
    # 1 failure in 10 jobs is not over the failing share, but it is not green "working" either
    assert risk["status"] == "degraded"
    outcomes = {e["seq"]: e["outcome"] for e in feed.values()}
    assert outcomes[1] == "done" and outcomes[5] == "retrying" and outcomes[6] == "dead letter"
    assert outcomes[7] == "queued"
    activity.failure({"stream_seq": 7, "consumer": "risk-assessment"}, now=1001.5)
    assert activity.tables({}, {}, now=1002.0)[0]["risk"]["status"] == "failing"
    # Nothing happens: the records stay the same, so the snapshot delta stays empty.
    assert activity.tables({}, {}, now=1050.0) == activity.tables({}, {}, now=1050.5)


def test_agent_figures_match_what_was_published_and_acked(client, users, collector):
    client.force_login(users["viewer"])

    async def work():
        nc = await _agent_bus(collector.url)  # created after the collector started
        await asyncio.to_thread(collector.wait_for, lambda s: f"{STREAM}/risk-assessment"
                                in s["consumers"])
        await asyncio.to_thread(collector.following_agents)  # jobs and acks are heard from now
        for i in range(10):
            data, headers = _job("lucent.agents.risk.assessment", correlation=f"corr-{i}")
            await nc.jetstream().publish("lucent.agents.risk.assessment", data, headers=headers)
        sub = await nc.jetstream().pull_subscribe_bind("risk-assessment", STREAM)
        msgs = await sub.fetch(10, timeout=5)
        for m in msgs[:6]:
            await m.ack_sync()
        await msgs[6].nak()
        await msgs[7].term()
        again = await sub.fetch(1, timeout=5)
        await again[0].ack_sync()  # redelivered once, then done; 8 and 9 stay in flight
        event = envelope.make("RiskScored", "lucent.events.domain.risk.scored", {},
                              sender={"serviceId": "risk-agent"})
        await nc.publish("lucent.events.domain.risk.scored", envelope.encode(event))
        await nc.flush()
        await nc.close()

    run(work())
    snap = collector.wait_for(lambda s: (s.get("agents") or {}).get("risk", {}).get("failures") == 1
                              and s["agents"]["risk"]["in_flight"] == 2
                              and s["agents"]["risk"]["out_per_s"] > 0)
    feed = sorted(snap["agent_feed"].values(), key=lambda e: e["seq"])
    assert [e["outcome"] for e in feed] == ["done"] * 7 + ["dead letter", "queued", "queued"]
    assert feed[6]["deliveries"] == 2 and feed[0]["correlation_id"] == "corr-0"
    rows = {r["name"]: r for r in client.get("/api/v1/agents/").json()}
    risk = rows["risk"]
    assert {"name", "subject", "msgs_per_s", "in_flight", "failures", "last_seen"} <= set(risk)
    assert risk["subject"] == "lucent.agents.risk.>" and risk["in_flight"] == 2
    assert risk["failures"] == 1 and risk["waiting"] == 0 and risk["redeliveries"] == 1
    assert risk["msgs_per_s"] > 0 and risk["mean_ms"] is not None
    metrics = client.get("/metrics").content.decode()
    assert 'lucent_agent_in_flight{agent="risk"} 2' in metrics
    assert 'lucent_agent_failures_1h{agent="risk"} 1' in metrics
    page = client.get("/agents/risk/").content.decode()
    assert "chart-failures" in page and "risk-assessment" in page
    assert client.get("/agents/nope/").status_code == 404


def test_names_from_subjects_and_payloads_are_escaped(client, users, collector):
    client.force_login(users["viewer"])

    async def work():
        nc = await _agent_bus(collector.url, "evil", "<b>evil</b>")
        await asyncio.to_thread(collector.following_agents)
        data, headers = _job("lucent.agents.<b>evil</b>.job", mtype="<script>alert(1)</script>",
                             sender="<i>s</i>")
        await nc.jetstream().publish("lucent.agents.<b>evil</b>.job", data, headers=headers)
        await nc.close()

    run(work())
    collector.wait_for(lambda s: "<b>evil</b>" in (s.get("agent_feed") and
                                                   {e["kind"] for e in s["agent_feed"].values()} or {}))
    page = client.get("/agents/").content.decode()
    assert "&lt;b&gt;evil&lt;/b&gt;" in page and "<b>evil</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page
    assert "&lt;i&gt;s&lt;/i&gt;" in page


async def test_an_agent_message_reaches_the_socket_between_sweeps(collector):
    cookie = await sync_to_async(_session_cookie)()
    nc = await _agent_bus(collector.url)
    await asyncio.to_thread(collector.wait_for, lambda s: f"{STREAM}/risk-assessment" in s["consumers"])
    await asyncio.to_thread(collector.following_agents)
    collector.collector.interval = 60.0  # read after each sweep: after the next, none comes
    swept = await asyncio.to_thread(collector.next_sweep)
    comm = await _connect("/ws/live/?panel=agents", cookie)
    assert (await comm.connect())[0]
    try:
        await _receive_until(comm, 'id="agent-feed"')
        data, headers = _job("lucent.agents.risk.assessment", mtype="LiveJob")
        ack = await nc.jetstream().publish("lucent.agents.risk.assessment", data, headers=headers)
        frame = await _receive_until(comm, f'id="job-{ack.seq}"', timeout=10)
        assert "LiveJob" in frame
        # No sweep ran since: the job came by the event path (its snapshot keeps the
        # sweep's time and says so).
        assert collector.snapshot["at"] == swept["at"] and collector.snapshot["event"] is True
    finally:
        await comm.disconnect()
        await nc.close()
