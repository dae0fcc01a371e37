"""Which alert conditions hold in a snapshot, and when they fire and resolve.

``conditions(snapshot, rules)`` is a pure function of the collector's snapshot;
``Evaluator.step`` adds time: a condition fires once it has held for the rule's
``for_s``, stays firing while it holds, and resolves by itself when it stops.
While the bus cannot be swept only the bus rule is judged: the other figures
are stale, so what fires stays firing and nothing new fires.

An evaluator that starts with alerts already firing (a new leader term, a restarted
collector) has not seen what those alerts were judged on: a consumer's idle time, the
dead letters of the last minute, a service's heartbeats. It resolves such an inherited
alert only once it has watched long enough (``WARMUP_S``) and, for a service, once it
has heard from that service: otherwise every term would resolve and re-fire them.

Floods: when more than ``group_at`` subjects of one rule would be firing (3,000 fake
services going silent), one grouped alert for the rule (subject ``GROUP_SUBJECT``,
"3,000 services down: a, b, c ... and 2,997 more") fires instead of one each; alerts
of the rule already firing stay as they are. A service alert whose instance the
registry forgot (silent for ``LUCENT_SERVICE_FORGET_S``) resolves without being
judged: ``Evaluator.forgotten`` names those, and the engine tells nobody.

Hysteresis: a figure that hovers at a threshold (the demo's ~10 dead letters a minute
against a limit of 10) would fire and resolve on every other sweep, notifying each
time. So a firing alert of a threshold rule resolves only once its figure has fallen
clearly below the threshold, to ``clear_limit`` (``CLEAR``: half of a rate, 80% of a
count, 5 points of a usage percentage), while firing still needs the rule's ``for_s``
above the threshold itself.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

from agents.registry import instances_of

from .models import Rule

CONSUMER_KINDS = {Rule.CONSUMER_PENDING, Rule.CONSUMER_STALLED, Rule.ACK_PENDING_NEAR_MAX}
STREAM_KINDS = {Rule.STREAM_USAGE, Rule.INTEREST_NO_CONSUMERS, Rule.REPLICA}
DEAD_LETTERS = "DEAD_LETTERS"  # the dead-letter rate is about all of them
SERVICE_KINDS = {Rule.SERVICE_STALE, Rule.SERVICE_DOWN}
# Seconds a new evaluator must watch before it may resolve an inherited alert of a kind
# judged over time: stalled after 30 s idle (streams.snapshot.STALL_AFTER_S), agents
# stuck or failing over minutes, dead letters counted over a minute.
WARMUP_S = {Rule.CONSUMER_STALLED: 35.0, Rule.AGENT: 60.0, Rule.DEADLETTER_RATE: 65.0}
# Per threshold kind: the level a firing alert's figure must fall to before it resolves.
CLEAR = {Rule.CONSUMER_PENDING: lambda t: t * 0.8, Rule.ACK_PENDING_NEAR_MAX: lambda t: t - 0.1,
         Rule.DEADLETTER_RATE: lambda t: t * 0.5, Rule.STREAM_USAGE: lambda t: t - 5,
         Rule.SERVER_JS_LIMIT: lambda t: t - 5}
GROUP_SUBJECT = "(grouped)"  # no stream, consumer, agent or service/instance is named so
GROUP_AT = 20
GROUP_LISTED = 5
# An inherited grouped alert resolves after this much watching (a service group cannot
# wait to hear from each of its thousands of instances).
GROUP_WARMUP_S = 120.0
NOUNS = {Rule.CONSUMER_PENDING: "consumers", Rule.CONSUMER_STALLED: "consumers",
         Rule.ACK_PENDING_NEAR_MAX: "consumers", Rule.STREAM_USAGE: "streams",
         Rule.INTEREST_NO_CONSUMERS: "streams", Rule.REPLICA: "streams", Rule.AGENT: "agents",
         Rule.SERVICE_STALE: "services stale", Rule.SERVICE_DOWN: "services down",
         Rule.SLOW_CONSUMERS: "servers", Rule.SERVER_JS_LIMIT: "servers",
         Rule.CONSUMER_PAUSE: "consumers"}


def group(rule: Rule, conds: list[Condition]) -> Condition:
    """One alert for ``rule`` standing for all of ``conds``."""
    subjects = sorted(c.subject for c in conds)
    listed = ", ".join(subjects[:GROUP_LISTED])
    more = f" and {len(subjects) - GROUP_LISTED:,} more" if len(subjects) > GROUP_LISTED else ""
    links = {c.link for c in conds}
    return Condition(f"{rule.name}:{GROUP_SUBJECT}", rule, GROUP_SUBJECT,
                     f"{len(subjects):,} {NOUNS.get(rule.kind, 'subjects')} "
                     f"({rule.name}): {listed}{more}"[:2000],
                     float(len(subjects)), links.pop() if len(links) == 1 else "/alerts/")


@dataclass(frozen=True, slots=True)
class Condition:
    key: str
    rule: Rule
    subject: str
    message: str
    value: float | None
    link: str


def _stream_link(name: str) -> str:
    return f"/streams/{quote(name, safe='')}/"


# Per consumer rule kind: (default threshold, does it hold?, what to say). The test
# runs first and is cheap: 5,000 consumers x 3 rules cost a few milliseconds.
CONSUMER_TESTS = {
    Rule.CONSUMER_PENDING: (1000, lambda c, t: c["num_pending"] > t, lambda c, t: (
        f"{c['num_pending']:,} pending (over {t:,.0f})", c["num_pending"])),
    Rule.CONSUMER_STALLED: (None, lambda c, t: c["stalled"], lambda c, t: (
        f"stalled: {c['num_pending']:,} pending, nothing delivered or acked since "
        f"{time.strftime('%H:%M:%S', time.gmtime(c['active_at']))} UTC", c["num_pending"])),
    Rule.ACK_PENDING_NEAR_MAX: (0.9, lambda c, t: (c.get("max_ack_pending") or -1) > 0
                                and c["num_ack_pending"] >= t * c["max_ack_pending"],
                                lambda c, t: (f"{c['num_ack_pending']:,} awaiting ack of "
                                              f"max_ack_pending {c['max_ack_pending']:,}",
                                              c["num_ack_pending"])),
}


def clear_limit(kind: str, limit: float) -> float:
    """The level below which a firing alert of a threshold rule of ``kind`` resolves."""
    return CLEAR[kind](limit) if kind in CLEAR else limit


def _stream(rule: Rule, s: dict, firing: bool = False) -> tuple[str, float | None] | None:
    if rule.kind == Rule.STREAM_USAGE:
        limit = rule.threshold if rule.threshold is not None else 80
        if s["usage_pct"] >= (clear_limit(rule.kind, limit) if firing else limit):
            return f"at {s['usage_pct']:.0f}% of max_msgs or max_bytes (limit {limit:.0f}%)", s["usage_pct"]
    elif rule.kind == Rule.INTEREST_NO_CONSUMERS:
        if s["retention"] == "interest" and s["consumer_count"] == 0:
            return "interest retention and no consumer: every message is dropped", None
    elif rule.kind == Rule.REPLICA and not s["replicas_ok"]:
        bad = [f"{r['name']} {'offline' if r['offline'] else 'lagging by ' + str(r['lag'])}"
               for r in s["cluster"]["replicas"] if r["offline"] or not r["current"]]
        leader = s["cluster"].get("leader")
        return (f"replica{'s' if len(bad) != 1 else ''} {', '.join(bad) or 'missing'}"
                f"{'' if leader else '; no leader'}"), len(bad)
    return None


def conditions(snapshot: dict, rules: list[Rule], firing=(), paused_at=None) -> dict[str, Condition]:
    """What holds in ``snapshot``; keys in ``firing`` are judged against their rule's
    ``clear_limit`` (hysteresis), others against the threshold. ``paused_at``: PauseWatch.ended."""
    out: dict[str, Condition] = {}

    def add(rule: Rule, subject: str, found, link: str) -> None:
        if found is not None:
            key = f"{rule.name}:{subject}"
            out[key] = Condition(key, rule, subject, found[0], found[1], link)

    active = [r for r in rules if r.enabled]
    if not snapshot.get("ok"):
        for rule in active:
            if rule.kind == Rule.BUS:
                add(rule, "bus", (f"bus unreachable: {snapshot.get('error') or 'no data'}", None), "/")
        return out
    by_kind: dict[str, list[Rule]] = {}
    for rule in active:
        by_kind.setdefault(rule.kind, []).append(rule)
    consumers = snapshot.get("consumers", {})
    _consumer_conditions(add, consumers, [r for r in active if r.kind in CONSUMER_KINDS], firing)
    stream_rules = [r for r in active if r.kind in STREAM_KINDS]
    for name, s in snapshot.get("streams", {}).items():
        for rule in stream_rules:
            found = _stream(rule, s, f"{rule.name}:{name}" in firing)
            if found is not None and rule.matches(name):
                add(rule, name, found, _stream_link(name))
    per_min = snapshot.get("deadletters_1m") or 0  # counted by the collector
    for rule in by_kind.get(Rule.DEADLETTER_RATE, []):
        limit = rule.threshold if rule.threshold is not None else 10
        firing_now = f"{rule.name}:{DEAD_LETTERS}" in firing
        if per_min > (clear_limit(rule.kind, limit) if firing_now else limit):
            add(rule, DEAD_LETTERS, (f"{per_min:,} dead letters in the last minute (over {limit:,.0f})",
                                     per_min), "/deadletters/")
    for name, a in (snapshot.get("agents") or {}).items():
        for rule in by_kind.get(Rule.AGENT, []):
            if rule.matches(name) and a["status"] in ("failing", "stuck"):
                add(rule, name, (f"agent {a['status']}: {a['failures']} failures in 1 h, "
                                 f"{a['in_flight']} in flight, {a['waiting']} waiting", a["failures"]),
                    f"/agents/{quote(name, safe='')}/")
    for key, r in instances_of(snapshot.get("services")).items():
        for kind, status in ((Rule.SERVICE_STALE, "stale"), (Rule.SERVICE_DOWN, "down")):
            for rule in by_kind.get(kind, []):
                if rule.matches(key) and r["status"] == status:
                    add(rule, key, (f"service {status}: last heartbeat "
                                    f"{time.strftime('%H:%M:%S', time.gmtime(r['last_seen']))} UTC",
                                    None), "/services/")
    _server_conditions(add, snapshot.get("servers") or {}, by_kind, firing)
    _pause_conditions(add, consumers, by_kind, paused_at or {})
    return out


def _consumer_conditions(add, consumers: dict, rules: list[Rule], firing) -> None:
    """The consumer rules on every consumer but the console's live views."""
    for rule in rules:
        default, holds, say = CONSUMER_TESTS[rule.kind]
        limit = rule.threshold if rule.threshold is not None else default
        everything = rule.target in ("", "*")
        clear = clear_limit(rule.kind, limit) if limit is not None else None
        for key, c in consumers.items():
            if c.get("own_live"):
                continue  # a live view of the console (an ordered consumer), not a worker
            # The cheap test first; the lower level only for the few alerts firing.
            if ((holds(c, limit) or (firing and clear != limit and f"{rule.name}:{key}" in firing
                                     and holds(c, clear)))
                    and (everything or rule.matches(key))):
                add(rule, key, say(c, limit), _stream_link(c["stream"]))


