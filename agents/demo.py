"""Simulated Lucent services: real traffic for every console view.

Built on the ADR's patterns and the envelope module:

- a gateway sends ``ExecuteTradeCommand`` by request/reply to the trading
  service (``lucent.commands.trading.execute``; COMMANDS stores it with no_ack);
- the trading service answers and publishes ``TradeExecutedEvent`` and
  ``BalanceUpdatedEvent`` domain events with ``Nats-Msg-Id``;
- the event-store bridge and balance processor consume DOMAIN_EVENTS (interest);
- each trade queues agent jobs on AGENT_COORDINATION; the yield, risk,
  execution and training agents consume them with explicit acks. A share of
  jobs is poison: retried with ``nak`` and backoff until ``max_deliver`` runs out
  (a MAX_DELIVERIES advisory) or, on the last try, dead-lettered explicitly to
  ``lucent.deadletter.<stream>.<consumer>`` and terminated (MSG_TERMINATED);
- edge nodes publish hierarchy events that a propagator rolls up
  node -> cluster -> site -> global (HIERARCHY is a work queue);
- every service sends heartbeats on ``lucent.services.<service>.health`` and now
  and then an alert or a config update, and answers a ping on
  ``lucent.services.<service>.ping`` (the console's probe) with a small reply,
  doing nothing else: no stream stores it, no order, no job.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import resource
import time
import uuid
from dataclasses import dataclass

from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from lucent_bus import cancel, deadletters, envelope

log = logging.getLogger("lucent.demo")

VERSION = "1.2.3"
AGENTS = {
    # consumer name: (subject, message type, service name)
    "yield-analysis": ("lucent.agents.yield.analysis", "YieldCalculationJob", "yield-agent"),
    "risk-assessment": ("lucent.agents.risk.assessment", "RiskAssessmentJob", "risk-agent"),
    "execution-optimization": ("lucent.agents.execution.optimization",
                               "ExecutionOptimizationJob", "execution-agent"),
    "training-worker": ("lucent.agents.training.lstm", "ModelTrainingJob", "training-agent"),
}
SERVICES = ["trading-service", "portfolio-service", "eventstore-bridge",
            "hierarchy-propagator"] + [a[2] for a in AGENTS.values()]
PAIRS = ["ETH-USDC", "BTC-USDC", "SOL-USDC", "ARB-ETH"]


@dataclass
class DemoConfig:
    commands_per_s: float = 1.0
    poison_share: float = 0.05  # jobs that fail on every delivery
    transient_share: float = 0.10  # jobs that fail once, then succeed
    terminate_share: float = 0.5  # poison jobs dead-lettered + term() on their last try
    heartbeat_s: float = 5.0
    nodes: int = 4
    hierarchy_per_s: float = 1.0
    alert_every_s: float = 45.0

    @classmethod
    def from_env(cls) -> DemoConfig:
        def f(name: str, default: float) -> float:
            return float(os.getenv(name, default))
        return cls(
            commands_per_s=f("LUCENT_DEMO_RATE", cls.commands_per_s),
            poison_share=f("LUCENT_DEMO_POISON", cls.poison_share),
            transient_share=f("LUCENT_DEMO_TRANSIENT", cls.transient_share),
            heartbeat_s=f("LUCENT_DEMO_HEARTBEAT", cls.heartbeat_s),
        )


def sender(service: str, node: str = "edge-node-001") -> dict:
    return {"serviceId": service, "instanceId": f"{service}-{os.getpid()}",
            "version": VERSION, "nodeId": node}


class Demo:
    def __init__(self, nc: Client, config: DemoConfig | None = None) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.config = config or DemoConfig()
        self.stop = asyncio.Event()
        self.counts: dict[str, int] = {}
        self.breaker = {s: "CLOSED" for s in SERVICES}

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    async def run(self) -> None:
        tasks = [
            self._loop(self.gateway, 1 / self.config.commands_per_s),
            self._loop(self.edge_nodes, 1 / self.config.hierarchy_per_s),
            self._loop(self.heartbeats, self.config.heartbeat_s),
            self._loop(self.alerts, self.config.alert_every_s),
            self.consume("DOMAIN_EVENTS", "eventstore-bridge", self.store_event),
            self.consume("DOMAIN_EVENTS", "balance-processor", self.process_balance),
            self.consume("HIERARCHY", "hierarchy-propagator", self.propagate),
        ] + [self.consume("AGENT_COORDINATION", name, self.agent_job) for name in AGENTS]
        await self.nc.subscribe("lucent.commands.trading.execute", "trading-service",
                                cb=self.trading_service)
        await self.nc.subscribe("lucent.commands.portfolio.rebalance", "portfolio-service",
                                cb=self.portfolio_service)
        await self.answer_pings()
        running = [asyncio.create_task(t) for t in tasks]
        try:
            await self.stop.wait()
        finally:
            for t in running:
                t.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _loop(self, step, interval: float) -> None:
        """Run ``step`` every ``interval`` seconds; survive a bus that goes away."""
        while not self.stop.is_set():
            cancel.check()
            started = time.monotonic()
            try:
                await step()
            except (TimeoutError, NatsTimeout, NoRespondersError, ConnectionError) as exc:
                log.debug("demo step %s: %s", step.__name__, exc)
            except Exception:
                log.exception("demo step %s failed", step.__name__)
            await asyncio.sleep(max(0.0, interval * random.uniform(0.7, 1.3)
                                    - (time.monotonic() - started)))

    # ----------------------------------------------------------- request/reply

    async def gateway(self) -> None:
        side = random.choice(["buy", "sell"])
        command = envelope.make(
            "ExecuteTradeCommand", "lucent.commands.trading.execute",
            {"command": "execute_trade", "data": {
                "userId": f"user-{random.randint(100, 999)}", "pair": random.choice(PAIRS),
                "side": side, "amount": round(random.uniform(0.1, 5), 3),
                "orderType": "market", "slippage": 0.5}},
            sender=sender("api-gateway"),
            reply_to="lucent.responses.trading",
            jetstream={"streamName": "COMMANDS", "ackPolicy": "explicit", "maxDeliveries": 3},
        )
        reply = await self.nc.request("lucent.commands.trading.execute", envelope.encode(command),
                                      timeout=2, headers=envelope.headers_for(command))
        self.count("commands")
        result = json.loads(reply.data)
        if random.random() < 0.1:
            await self.nc.request("lucent.commands.portfolio.rebalance", envelope.encode(
                envelope.make("RebalancePortfolioCommand", "lucent.commands.portfolio.rebalance",
                              {"userId": command["payload"]["data"]["userId"]},
                              sender=sender("api-gateway"),
                              correlation_id=command["correlationId"])), timeout=2)
        return result

    async def trading_service(self, msg) -> None:
        command = envelope.decode(msg.data, msg.headers)
        data = (command.envelope or {}).get("payload", {}).get("data", {})
        trade_id = str(uuid.uuid4())
        result = envelope.make(
            "TradeResult", msg.reply or "", {"tradeId": trade_id, "status": "filled",
                                              "price": round(random.uniform(10, 4000), 2)},
            sender=sender("trading-service"), correlation_id=command.correlation_id,
            causation_id=command.message_id,
        )
        await msg.respond(envelope.encode(result))
        executed = envelope.make(
            "TradeExecutedEvent", "lucent.events.domain.trade.executed",
            {"tradeId": trade_id, **data}, sender=sender("trading-service"),
            correlation_id=command.correlation_id, causation_id=command.message_id)
        await self.publish(executed)
        await self.publish(envelope.make(
            "BalanceUpdatedEvent", "lucent.events.domain.portfolio.balance_updated",
            {"userId": data.get("userId"), "balance": round(random.uniform(0, 1e5), 2)},
            sender=sender("portfolio-service"), correlation_id=command.correlation_id,
            causation_id=executed["messageId"]))
        for consumer, (subject, mtype, _service) in AGENTS.items():
            if consumer == "training-worker" and random.random() > 0.1:
                continue
            roll = random.random()
            fate = ("poison" if roll < self.config.poison_share else
                    "transient" if roll < self.config.poison_share + self.config.transient_share
                    else "ok")
            await self.publish(envelope.make(
                mtype, subject, {"tradeId": trade_id, "pair": data.get("pair"),
                                 "simulate": fate},
                sender=sender("trading-service"), correlation_id=command.correlation_id,
                causation_id=executed["messageId"],
                metadata={"hierarchy_level": "node", "max_retries": 2}))

    async def portfolio_service(self, msg) -> None:
        command = envelope.decode(msg.data, msg.headers)
        await msg.respond(envelope.encode(envelope.make(
            "RebalanceResult", msg.reply or "", {"status": "accepted"},
            sender=sender("portfolio-service"), correlation_id=command.correlation_id,
            causation_id=command.message_id)))

    async def answer_pings(self) -> None:
        """Each service answers ``lucent.services.<service>.ping`` (agents.probe's
        default); a queue group, so several demo processes answer a ping once."""
        for service in SERVICES:
            async def pong(msg, service=service) -> None:
                ping = envelope.decode(msg.data, msg.headers)
                await msg.respond(envelope.encode(envelope.make(
                    "PingReply", msg.reply or "", {"pong": True, "service": service,
                                                   "version": VERSION},
                    sender=sender(service), correlation_id=ping.correlation_id,
                    causation_id=ping.message_id)))
            await self.nc.subscribe(f"lucent.services.{service}.ping", service, cb=pong)

    async def publish(self, env: dict) -> None:
        await self.js.publish(env["subject"], envelope.encode(env),
                              headers=envelope.headers_for(env), timeout=5)
        self.count("published")

    # ----------------------------------------------------------- consumers

    async def consume(self, stream: str, consumer: str, handle) -> None:
        """Pull from a declared durable consumer forever, a batch at a time."""
        sub = None
        while not self.stop.is_set():
            cancel.check()
            try:
                if sub is None:
                    sub = await self.js.pull_subscribe_bind(consumer, stream)
                msgs = await sub.fetch(10, timeout=1)
            except (TimeoutError, NatsTimeout):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("demo consumer %s/%s: %s", stream, consumer, exc)
                await asyncio.sleep(1)
                continue
            for msg in msgs:
                try:
                    await handle(msg, stream, consumer)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("demo handler %s failed", consumer)

    async def store_event(self, msg, stream, consumer) -> None:
        await asyncio.sleep(random.uniform(0.001, 0.01))
        await msg.ack()

    async def process_balance(self, msg, stream, consumer) -> None:
        await msg.ack()

    async def agent_job(self, msg, stream: str, consumer: str) -> None:
        job = envelope.decode(msg.data, msg.headers)
        fate = ((job.envelope or {}).get("payload") or {}).get("simulate", "ok")
        meta = msg.metadata
        delivered = meta.num_delivered
        await asyncio.sleep(random.uniform(0.02, 0.3 if consumer != "training-worker" else 1.5))
        failed = fate == "poison" or (fate == "transient" and delivered == 1)
        if not failed:
            await msg.ack()
            self.count(f"ok.{AGENTS[consumer][2]}")
            if consumer == "yield-analysis" and random.random() < 0.3:
                await self.publish(envelope.make(
                    "YieldDetectedEvent", "lucent.events.domain.yield.detected",
                    {"apy": round(random.uniform(1, 25), 2)}, sender=sender("yield-agent"),
                    correlation_id=job.correlation_id, causation_id=job.message_id))
            return
        self.count(f"failed.{AGENTS[consumer][2]}")
        max_deliver = 3
        last_try = delivered >= max_deliver
        if last_try and random.random() < self.config.terminate_share:
            # The ADR's handleFailedMessage: keep the payload, then terminate.
            await self.js.publish(
                deadletters.subject(stream, consumer), msg.data,
                headers=deadletters.headers(
                    msg.headers, stream=stream, seq=meta.sequence.stream, subject=msg.subject,
                    consumer=consumer, deliveries=delivered, reason=deadletters.REASON_EXPLICIT,
                    error=f"{AGENTS[consumer][2]}: simulated failure processing {job.message_type}"),
                timeout=5)
            await msg.term()
            self.count("dead_lettered")
        else:
            await msg.nak(delay=0.5 * delivered)

    async def propagate(self, msg, stream, consumer) -> None:
        """Roll hierarchy events up one level now and then."""
        await msg.ack()
        level = msg.subject.split(".")[2]
        event = envelope.decode(msg.data, msg.headers)
        up = {"node": "cluster", "cluster": "site", "site": "global"}.get(level)
        if up and random.random() < 0.3:
            ident = {"cluster": f"cluster-{random.randint(1, 2)}", "site": "site-1",
                     "global": None}[up]
            subject = f"lucent.hierarchy.{up}" + (f".{ident}" if ident else "")
            await self.publish(envelope.make(
                f"{up.capitalize()}AggregateEvent", subject,
                {"from": msg.subject, "level": up}, sender=sender("hierarchy-propagator"),
                correlation_id=event.correlation_id, causation_id=event.message_id,
                metadata={"hierarchy_level": up}))

    async def edge_nodes(self) -> None:
        node = f"edge-node-{random.randint(1, self.config.nodes):03d}"
        await self.publish(envelope.make(
            "NodeMetricsEvent", f"lucent.hierarchy.node.{node}",
            {"cpu": round(random.uniform(5, 95), 1), "latencyMs": round(random.uniform(0.1, 3), 2)},
            sender=sender("edge-agent", node), metadata={"hierarchy_level": "node"}))

    # ----------------------------------------------------------- health

    async def heartbeats(self) -> None:
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        for service in SERVICES:
            await self.nc.publish(f"lucent.services.{service}.health", envelope.encode(envelope.make(
                "HealthCheck", f"lucent.services.{service}.health",
                {"status": "ok", "service": service, "version": VERSION,
                 "nodeId": "edge-node-001", "interval_s": self.config.heartbeat_s,
                 "connection": "connected" if self.nc.is_connected else "reconnecting",
                 "circuitBreaker": self.breaker[service],
                 "memory_mb": round(rss_mb, 1),
                 "processed": self.counts.get(f"ok.{service}", 0)},
                sender=sender(service))))

    async def alerts(self) -> None:
        service = random.choice(SERVICES)
        if random.random() < 0.5:
            self.breaker[service] = random.choice(["OPEN", "HALF_OPEN", "CLOSED"])
            kind, body = "AlertRaised", {"severity": random.choice(["warning", "critical"]),
                                         "message": f"circuit breaker {self.breaker[service]}"}
            subject = f"lucent.services.{service}.alerts"
        else:
            kind, body = "ConfigUpdated", {"key": "max_batch", "value": random.choice([10, 50, 100])}
            subject = f"lucent.services.{service}.config"
        await self.nc.publish(subject, envelope.encode(envelope.make(
            kind, subject, body, sender=sender(service))))


async def run(nc: Client, config: DemoConfig | None = None, stop: asyncio.Event | None = None) -> Demo:
    demo = Demo(nc, config)
    if stop is not None:
        demo.stop = stop
    await demo.run()
    return demo
