"""The Lucent bus topology as code: ADR-003's streams with the ADR's intent.

The ADR as written has traps (see DEVELOPERS.md and README.md); ``DECLARED``
is what it means, ``ADR_LITERAL`` what it says. ``apply`` provisions the
declaration idempotently, ``diff`` shows drift, ``lint`` explains the traps it
finds on a live bus. All NATS I/O goes through ``lucent_bus``.

Long because it is the topology as code: the declared streams and consumers, `apply`,
`diff` and the `lint` that explains each of the ADR's traps; they read together.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

from nats.aio.client import Client

from lucent_bus import jetstream as js
from lucent_bus import lease, subjects

log = logging.getLogger("lucent.topology")

SECOND = 1_000_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR

# Subjects the ADR publishes (examples from ADR-003), used to show what a
# single-token ``*`` filter misses.
ADR_SUBJECTS = (
    "lucent.commands.trading.execute",
    "lucent.commands.portfolio.rebalance",
    "lucent.commands.analytics.calculate",
    "lucent.events.domain.user.created",
    "lucent.events.domain.trade.executed",
    "lucent.events.domain.yield.detected",
    "lucent.events.domain.portfolio.balance_updated",
    "lucent.agents.yield.analysis",
    "lucent.agents.risk.assessment",
    "lucent.agents.execution.optimization",
    "lucent.agents.training.lstm",
    "lucent.hierarchy.node.edge-node-001",
    "lucent.hierarchy.cluster.cluster-1",
    "lucent.hierarchy.site.site-1",
    "lucent.hierarchy.global",
)
# Subjects served by request/reply: a stream that stores them must not ack.
REQUEST_SUBJECTS = ("lucent.commands.>",)

ADVISORY_SUBJECTS = [
    "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>",
    "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.>",
]


def worker(name: str, filter_subject: str | None, **extra) -> dict:
    """A durable pull consumer with explicit acks and bounded redelivery."""
    config = {
        "durable_name": name,
        "ack_policy": "explicit",
        "deliver_policy": "all",
        "max_deliver": 3,
        "ack_wait": 30 * SECOND,
        "max_ack_pending": 1000,
    }
    if filter_subject:
        config["filter_subject"] = filter_subject
    config.update(extra)
    if config.get("backoff"):
        # The server replaces ack_wait by the first backoff step; declare what it keeps.
        config["ack_wait"] = config["backoff"][0]
    return config


@dataclass
class StreamSpec:
    config: dict
    consumers: list[dict] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.config["name"]


def stream(name: str, subjects_: list[str], consumers: list[dict] | None = None, **config) -> StreamSpec:
    base = {
        "name": name,
        "subjects": subjects_,
        "retention": "limits",
        "storage": "file",
        "num_replicas": 1,
        "discard": "old",
        "duplicate_window": 2 * MINUTE,
    }
    base.update(config)
    return StreamSpec(base, consumers or [])


DECLARED: list[StreamSpec] = [
    stream(
        "DOMAIN_EVENTS", ["lucent.events.domain.>"],
        retention="interest", num_replicas=3,
        # Interest retention keeps a message only while a consumer wants it:
        # these are the readers the ADR names, so events are not dropped.
        consumers=[
            worker("eventstore-bridge", "lucent.events.domain.>"),
            worker("balance-processor", "lucent.events.domain.portfolio.>"),
        ],
    ),
    stream(
        "COMMANDS", ["lucent.commands.>"], max_age=HOUR,
        # Without no_ack the stream answers every request with its PubAck
        # before the service can: request/reply would never reach the service.
        no_ack=True,
    ),
    stream(
        "AGENT_COORDINATION", ["lucent.agents.>"], max_age=DAY,
        consumers=[
            worker("yield-analysis", "lucent.agents.yield.>", backoff=[2 * SECOND, 5 * SECOND]),
            worker("risk-assessment", "lucent.agents.risk.>", backoff=[2 * SECOND, 5 * SECOND]),
            worker("execution-optimization", "lucent.agents.execution.>",
                   backoff=[2 * SECOND, 5 * SECOND]),
            worker("training-worker", "lucent.agents.training.>",
                   backoff=[10 * SECOND, 30 * SECOND]),
        ],
    ),
    stream(
        "HIERARCHY", ["lucent.hierarchy.>"], retention="workqueue", num_replicas=3,
        consumers=[worker("hierarchy-propagator", "lucent.hierarchy.>")],
    ),
    stream(
        "DEAD_LETTERS", ["lucent.deadletter.>"], num_replicas=3,
        max_age=365 * DAY, duplicate_window=DAY,
        # Bulk replay reads dead letters a thousand at a time (batched DIRECT.GET).
        allow_direct=True,
        # The console's index reads every dead letter once (captured or explicit).
        consumers=[worker("deadletter-index", None, max_deliver=-1,
                          ack_wait=60 * SECOND, max_ack_pending=10_000)],
    ),
    stream(
        "LUCENT_ADVISORIES", ADVISORY_SUBJECTS, num_replicas=3, max_age=30 * DAY,
        # Durable: advisories published while the console is down wait here.
        consumers=[worker("deadletter-capture", None, max_deliver=-1, ack_wait=60 * SECOND,
                          max_ack_pending=10_000)],
    ),
]

# ADR-003 as written: one-token filters, replicas=3 whatever the cluster, an
# interest stream with no consumer, commands stored by a stream that acks.
ADR_LITERAL: list[StreamSpec] = [
    stream("DOMAIN_EVENTS", ["lucent.events.domain.*"], retention="interest", num_replicas=3),
    stream("COMMANDS", ["lucent.commands.*"], max_age=HOUR),
    stream("AGENT_COORDINATION", ["lucent.agents.*"], max_age=DAY),
    stream("HIERARCHY", ["lucent.hierarchy.*"], retention="workqueue", num_replicas=3),
]


def effective_replicas(declared: int, cluster_size: int) -> int:
    return max(1, min(declared, cluster_size))


def desired_config(spec: StreamSpec, cluster_size: int) -> dict:
    config = dict(spec.config)
    config["num_replicas"] = effective_replicas(spec.config["num_replicas"], cluster_size)
    return config


# ---------------------------------------------------------------- comparison

def _normal(key: str, value):
    if key in ("subjects",) and isinstance(value, list):
        return sorted(value)
    if key == "no_ack":
        return bool(value)
    return value


def config_drift(declared: dict, live: dict) -> list[tuple[str, object, object]]:
    """(field, live, declared) for each declared field the live config differs in."""
    drift = []
    for key, want in declared.items():
        if key == "name" or key == "durable_name":
            continue
        have = live.get(key)
        if key == "backoff" and have is None:
            have = []
        if _normal(key, have) != _normal(key, want):
            drift.append((key, have, want))
    return drift


IMMUTABLE = {"retention", "storage"}


@dataclass
class Change:
    stream: str
    action: str  # created | updated | unchanged | failed
    detail: str = ""
    warnings: list[str] = field(default_factory=list)


async def apply(nc: Client, specs: list[StreamSpec] | None = None) -> list[Change]:
    """Create or update each declared stream and its consumers; idempotent.

    A stream is created when missing, updated when its mutable fields drift,
    and left alone (``failed`` with the reason) when an immutable field such
    as retention or storage differs: that needs a human decision, not a
    silent delete. One stream's failure does not stop the others.
    """
    specs = DECLARED if specs is None else specs
    size = js.cluster_size(nc)
    changes = []
    for spec in specs:
        changes.append(await _apply_one(nc, spec, size))
    return changes


async def _apply_one(nc: Client, spec: StreamSpec, size: int) -> Change:
    config = desired_config(spec, size)
    change = Change(spec.name, "unchanged")
    if config["num_replicas"] < spec.config["num_replicas"]:
        change.warnings.append(
            f"replicas reduced from {spec.config['num_replicas']} to {config['num_replicas']}: "
            f"the bus has {size} server(s)"
        )
    try:
        try:
            live = (await js.stream_info(nc, spec.name))["config"]
        except js.JetStreamError as exc:
            if exc.err_code != js.STREAM_NOT_FOUND:
                raise
            await js.add_stream(nc, config)
            change.action = "created"
        else:
            drift = config_drift(config, live)
            blocked = [d for d in drift if d[0] in IMMUTABLE]
            if blocked:
                change.action = "failed"
                change.detail = "; ".join(
                    f"{k} is {have!r}, declared {want!r} (cannot be changed on a live stream;"
                    f" back it up and recreate it)" for k, have, want in blocked
                )
                return change
            if drift:
                await js.update_stream(nc, {**live, **config})
                change.action = "updated"
                change.detail = ", ".join(f"{k}: {have!r} -> {want!r}" for k, have, want in drift)
        for consumer in spec.consumers:
            await js.add_consumer(nc, spec.name, consumer)
    except js.JetStreamError as exc:
        change.action = "failed"
        change.detail = str(exc)
    return change


# ---------------------------------------------------------------- diff

@dataclass
class StreamDiff:
    stream: str
    state: str  # ok | missing | drift | undeclared | console (the console's own)
    fields: list[tuple[str, object, object]] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)


async def diff(nc: Client, specs: list[StreamSpec] | None = None) -> list[StreamDiff]:
    specs = DECLARED if specs is None else specs
    size = js.cluster_size(nc)
    live = {s["config"]["name"]: s for s in await js.list_streams(nc)}
    out = []
    for spec in specs:
        info = live.pop(spec.name, None)
        if info is None:
            out.append(StreamDiff(spec.name, "missing"))
            continue
        fields = config_drift(desired_config(spec, size), info["config"])
        notes = []
        if spec.consumers:
            existing = {c["name"]: c for c in await js.list_consumers(nc, spec.name)}
            for consumer in spec.consumers:
                have = existing.get(consumer["durable_name"])
                if have is None:
                    notes.append(f"consumer {consumer['durable_name']} missing")
                    continue
                for key, h, w in config_drift(consumer, have["config"]):
                    notes.append(f"consumer {consumer['durable_name']}: {key} is {h!r}, declared {w!r}")
        out.append(StreamDiff(spec.name, "drift" if fields or notes else "ok", fields, notes))
    for name in sorted(live):
        if name == f"KV_{lease.BUCKET}":
            out.append(StreamDiff(name, "console", consumers=[
                "the console's leader lease (manage.py collector), not part of the topology"]))
            continue
        out.append(StreamDiff(name, "undeclared"))
    return out


# ---------------------------------------------------------------- lint

@dataclass
class Finding:
    code: str
    severity: str  # error | warning | info
    stream: str
    message: str
    fix: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _consumer_filters(consumer: dict) -> list[str]:
    config = consumer.get("config", consumer)
    filters = list(config.get("filter_subjects") or [])
    if config.get("filter_subject"):
        filters.append(config["filter_subject"])
    return filters or [">"]


def lint_streams(streams: list[dict], consumers: dict[str, list[dict]], cluster_size: int,
                 adr_specs: list[StreamSpec] | None = None) -> list[Finding]:
    """The checks, on data: ``streams`` as STREAM.LIST returns them, ``consumers``
    by stream name as CONSUMER.LIST returns them."""
    findings: list[Finding] = []
    for info in streams:
        config = info["config"]
        name = config["name"]
        findings += _subject_findings(name, config)
        findings += _replica_findings(name, config, info, cluster_size)
        findings += _retention_findings(name, config, info, consumers.get(name, []))
    for spec in adr_specs or []:
        if spec.config["num_replicas"] > cluster_size:
            findings.append(Finding(
                "adr-replicas", "warning", spec.name,
                f"ADR-003 declares replicas={spec.config['num_replicas']} but the bus has "
                f"{cluster_size} server(s): created as written it fails "
                "('replicas > 1 not supported in non-clustered mode'); topology apply uses "
                f"{effective_replicas(spec.config['num_replicas'], cluster_size)}",
                "run a 3-node cluster in production",
            ))
    return findings


def _subject_findings(name: str, config: dict) -> list[Finding]:
    """One-token wildcards where the ADR publishes deeper; request subjects acked."""
    findings = []
    stream_subjects = config.get("subjects") or []
    for pattern in stream_subjects:
        if pattern.split(".")[-1] != "*":
            continue
        intent = pattern[:-1] + ">"
        missed = [s for s in ADR_SUBJECTS if subjects.matches(intent, s)
                  and not any(subjects.matches(p, s) for p in stream_subjects)]
        if missed:
            findings.append(Finding(
                "single-token-wildcard", "error", name,
                f"filter {pattern!r} matches exactly one token after the prefix, so "
                f"{', '.join(missed[:3])}{' ...' if len(missed) > 3 else ''} "
                f"(published per ADR-003) is never stored",
                f"use {intent!r}",
            ))
    if not config.get("no_ack"):
        served = [r for r in REQUEST_SUBJECTS if any(subjects.overlap(r, s) for s in stream_subjects)]
        if served:
            findings.append(Finding(
                "request-reply-acked", "error", name,
                f"stores request/reply subjects ({', '.join(served)}) and acks: a request to "
                f"such a subject is answered by the stream's PubAck "
                f'({{"stream": "{name}", "seq": N}}), not by the service',
                "set no_ack: true on this stream",
            ))
    return findings


def _replica_findings(name: str, config: dict, info: dict, cluster_size: int) -> list[Finding]:
    findings = []
    replicas = config.get("num_replicas", 1)
    if replicas > cluster_size:
        findings.append(Finding(
            "replicas-above-cluster", "error", name,
            f"declares {replicas} replicas but the bus has {cluster_size} server(s)",
            f"set num_replicas to {cluster_size} or grow the cluster",
        ))
    for peer in (info.get("cluster") or {}).get("replicas") or []:
        if peer.get("offline") or not peer.get("current", True):
            state = "offline" if peer.get("offline") else f"lagging by {peer.get('lag', '?')} ops"
            findings.append(Finding(
                "replica-unhealthy", "warning", name,
                f"replica on {peer.get('name', '?')} is {state}",
                "check that server; the stream is running with less redundancy",
            ))
    return findings


def _retention_findings(name: str, config: dict, info: dict,
                        stream_consumers: list[dict]) -> list[Finding]:
    """Interest without consumers, overlapping work-queue consumers, terminate deletes."""
    findings = []
    retention = config.get("retention")
    count = info.get("state", {}).get("consumer_count", len(stream_consumers))
    if retention == "interest" and count == 0:
        findings.append(Finding(
            "interest-without-consumers", "error", name,
            "interest retention keeps a message only while some consumer is interested; "
            "with no consumer every published message is acked and dropped at once",
            "create the durable consumers that must receive these messages first",
        ))
    if retention == "workqueue":
        for i, a in enumerate(stream_consumers):
            for b in stream_consumers[i + 1:]:
                pairs = [(x, y) for x in _consumer_filters(a) for y in _consumer_filters(b)]
                if any(subjects.overlap(x, y) for x, y in pairs):
                    findings.append(Finding(
                        "workqueue-overlap", "error", name,
                        f"consumers {a.get('name')!r} and {b.get('name')!r} have overlapping "
                        "filters on a work-queue stream: each message goes to one of them only",
                        "give each consumer a disjoint filter, or use limits retention",
                    ))
    if retention in ("workqueue", "interest") and stream_consumers:
        findings.append(Finding(
            "terminate-deletes", "info", name,
            f"{retention} retention: a message that is terminated (or exhausts max_deliver "
            "and is acked away) is deleted, so its payload is gone before the advisory "
            "arrives",
            "publish the message to lucent.deadletter.<stream>.<consumer> before term()",
        ))
    return findings


async def lint(nc: Client) -> list[Finding]:
    streams = await js.list_streams(nc)
    consumers = {s["config"]["name"]: await js.list_consumers(nc, s["config"]["name"])
                 for s in streams}
    return lint_streams(streams, consumers, js.cluster_size(nc), ADR_LITERAL)
