"""Lucent service instances, from their heartbeats on ``lucent.services.<service>.health``.

The collector keeps one ``ServiceRegistry``: every heartbeat updates its
instance; each sweep puts ``records(now)`` in the snapshot, where status is
``up``, ``stale`` (no heartbeat for 2 intervals) or ``down`` (5 intervals, or
the service said so). Records change only when a heartbeat arrives or a
status flips, so an idle snapshot delta stays empty.

Bounds: anyone may publish a heartbeat, so the registry forgets an instance silent
for ``LUCENT_SERVICE_FORGET_S`` and keeps at most ``LUCENT_SERVICE_MAX``; instances
beyond that are counted, not kept, and the count travels in the snapshot as one
record under ``UNTRACKED_KEY`` (no real key can take it: theirs hold a ``/``).
Every value from the bus passes ``safe_value`` on its way in, so the snapshot, the
pages, the API and /metrics only ever see JSON-safe, bounded values.
"""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime
from typing import Any

from django.conf import settings

from lucent_bus import envelope

from .models import ServiceEvent

DEFAULT_INTERVAL_S = 5.0
MAX_INTERVAL_S = 86_400.0
STALE_AFTER, DOWN_AFTER = 2, 5
DOWN_WORDS = {"down", "error", "failed", "critical", "unhealthy"}
# Heartbeat detail values of a circuit breaker that is not letting calls through; CLOSED
# is the healthy state.
BREAKER_TRIPPED = {"OPEN", "HALF_OPEN", "HALF-OPEN", "HALFOPEN"}
DETAIL_KEYS_SKIPPED = {"status", "service", "version", "nodeId", "interval_s"}
UNTRACKED_KEY = "untracked"  # the snapshot record counting instances beyond the limit
DEFAULT_FORGET_S = 24 * 3600.0
DEFAULT_MAX = 1000
# What a value from the bus may be once kept: JSON numbers a browser and PostgreSQL
# read exactly, short strings, shallow and small structures.
MAX_DEPTH = 3
MAX_ITEMS = 30
MAX_TEXT = 200
MAX_DETAILS = 30
DETAILS_BYTES = 1024  # of one instance's details, about (the last one kept may pass it)
INT_LIMIT = 2**63
DEPTH_MARK = "…(deeper)"
UNTRACKED_CAP = 100_000  # distinct untracked instances counted (beyond: "at least")


def clean_text(value: str, limit: int = MAX_TEXT) -> str:
    """``value`` clipped, without what cannot be sent as UTF-8 (lone surrogates, which
    JSON's ``\\ud800`` escapes make) or stored in PostgreSQL text (NUL)."""
    value = value[:limit]
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")[:limit]
    return value.replace("\x00", "\ufffd")


def _number(value: int | float) -> int | float | str:
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if -INT_LIMIT < value < INT_LIMIT:
        return value
    try:
        return clean_text(str(value))
    except ValueError:  # more digits than Python will print
        return "(integer too large)"


