"""Lucent service instances, from their heartbeats on ``lucent.services.<service>.health``.

The collector keeps one ``ServiceRegistry``: every heartbeat updates its
instance; each sweep puts ``records(now)`` in the snapshot, where status is
``up``, ``stale`` (no heartbeat for 2 intervals) or ``down`` (5 intervals, or
the service said so). Records change only when a heartbeat arrives or a
status flips, so an idle snapshot delta stays empty.
"""

from __future__ import annotations

import time

from lucent_console.bus import envelope

DEFAULT_INTERVAL_S = 5.0
STALE_AFTER, DOWN_AFTER = 2, 5
DOWN_WORDS = {"down", "error", "failed", "critical", "unhealthy"}
DETAIL_KEYS_SKIPPED = {"status", "service", "version", "nodeId", "interval_s"}


def _text(value, limit: int = 200) -> str:
    return str(value)[:limit] if value is not None else ""


class ServiceRegistry:
    def __init__(self) -> None:
        self.instances: dict[str, dict] = {}

    def heartbeat(self, subject: str, data: bytes, headers: dict | None = None,
                  now: float | None = None) -> dict:
        """Record one heartbeat; never raises on a malformed one."""
        now = time.time() if now is None else now
        tokens = subject.split(".")
        service = tokens[2] if len(tokens) > 3 else _text(subject)
        decoded = envelope.decode(data, headers)
        body = decoded.envelope.get("payload") if decoded.envelope else decoded.json_value
        body = body if isinstance(body, dict) else {}
        sender = decoded.sender or {}
        instance = _text(sender.get("instanceId") or body.get("instance") or service)
        try:
            interval = float(body.get("interval_s") or DEFAULT_INTERVAL_S)
        except (TypeError, ValueError):
            interval = DEFAULT_INTERVAL_S
        record = {
            "key": f"{service}/{instance}", "service": service, "instance": instance,
            "version": _text(body.get("version") or sender.get("version")),
            "node": _text(body.get("nodeId") or sender.get("nodeId")),
            "reported": _text(body.get("status") or "ok", 40),
            "interval_s": max(0.1, interval), "last_seen": now,
            "details": {k: v for k, v in body.items() if k not in DETAIL_KEYS_SKIPPED
                        and isinstance(v, (str, int, float, bool, type(None)))},
            "problems": decoded.problems if decoded.kind != "envelope" else [],
        }
        self.instances[record["key"]] = record
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

    def records(self, now: float | None = None) -> dict[str, dict]:
        now = time.time() if now is None else now
        return {key: {**r, "status": self.status(r, now)} for key, r in sorted(self.instances.items())}


KEEP_EVENTS = 10_000


def event_from(subject: str, data: bytes, headers: dict | None = None):
    """A ``ServiceEvent`` (unsaved) from an alert or config message."""
    from datetime import UTC, datetime

    from .models import ServiceEvent

    tokens = subject.split(".")
    kind = ServiceEvent.ALERT if tokens[-1] == "alerts" else ServiceEvent.CONFIG
    decoded = envelope.decode(data, headers)
    body = decoded.envelope.get("payload") if decoded.envelope else decoded.json_value
    body = body if isinstance(body, dict) else {"value": decoded.text or decoded.hex or ""}
    sender = decoded.sender or {}
    message = body.get("message") or ", ".join(f"{k}={v}" for k, v in body.items())
    return ServiceEvent(kind=kind, service=_text(tokens[2] if len(tokens) > 3 else subject),
                        instance=_text(sender.get("instanceId")), at=datetime.now(UTC),
                        severity=_text(body.get("severity"), 40), message=_text(message, 2000),
                        payload=body)


def store_event(event) -> None:
    from .models import ServiceEvent

    event.save()
    if event.pk % 500 == 0:  # now and then, keep the newest KEEP_EVENTS
        newest = ServiceEvent.objects.order_by("-id").values_list("id", flat=True)
        cutoff = newest[KEEP_EVENTS:KEEP_EVENTS + 1]
        if cutoff:
            ServiceEvent.objects.filter(id__lte=cutoff[0]).delete()