def _server_conditions(add, servers: dict, by_kind: dict, firing) -> None:
    """Rules on the servers' monitoring rows (``servers.overview.server_row``), present
    only when a monitoring source is configured."""
    for name, s in servers.items():
        if s.get("down"):
            continue
        for rule in by_kind.get(Rule.SLOW_CONSUMERS, []):
            limit = rule.threshold if rule.threshold is not None else 0
            new = s.get("slow_consumers_5m") or 0
            if new > limit and rule.matches(name):
                add(rule, name, (f"{new:,} new slow consumer{'s' if new != 1 else ''} in 5 "
                                 f"minutes ({s.get('slow_consumers', 0):,} since start)", new),
                    "/connections/?sort=pending_bytes")
        js = s.get("jetstream") or {}
        for rule in by_kind.get(Rule.SERVER_JS_LIMIT, []):
            limit = rule.threshold if rule.threshold is not None else 90
            level = clear_limit(rule.kind, limit) if f"{rule.name}:{name}" in firing else limit
            worst = max((js.get(f"{k}_pct") or 0.0, k) for k in ("memory", "storage"))
            if worst[0] >= level and rule.matches(name):
                add(rule, name, (f"JetStream {worst[1]} at {worst[0]:.0f}% of max_{worst[1]} "
                                 f"(limit {limit:.0f}%)", worst[0]), "/servers/")