def safe_value(value: Any, depth: int = 0) -> Any:
    """``value`` (decoded JSON from the bus) as a JSON-safe, bounded value: non-finite
    floats and integers beyond 64 bits become text, strings are clipped, structures
    deeper than ``MAX_DEPTH`` end in a marker, longer ones keep their first items."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return _number(value)
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        if depth >= MAX_DEPTH:
            return DEPTH_MARK
        return {clean_text(str(k), 80): safe_value(v, depth + 1)
                for k, v in list(value.items())[:MAX_ITEMS]}
    if isinstance(value, (list, tuple)):
        if depth >= MAX_DEPTH:
            return DEPTH_MARK
        return [safe_value(v, depth + 1) for v in value[:MAX_ITEMS]]
    return clean_text(repr(value))


def _text(value, limit: int = MAX_TEXT) -> str:
    if value is None:
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return clean_text(str(_number(value)), limit)
    try:
        return clean_text(str(value), limit)
    except ValueError:
        return "(unprintable)"


def _interval(value) -> float:
    """Seconds between heartbeats, from what the service says: a finite number within
    reason, else the default (``Infinity`` would keep a dead instance up forever)."""
    try:
        interval = float(value or DEFAULT_INTERVAL_S)
    except (TypeError, ValueError, OverflowError):
        return DEFAULT_INTERVAL_S
    if not math.isfinite(interval):
        return DEFAULT_INTERVAL_S
    return min(MAX_INTERVAL_S, max(0.1, interval))


def _settings() -> tuple[float, int]:
    try:
        return (float(getattr(settings, "LUCENT_SERVICE_FORGET_S", DEFAULT_FORGET_S)),
                int(getattr(settings, "LUCENT_SERVICE_MAX", DEFAULT_MAX)))
    except Exception:  # outside Django (a benchmark): the defaults
        return DEFAULT_FORGET_S, DEFAULT_MAX


def instances_of(services: dict | None) -> dict[str, dict]:
    """The instance records of a snapshot's ``services`` table (without the count of
    untracked ones)."""
    return {k: r for k, r in (services or {}).items() if k != UNTRACKED_KEY}


def untracked_of(services: dict | None) -> dict | None:
    """``{"count", "limit", "at_least"}`` when instances went untracked, else None."""
    record = (services or {}).get(UNTRACKED_KEY)
    return record if record and record.get("count") else None


class ServiceRegistry:
    def __init__(self, forget_s: float | None = None, max_instances: int | None = None) -> None:
        self.instances: dict[str, dict] = {}
        self.untracked: dict[str, float] = {}  # key -> last heard, for instances beyond the limit
        self.forget_s, self.max_instances = forget_s, max_instances

    def _limits(self) -> tuple[float, int]:
        forget_s, most = _settings() if None in (self.forget_s, self.max_instances) else (0, 0)
        return (self.forget_s if self.forget_s is not None else forget_s,
                self.max_instances if self.max_instances is not None else most)

    def heartbeat(self, subject: str, data: bytes, headers: dict | None = None,
                  now: float | None = None) -> dict | None:
        """Record one heartbeat; never raises on a malformed one. None when the
        instance is beyond the limit (counted, not kept)."""
        now = time.time() if now is None else now
        tokens = subject.split(".")
        service = _text(tokens[2] if len(tokens) > 3 else subject)
        decoded = envelope.decode(data, headers)
        body = decoded.envelope.get("payload") if decoded.envelope else decoded.json_value
        body = body if isinstance(body, dict) else {}
        sender = decoded.sender or {}
        instance = _text(sender.get("instanceId") or body.get("instance") or service)
        key = f"{service}/{instance}"
        _, most = self._limits()
        if key not in self.instances and len(self.instances) >= most:
            if key in self.untracked or len(self.untracked) < UNTRACKED_CAP:
                self.untracked[key] = now
            return None
        self.untracked.pop(key, None)
        details, size, left = {}, 0, 0
        for k, v in body.items():
            if k in DETAIL_KEYS_SKIPPED:
                continue
            if len(details) >= MAX_DETAILS or size > DETAILS_BYTES:
                left += 1
                continue
            name, value = clean_text(str(k), 80), safe_value(v, 1)
            details[name] = value
            size += len(name) + len(json.dumps(value, ensure_ascii=False))
        if left:  # every row of /services/ shows its details: a row stays a row
            details["…"] = f"{left} more field{'s' if left != 1 else ''}"
        record = {
            "key": key, "service": service, "instance": instance,
            "version": _text(body.get("version") or sender.get("version")),
            "node": _text(body.get("nodeId") or sender.get("nodeId")),
            "reported": _text(body.get("status") or "ok", 40),
            "interval_s": _interval(body.get("interval_s")), "last_seen": now,
            "details": details,
            "problems": [clean_text(p) for p in decoded.problems[:10]]
            if decoded.kind != "envelope" else [],
        }
        self.instances[key] = record
        return record

    @staticmethod
    def status(record: dict, now: float) -> str:
        if record["reported"].lower() in DOWN_WORDS:
            return "down"
        silent = now - record["last_seen"]
        if silent > DOWN_AFTER * record["interval_s"]:
            return "down"
        if silent > STALE_AFTER * record["interval_s"]:
            return "stale"
        return "up"

    @staticmethod
    def state(record: dict, status: str) -> str:
        """What the page shows: ``status`` (up, stale, down: is it alive?), except that a
        live instance whose heartbeat says a circuit breaker is open (or half open) is
        "degraded": it answers, but not everything it calls. ``status`` stays as it is
        for the service alert rules and /metrics' up gauge."""
        if status != "up":
            return status
        for key, value in (record.get("details") or {}).items():
            if "circuitbreaker" in str(key).lower().replace("_", "") and \
                    str(value).strip().upper() in BREAKER_TRIPPED:
                return "degraded"
        return status

    def forget(self, now: float) -> list[str]:
        """Drop the instances silent for longer than the forget time; their keys."""
        forget_s, _ = self._limits()
        gone = [k for k, r in self.instances.items() if now - r["last_seen"] > forget_s]
        for key in gone:
            del self.instances[key]
        for key in [k for k, at in self.untracked.items() if now - at > forget_s]:
            del self.untracked[key]
        return gone

    def records(self, now: float | None = None) -> dict[str, dict]:
        now = time.time() if now is None else now
        self.forget(now)
        out = {}
        for key, r in sorted(self.instances.items()):
            status = self.status(r, now)
            out[key] = {**r, "status": status, "state": self.state(r, status)}
        if self.untracked:
            _, most = self._limits()
            out[UNTRACKED_KEY] = {"key": UNTRACKED_KEY, "count": len(self.untracked),
                                  "limit": most, "at_least": len(self.untracked) >= UNTRACKED_CAP}
        return out


