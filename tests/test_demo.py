"""The simulated services on a real bus: request/reply, traffic, dead letters."""

import asyncio
import json

from agents import demo
from lucent_bus import deadletters, envelope
from lucent_bus import jetstream as js
from streams import topology


async def _run_demo(nc, config):
    d = demo.Demo(nc, config)
    task = asyncio.create_task(d.run())
    await asyncio.sleep(0.2)  # subscriptions in place
    return d, task


async def _stop(d, task):
    d.stop.set()
    await asyncio.wait_for(task, 10)


async def test_request_reply_through_commands_reaches_the_service(fresh_nc):
    await topology.apply(fresh_nc)
    d, task = await _run_demo(fresh_nc, demo.DemoConfig(commands_per_s=0.01))
    try:
        command = envelope.make("ExecuteTradeCommand", "lucent.commands.trading.execute",
                                {"command": "execute_trade", "data": {"pair": "ETH-USDC"}})
        reply = await fresh_nc.request("lucent.commands.trading.execute",
                                       envelope.encode(command), timeout=2)
        answer = envelope.decode(reply.data)
        assert answer.message_type == "TradeResult"  # the service, not a PubAck
        assert answer.causation_id == command["messageId"]
        assert "stream" not in json.loads(reply.data)
        # ... and COMMANDS still keeps the command (no_ack does not mean not stored).
        await asyncio.sleep(0.1)
        info = await js.stream_info(fresh_nc, "COMMANDS")
        assert info["state"]["messages"] >= 1
    finally:
        await _stop(d, task)


async def test_a_stream_that_acks_answers_requests_itself(fresh_nc):
    """The ADR's trap, shown on the wire: without no_ack the PubAck wins."""
    await js.add_stream(fresh_nc, {"name": "ACKING", "subjects": ["lucent.commands.>"],
                                   "storage": "memory"})
    async def service(msg):
        await asyncio.sleep(0.05)
        await msg.respond(b'{"from": "service"}')

    sub = await fresh_nc.subscribe("lucent.commands.trading.execute", cb=service)
    reply = await fresh_nc.request("lucent.commands.trading.execute", b"{}", timeout=2)
    assert json.loads(reply.data) == {"stream": "ACKING", "seq": 1}
    await sub.unsubscribe()


async def test_demo_produces_dead_letters_and_advisories_within_a_minute(fresh_nc):
    await topology.apply(fresh_nc)
    d, task = await _run_demo(fresh_nc, demo.DemoConfig(
        commands_per_s=5, poison_share=0.5, transient_share=0.2, terminate_share=0.5,
        heartbeat_s=1))
    seen = set()
    try:
        for _ in range(120):
            await asyncio.sleep(0.5)
            adv = await js.stream_info(fresh_nc, "LUCENT_ADVISORIES", subjects_filter=">")
            seen = {".".join(s.split(".")[:5]) for s in (adv["state"].get("subjects") or {})}
            dl = await js.stream_info(fresh_nc, "DEAD_LETTERS")
            if len(seen) == 2 and dl["state"]["messages"] > 0:
                break
        assert seen == {"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES",
                        "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED"}
        # An explicit dead letter carries the failed job and where it came from.
        first = await js.get_message(fresh_nc, "DEAD_LETTERS", dl["state"]["first_seq"])
        message = first["message"]
        assert message["subject"].startswith("lucent.deadletter.AGENT_COORDINATION.")
        import base64
        headers = base64.b64decode(message["hdrs"]).decode()
        assert deadletters.H_REASON in headers and "explicit" in headers
        job = envelope.decode(base64.b64decode(message["data"]))
        assert job.kind == "envelope" and job.message_type.endswith("Job")
        # Every other kind of traffic flowed too.
        streams = {s["config"]["name"]: s["state"] for s in await js.list_streams(fresh_nc)}
        assert streams["COMMANDS"]["messages"] > 0
        assert streams["AGENT_COORDINATION"]["messages"] > 0
        assert d.counts.get("published", 0) > 0
        events = await js.consumer_info(fresh_nc, "DOMAIN_EVENTS", "eventstore-bridge")
        assert events["delivered"]["stream_seq"] > 0
        hierarchy = await js.consumer_info(fresh_nc, "HIERARCHY", "hierarchy-propagator")
        assert hierarchy["delivered"]["stream_seq"] > 0
    finally:
        await _stop(d, task)


async def test_demo_sends_heartbeats_for_every_service(fresh_nc):
    await topology.apply(fresh_nc)
    got = {}

    async def on_health(msg):
        got[msg.subject.split(".")[2]] = envelope.decode(msg.data)

    await fresh_nc.subscribe("lucent.services.*.health", cb=on_health)
    d, task = await _run_demo(fresh_nc, demo.DemoConfig(commands_per_s=0.5, heartbeat_s=0.5))
    try:
        for _ in range(40):
            if set(demo.SERVICES) <= set(got):
                break
            await asyncio.sleep(0.1)
        assert set(demo.SERVICES) <= set(got)
        beat = got["trading-service"]
        assert beat.message_type == "HealthCheck"
        assert beat.envelope["payload"]["status"] == "ok"
        assert beat.sender_name == "trading-service"
    finally:
        await _stop(d, task)
