"""The command probe: N requests to a command subject, timed (operator, audited).

The ADR promises sub-millisecond internal commands; this measures them from the
console. A subject nobody serves answers "no responders" at once (NATS 2.2+
headers), not a hang; a slow service counts as a timeout.
"""

from __future__ import annotations

import time

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from kernel.actions import ActionError, audited, refuse_reserved
from lucent_bus import envelope, subjects
from lucent_bus import sync as bus_sync

MAX_COUNT = 1000
MAX_TIMEOUT_S = 30.0
MAX_PAYLOAD = 1024 * 1024  # nats-server's default max_payload
DEFAULT_SUBJECT = "lucent.commands.trading.execute"
MAX_REPLIES_SHOWN = 20


def default_payload(subject: str) -> str:
    import json

    return json.dumps(envelope.make(
        "ExecuteTradeCommand", subject,
        {"command": "execute_trade", "data": {"userId": "probe", "pair": "ETH-USDC", "side": "buy",
                                              "amount": 0.01, "orderType": "market"}},
        sender={"serviceId": "console", "instanceId": "probe"}), indent=2)


def _percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))], 3)


def probe(user, subject: str, payload: str | None = None, count=1, timeout=2.0) -> dict:
    """Time ``count`` requests to ``subject`` (operator, audited). The API validates its
    body with ProbeSerializer first; the page's form arrives here as text, so every value
    is checked again: nothing unchecked reaches the bus."""
    subject = subject.strip() if isinstance(subject, str) else ""
    with audited(user, "probe", subject, {"count": count, "timeout": timeout}, "operator") as outcome:
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
        body = (payload if payload not in (None, "") else default_payload(subject)).encode()
        if len(body) > MAX_PAYLOAD:
            raise ActionError(f"payload: at most {MAX_PAYLOAD} bytes")

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
