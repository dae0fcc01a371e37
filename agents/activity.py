"""What the AI agents are doing, per agent kind (``lucent.agents.<kind>.<task>``).

The collector feeds one ``AgentActivity`` with what it watches on the bus
(``bus.watch``): every new job on AGENT_COORDINATION (an ordered consumer, so
each job has its stream sequence), every ack the workers send (job published
-> acked is the processing time; a nak is a retry, a term a failure), the
dead-letter advisories, and the senders of domain events (what agents
publish). Each sweep it joins that with the consumers of the snapshot
(in flight, waiting, redeliveries) and the service registry (instances), and
puts ``tables()`` in the snapshot: ``agents`` by kind and ``agent_feed``, the
latest jobs with their outcome. Records only change when something happens,
so an idle bus keeps an empty delta.
"""

from __future__ import annotations

import collections
import re
import time

from django.db.models import Count
from django.db.models.functions import TruncHour, TruncMinute
from django.utils import timezone

from deadletters.models import DeadLetter
from lucent_bus import envelope, watch
from streams import history

from .registry import UNTRACKED_KEY, clean_text

STREAM = "AGENT_COORDINATION"
PREFIX = "lucent.agents."
FEED_SIZE = 50
RATE_S = 10  # msgs/s are over the last 10 s
FAILURE_WINDOW_S = 3600  # failures (dead letters) and redeliveries: in the last hour
TIMING_WINDOW_S = 300  # processing time: jobs acked in the last 5 minutes
FAILING_S = 300  # "failing": over FAILING_SHARE of its jobs failed in the last 5 minutes
FAILING_SHARE = 0.1
SENDER_RE = re.compile(rb'"serviceId"\s*:\s*"([^"\\]{1,120})"')
SUFFIXES = ("-agent", "-worker", "-service")


