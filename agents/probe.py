"""The command probe: N requests to a subject, timed (operator, audited).

The ADR promises sub-millisecond internal commands; this measures them from the
console. A subject nobody serves answers "no responders" at once (NATS 2.2+
headers), not a hang; a slow service counts as a timeout.

Safe by default (issue 14): the probe once sent a market-buy ExecuteTradeCommand ten
times to a subject COMMANDS stores, so every probe placed orders, queued agent jobs and
wrote to a stream. Now it sends a ``PingRequest`` to ``lucent.services.<service>.ping``,
which no declared stream stores and the services answer without doing anything; a
business payload is sent only when someone types it, and the page asks to confirm
"subject x count" (naming the streams that would store the requests) first.
"""

from __future__ import annotations

import json
import time

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from kernel.actions import ActionError, audited, refuse_reserved
from kernel.roles import has_role
from lucent_bus import envelope, subjects
from lucent_bus import sync as bus_sync
from streams.topology import DECLARED

MAX_COUNT = 1000
MAX_TIMEOUT_S = 30.0
MAX_PAYLOAD = 1024 * 1024  # nats-server's default max_payload
MAX_REPLIES_SHOWN = 20
PING_TYPE = "PingRequest"
DEFAULT_SERVICE = "trading-service"


def ping_subject(service: str) -> str:
    """Where a Lucent service answers a ping: beside its heartbeats, under
    ``lucent.services.``, which no stream of the topology stores."""
    return f"lucent.services.{service}.ping"


DEFAULT_SUBJECT = ping_subject(DEFAULT_SERVICE)


def is_ping(subject: str) -> bool:
    tokens = subject.split(".")
    return len(tokens) == 4 and tokens[:2] == ["lucent", "services"] and tokens[3] == "ping"


def ping_payload(subject: str) -> str:
    """The body sent when none is given: a request that asks for nothing to be done."""
    return json.dumps(envelope.make(PING_TYPE, subject, {"ping": True},
                                    sender={"serviceId": "console", "instanceId": "probe"}))


def stored_by(subject: str, snapshot: dict | None = None) -> list[str]:
    """The streams that would store a request to ``subject`` (the declared topology and
    those on the bus now): a confirmation must say so, each request is also a message."""
    found = {spec.name for spec in DECLARED
             if any(subjects.matches(p, subject) for p in spec.config["subjects"])}
    for name, s in ((snapshot or {}).get("streams") or {}).items():
        if any(subjects.matches(p, subject) for p in s.get("subjects") or []):
            found.add(name)
    return sorted(found)


def confirmation(subject: str, count: int) -> str:
    """What the page's second step must post back: the subject and count confirmed."""
    return f"{subject} × {count}"


def check(subject, payload=None, count=1, timeout=2.0) -> tuple[str, bytes, int, float]:
    """``(subject, body, count, timeout)`` as they will be sent, or ActionError. The API
    validates its body with ProbeSerializer first; the page's form arrives as text, so
    every value is checked here again: nothing unchecked reaches the bus."""
    subject = subject.strip() if isinstance(subject, str) else ""
    if not subjects.is_valid(subject, wildcards=False):
        raise ActionError(f"{subject[:80]!r} is not a subject one can send a request to")
    refuse_reserved(subject)
    try:
        if isinstance(count, float) and not count.is_integer():
            raise ValueError(count)
        count, timeout = int(count or 1), float(timeout or 2.0)
    except (TypeError, ValueError, OverflowError):
        raise ActionError("count must be a whole number and timeout a number of seconds") from None
    # `not 0 < timeout <= 30` is also true for NaN: a non-number never passes.
    if not 1 <= count <= MAX_COUNT or not 0 < timeout <= MAX_TIMEOUT_S:
        raise ActionError(f"count must be 1..{MAX_COUNT} and timeout 0..{MAX_TIMEOUT_S:g} s")
    if payload is not None and not isinstance(payload, str):
        raise ActionError("payload must be text")
    body = (payload if payload not in (None, "") else ping_payload(subject)).encode()
    if len(body) > MAX_PAYLOAD:
        raise ActionError(f"payload: at most {MAX_PAYLOAD} bytes")
    return subject, body, count, timeout


def _percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))], 3)


def review(user, subject, payload=None, count=1, timeout=2.0) -> tuple[str, bytes, int, float]:
    """The page's first step: ``check`` without sending anything. What is refused is
    audited as the probe itself would be (a refused role, a bus's own subject): asking
    is an attempt, and the audit says so."""
    try:
        if not has_role(user, "operator"):
            raise ActionError("probe needs the operator role")
        return check(subject, payload, count, timeout)
    except ActionError:
        probe(user, subject, payload, count, timeout)  # raises the same error, audited
        raise


def probe(user, subject: str, payload: str | None = None, count=1, timeout=2.0) -> dict:
    """Time ``count`` requests to ``subject`` (operator, audited); with no ``payload``, a
    ping (``ping_payload``)."""
    target = subject.strip() if isinstance(subject, str) else ""
    with audited(user, "probe", target, {"count": count, "timeout": timeout}, "operator") as outcome:
        subject, body, count, timeout = check(subject, payload, count, timeout)

        async def run(nc):
            rtts, replies, errors = [], [], {"no_responders": 0, "timeouts": 0, "other": 0}
            for _ in range(count):
                started = time.perf_counter()
                try:
                    msg = await nc.request(subject, body, timeout=timeout)
                except NoRespondersError:
                    errors["no_responders"] += 1
                    continue
                except NatsTimeout:
                    errors["timeouts"] += 1
                    continue
                rtts.append((time.perf_counter() - started) * 1000)
                if len(replies) < MAX_REPLIES_SHOWN:
                    replies.append({"rtt_ms": round(rtts[-1], 3), "subject": msg.subject,
                                    "decoded": envelope.decode(msg.data, msg.headers)})
            return rtts, replies, errors

        rtts, replies, errors = bus_sync.with_client(run)
        failed = sum(errors.values())
        result = {"subject": subject, "count": count, "ok": len(rtts), "errors": failed,
                  "no_responders": errors["no_responders"], "timeouts": errors["timeouts"],
                  "p50_ms": _percentile(rtts, 50), "p99_ms": _percentile(rtts, 99),
                  "max_ms": round(max(rtts), 3) if rtts else None, "replies": replies}
        outcome.detail = (f"{len(rtts)}/{count} replied, p50 {result['p50_ms']} ms, "
                          f"p99 {result['p99_ms']} ms, {failed} errors")
    return result