def _pause_ends(c: dict) -> float | None:
    try:
        return datetime.fromisoformat(
            re.sub(r"(\.\d{6})\d+", r"\1", c["pause_until"]).replace("Z", "+00:00")).timestamp()
    except (TypeError, ValueError, KeyError):
        return None


def _pause_conditions(add, consumers: dict, by_kind: dict, paused_at: dict) -> None:
    rules = by_kind.get(Rule.CONSUMER_PAUSE, [])
    if not rules:
        return
    now = time.time()
    for key, c in consumers.items():
        ends = _pause_ends(c) if c.get("paused") else None
        for rule in rules:
            if not rule.matches(key):
                continue
            within = rule.threshold if rule.threshold is not None else 60
            if ends is not None and ends - now <= within:
                add(rule, key, (f"pause ends in {max(0, ends - now):.0f} s (at "
                                f"{time.strftime('%H:%M:%S', time.gmtime(ends))} UTC) with "
                                f"{c['num_pending']:,} pending", c["num_pending"]),
                    _stream_link(c["stream"]))
            elif key in paused_at and not c.get("paused") and c["num_pending"] > paused_at[key]:
                add(rule, key, (f"resumed with a backlog that grew during the pause: "
                                f"{paused_at[key]:,} pending then, {c['num_pending']:,} now",
                                c["num_pending"]), _stream_link(c["stream"]))