class Window:
    """Event counts in buckets of ``bucket_s`` over the last ``span_s`` seconds."""

    __slots__ = ("bucket_s", "span_s", "buckets")

    def __init__(self, bucket_s: int, span_s: int) -> None:
        self.bucket_s, self.span_s = bucket_s, span_s
        self.buckets: collections.deque = collections.deque()

    def add(self, now: float, n: int = 1) -> None:
        start = int(now // self.bucket_s) * self.bucket_s
        if not self.buckets or self.buckets[-1][0] < start:
            self.buckets.append([start, n])
            return
        for i in range(len(self.buckets) - 1, -1, -1):  # the present, or (seeding) the past
            if self.buckets[i][0] == start:
                self.buckets[i][1] += n
                return
            if self.buckets[i][0] < start:
                self.buckets.insert(i + 1, [start, n])
                return
        self.buckets.appendleft([start, n])

    def total(self, now: float) -> int:
        while self.buckets and self.buckets[0][0] <= now - self.span_s:
            self.buckets.popleft()
        return sum(n for _, n in self.buckets)


def kind_of(subject: str) -> str | None:
    if not subject.startswith(PREFIX):
        return None
    tokens = subject.split(".")
    return tokens[2] if len(tokens) > 3 and tokens[2] else None


def kind_of_service(service: str, kinds) -> str | None:
    """``yield-agent`` -> ``yield`` when ``yield`` is a known kind."""
    for suffix in SUFFIXES:
        if service.endswith(suffix) and service[: -len(suffix)] in kinds:
            return service[: -len(suffix)]
    return service if service in kinds else None


def consumer_kinds(consumer: dict) -> set[str]:
    """Kinds a consumer of the agent stream serves, from its filter subjects."""
    kinds = set()
    for f in consumer.get("filter_subjects") or []:
        kind = kind_of(f if f.count(".") > 2 else f + ".x")
        if kind and kind not in ("*", ">"):
            kinds.add(kind)
    return kinds


class Kind:
    __slots__ = ("jobs_in", "msgs_out", "acked", "failures", "redeliveries", "recent_jobs",
                 "recent_failures", "timings", "tasks", "last_seen")

    def __init__(self) -> None:
        self.jobs_in = Window(1, RATE_S)
        self.msgs_out = Window(1, RATE_S)
        self.acked = Window(1, RATE_S)
        self.failures = Window(60, FAILURE_WINDOW_S)
        self.redeliveries = Window(60, FAILURE_WINDOW_S)
        self.recent_jobs = Window(10, FAILING_S)
        self.recent_failures = Window(10, FAILING_S)
        self.timings: collections.deque = collections.deque(maxlen=500)
        self.tasks: set[str] = set()
        self.last_seen = 0.0


class AgentActivity:
    def __init__(self) -> None:
        self.kinds: dict[str, Kind] = {}
        self.feed: collections.OrderedDict[int, dict] = collections.OrderedDict()
        self.seq_kind: collections.OrderedDict[int, str] = collections.OrderedDict()

    def _kind(self, name: str) -> Kind:
        k = self.kinds.get(name)
        if k is None:
            k = self.kinds[name] = Kind()
        return k

    # ------------------------------------------------------------ events

    def job(self, seq: int, subject: str, data: bytes, headers: dict | None,
            now: float | None = None) -> str | None:
        """A new message on the agent stream."""
        name = kind_of(subject)
        if name is None:
            return None
        now = time.time() if now is None else now
        kind = self._kind(name)
        kind.jobs_in.add(now)
        kind.recent_jobs.add(now)
        kind.tasks.add(".".join(subject.split(".")[3:])[:100])
        kind.last_seen = now
        decoded = envelope.decode(data, headers)
        # Values from the payload are shown on /agents/ and in the API: printable text.
        sender = clean_text(str((decoded.sender or {}).get("serviceId") or ""), 120)
        source = kind_of_service(sender, self.kinds)
        if source is not None:
            self.kinds[source].msgs_out.add(now)
        self.seq_kind[seq] = name
        if len(self.seq_kind) > 100_000:
            self.seq_kind.popitem(last=False)
        self.feed[seq] = {"key": f"{seq:012d}", "seq": seq, "at": round(now, 3), "kind": name,
                          "subject": subject[:300], "type": clean_text(decoded.message_type or "", 120),
                          "sender": sender,
                          "correlation_id": clean_text(decoded.correlation_id or "", 200),
                          "outcome": "queued", "deliveries": 0, "consumer": "", "ms": None}
        while len(self.feed) > FEED_SIZE:
            self.feed.popitem(last=False)
        return name

    def ack(self, ack: watch.Ack, now: float | None = None) -> None:
        now = time.time() if now is None else now
        name = self.seq_kind.get(ack.stream_seq)
        if name is None:
            return  # a job from before the collector started
        kind = self._kind(name)
        kind.last_seen = now
        ms = max(0.0, (now - ack.published) * 1000)
        if ack.kind == "ack":
            kind.timings.append((now, ms))
            kind.acked.add(now)
        if ack.delivered > 1 and ack.kind != "progress":
            kind.redeliveries.add(now)
        entry = self.feed.get(ack.stream_seq)
        if entry is not None:
            outcome = {"ack": "done", "nak": "retrying", "term": "terminated",
                       "progress": "working"}[ack.kind]
            if entry["outcome"] != "dead letter" or ack.kind == "ack":
                entry["outcome"] = outcome
            entry.update(deliveries=ack.delivered, consumer=ack.consumer[:120],
                         ms=round(ms, 1) if ack.kind == "ack" else entry["ms"])

    def failure(self, advisory: dict, now: float | None = None,
                consumers: dict | None = None) -> None:
        """A MAX_DELIVERIES or MSG_TERMINATED advisory of the agent stream."""
        now = time.time() if now is None else now
        seq = advisory.get("stream_seq")
        name = self.seq_kind.get(seq)
        if name is None and consumers is not None:
            consumer = (consumers or {}).get(f"{STREAM}/{advisory.get('consumer')}") or {}
            served = consumer_kinds(consumer)
            name = next(iter(served)) if len(served) == 1 else None
        if name is None:
            return
        kind = self._kind(name)
        kind.failures.add(now)
        kind.recent_failures.add(now)
        kind.last_seen = now
        entry = self.feed.get(seq)
        if entry is not None:
            entry["outcome"] = "dead letter"

    def outbound(self, data: bytes, now: float | None = None) -> None:
        """A message some agent may have sent (a domain event): count it as its output."""
        match = SENDER_RE.search(data[:4096])
        if match is None:
            return
        source = kind_of_service(match.group(1).decode(errors="replace"), self.kinds)
        if source is not None:
            now = time.time() if now is None else now
            self.kinds[source].msgs_out.add(now)
            self.kinds[source].last_seen = now

    def seed_failures(self, rows) -> None:
        """Failures already recorded (``(subject, captured_at seconds)`` of recent dead
        letters), so a restarted collector does not start from zero."""
        for subject, at in rows:
            name = kind_of(subject)
            if name is not None:
                self._kind(name).failures.add(at)

    # ------------------------------------------------------------ reading

    def tables(self, consumers: dict, services: dict, now: float | None = None) -> tuple[dict, dict]:
        now = time.time() if now is None else now
        by_kind: dict[str, list[dict]] = {}
        for c in consumers.values():
            if c.get("stream") == STREAM:
                for name in consumer_kinds(c):
                    by_kind.setdefault(name, []).append(c)
        names = set(self.kinds) | set(by_kind)
        instances: dict[str, list[dict]] = {}
        for key, r in services.items():
            if key == UNTRACKED_KEY:
                continue
            name = kind_of_service(r["service"], names)
            if name is not None:
                instances.setdefault(name, []).append(r)
        agents = {name: self._record(name, by_kind.get(name, []), instances.get(name, []), now)
                  for name in sorted(names)}
        feed = {e["key"]: dict(e) for e in self.feed.values()}
        return agents, feed

    def _record(self, name: str, consumers: list[dict], instances: list[dict], now: float) -> dict:
        kind = self.kinds.get(name) or Kind()
        times = sorted(ms for t, ms in kind.timings if now - t <= TIMING_WINDOW_S)
        in_flight = sum(c["num_ack_pending"] for c in consumers)
        waiting = sum(c["num_pending"] for c in consumers)
        failures = kind.failures.total(now)
        msgs_in = kind.jobs_in.total(now)
        if consumers and any(c.get("stalled") for c in consumers):
            status = "stuck"
        elif kind.recent_failures.total(now) > FAILING_SHARE * max(1, kind.recent_jobs.total(now)):
            status = "failing"
        elif failures:
            # Jobs failed in the last hour, too few of late to call it failing: not
            # green "working" next to its failures column (the overview counts it too).
            status = "degraded"
        elif in_flight or msgs_in:
            status = "working"
        else:
            status = "idle"
        return {
            "key": name, "name": name, "subject": f"{PREFIX}{name}.>", "status": status,
            "tasks": sorted(kind.tasks)[:20],
            "msgs_per_s": round(msgs_in / RATE_S, 2),
            "out_per_s": round(kind.msgs_out.total(now) / RATE_S, 2),
            "acked_per_s": round(kind.acked.total(now) / RATE_S, 2),
            "consumers": sorted(c["name"] for c in consumers),
            "instances": sorted(r["instance"] for r in instances),
            "instances_up": sum(r["status"] == "up" for r in instances),  # alive, degraded too
            "workers": len(consumers) + len(instances),
            "in_flight": in_flight, "waiting": waiting,
            "redeliveries": kind.redeliveries.total(now),
            "failures": failures,
            "mean_ms": round(sum(times) / len(times), 1) if times else None,
            "p95_ms": round(times[min(len(times) - 1, int(len(times) * 0.95))], 1) if times else None,
            "last_seen": round(kind.last_seen, 3) or None,
        }


def failure_series(name: str, range_: str) -> dict:
    """Dead letters of one agent kind per minute (per hour over 7 days), for its chart."""
    _, span = history.RANGES.get(range_, history.RANGES["1h"])
    trunc = TruncHour if span.days >= 2 else TruncMinute
    rows = (DeadLetter.objects.filter(stream=STREAM, subject__startswith=f"{PREFIX}{name}.",
                                      captured_at__gte=timezone.now() - span)
            .annotate(bucket=trunc("captured_at")).values("bucket").annotate(n=Count("id"))
            .order_by("bucket"))
    return {"failures_t": [r["bucket"].isoformat() for r in rows], "failures": [r["n"] for r in rows]}