KEEP_EVENTS = 10_000
SERVICE_STATES = ("up", "degraded", "stale", "down")
AGENT_STATES = ("working", "degraded", "failing", "stuck", "idle")  # agents.activity's


def event_from(subject: str, data: bytes, headers: dict | None = None):
    """A ``ServiceEvent`` (unsaved) from an alert or config message."""
    tokens = subject.split(".")
    kind = ServiceEvent.ALERT if tokens[-1] == "alerts" else ServiceEvent.CONFIG
    decoded = envelope.decode(data, headers)
    body = decoded.envelope.get("payload") if decoded.envelope else decoded.json_value
    # Kept as a JSON column and shown on /services/: bounded and JSON-safe first (a
    # 1000-deep payload cannot even be printed, NaN is no JSON PostgreSQL would store).
    body = (safe_value(body) if isinstance(body, dict)
            else {"value": clean_text(decoded.text or decoded.hex or "", 2000)})
    sender = decoded.sender or {}
    message = body.get("message") or ", ".join(f"{k}={v}" for k, v in body.items())
    return ServiceEvent(kind=kind, service=_text(tokens[2] if len(tokens) > 3 else subject),
                        instance=_text(sender.get("instanceId")), at=datetime.now(UTC),
                        severity=_text(body.get("severity"), 40), message=_text(message, 2000),
                        payload=body)


def collapse(events, limit: int = 50) -> list:
    """The feed's lines, each shown once: an event that says what a newer one already
    says (same kind, service, severity and message; a console alert firing and resolving
    on every other sweep said "11 dead letters in the last minute" 30 times) folds into
    the newest, which carries ``repeats`` (how many) and ``first_at`` (the oldest).
    Newest first, at most ``limit`` lines."""
    lines: dict[tuple, Any] = {}
    for e in events:  # newest first
        key = (e.kind, e.service, e.severity, e.message)
        line = lines.get(key)
        if line is None:
            if len(lines) >= limit:
                continue  # a repeat of a line shown may still come
            e.repeats, e.first_at = 1, e.at
            lines[key] = e
        else:
            line.repeats += 1
            line.first_at = min(line.first_at, e.at)
    return list(lines.values())


def store_event(event) -> None:
    event.save()
    if event.pk % 500 == 0:  # now and then, keep the newest KEEP_EVENTS
        newest = ServiceEvent.objects.order_by("-id").values_list("id", flat=True)
        cutoff = newest[KEEP_EVENTS:KEEP_EVENTS + 1]
        if cutoff:
            ServiceEvent.objects.filter(id__lte=cutoff[0]).delete()


def totals(snapshot: dict) -> dict:
    """The agents' and services' bus-wide figures (registered with streams.operations)."""
    agents = list((snapshot.get("agents") or {}).values())
    instances = list(instances_of(snapshot.get("services")).values())
    return {**{f"agents_{k}": sum(a["status"] == k for a in agents)
               for k in AGENT_STATES},
            # By state: a degraded instance is counted as degraded, not as up, so the
            # overview's "up" agrees with the services page's green.
            **{f"services_{k}": sum(r.get("state", r["status"]) == k for r in instances)
               for k in SERVICE_STATES}}


def overview_part(snapshot: dict) -> dict:
    return {"untracked": untracked_of(snapshot.get("services"))}