class PauseWatch:
    """A consumer's backlog when its pause began, kept until the pause ended and the
    backlog is back to that level (or the consumer is gone): the pause rule's memory."""

    def __init__(self) -> None:
        self.started: dict[str, int] = {}  # paused now: pending when first seen paused
        self.ended: dict[str, int] = {}  # pause over, backlog above its level then

    def observe(self, snapshot: dict) -> None:
        if not snapshot.get("ok"):
            return
        consumers = snapshot.get("consumers") or {}
        for key, c in consumers.items():
            if c.get("paused"):
                self.started.setdefault(key, c["num_pending"])
                self.ended.pop(key, None)
            elif key in self.started:
                self.ended[key] = self.started.pop(key)
        for key in [k for k in self.started if k not in consumers]:
            del self.started[key]
        for key in [k for k, v in self.ended.items()
                    if k not in consumers or consumers[k]["num_pending"] <= v]:
            del self.ended[key]


class Evaluator:
    """Time on top of ``conditions``: since when each holds, which are firing."""

    def __init__(self, firing: dict[str, int] | None = None, now: float | None = None,
                 group_at: int = GROUP_AT, forget_s: float = 24 * 3600.0) -> None:
        self.group_at, self.forget_s = group_at, forget_s
        self.groups: dict[str, Condition] = {}  # grouped conditions of the last step
        self.forgotten: set[str] = set()  # resolved by the last step: instance forgotten
        self.since: dict[str, float] = {}
        self.firing: dict[str, int] = dict(firing or {})  # key -> Alert id
        self.started = time.time() if now is None else now
        self.inherited: set[str] = set(self.firing)  # fired before this evaluator started
        self.pauses = PauseWatch()

    def adopt(self, firing: dict[str, int]) -> None:
        """Follow the database: alerts another process fired or resolved meanwhile."""
        for key in [k for k in self.firing if k not in firing]:
            self.resolved(key)
        for key, pk in firing.items():
            if key not in self.firing:
                self.firing[key] = pk
                self.inherited.add(key)

    def resolved(self, key: str) -> None:
        self.firing.pop(key, None)
        self.inherited.discard(key)

    def step(self, snapshot: dict, rules: list[Rule], now: float | None = None
             ) -> tuple[list[Condition], list[str]]:
        """(conditions to fire now, keys of firing alerts to resolve)."""
        now = time.time() if now is None else now
        self.pauses.observe(snapshot)
        held = conditions(snapshot, rules, self.firing, self.pauses.ended)
        ok, bus = bool(snapshot.get("ok")), _bus_prefixes(rules)
        by_name = {r.name: r for r in rules if r.enabled}

        def judged(key: str) -> bool:  # bus down: only bus alerts can change
            if not (ok or key.startswith(bus)):
                return False
            return key not in self.inherited or self._seen_enough(key, by_name, snapshot, now)

        for key in [k for k in self.since if k not in held and judged(k)]:
            del self.since[key]
        due: dict[str, list[Condition]] = {}  # per rule: held long enough, or firing
        for key, cond in held.items():
            started = self.since.setdefault(key, now)
            if key in self.firing or now - started >= cond.rule.for_s:
                due.setdefault(cond.rule.name, []).append(cond)
        fire, self.groups = [], {}
        for conds in due.values():
            if len(conds) > self.group_at and conds[0].rule.kind != Rule.BUS:
                grouped = group(conds[0].rule, conds)
                self.groups[grouped.key] = grouped
                if grouped.key not in self.firing:
                    fire.append(grouped)
            else:
                fire += [c for c in conds if c.key not in self.firing]
        resolve = [k for k in self.firing if k not in held and k not in self.groups and judged(k)]
        services = snapshot.get("services") or {}
        self.forgotten = {k for k in resolve if ok and self._forgotten(k, by_name, services)}
        return fire, resolve

    @staticmethod
    def _forgotten(key: str, by_name: dict[str, Rule], services: dict) -> bool:
        """A service alert whose instance the registry no longer holds."""
        name, _, subject = key.partition(":")
        rule = by_name.get(name)
        return (rule is not None and rule.kind in SERVICE_KINDS and subject != GROUP_SUBJECT
                and subject not in services)

    def _seen_enough(self, key: str, by_name: dict[str, Rule], snapshot: dict, now: float) -> bool:
        name, _, subject = key.partition(":")
        rule = by_name.get(name)
        if rule is None:
            return True  # rule deleted or disabled: its alerts resolve as before
        if subject == GROUP_SUBJECT:
            return now - self.started >= max(GROUP_WARMUP_S, WARMUP_S.get(rule.kind, 0.0))
        if rule.kind in SERVICE_KINDS and subject not in (snapshot.get("services") or {}):
            # Not heard from since this term began: nothing to judge on, until this term
            # would itself have forgotten it by now (then it resolves, telling nobody).
            return now - self.started > self.forget_s
        return now - self.started >= WARMUP_S.get(rule.kind, 0.0)


def _bus_prefixes(rules: list[Rule]) -> tuple[str, ...]:
    return tuple(f"{r.name}:" for r in rules if r.kind == Rule.BUS) or ("\0",)
