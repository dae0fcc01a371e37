"""Publish a message or send a request on an operator's behalf, timed.

A subject some stream stores is published through JetStream, so the answer is the
stream's PubAck (stream and sequence): nothing is "sent" that was not stored. Any other
subject is a core publish, flushed. A request waits for the first reply; when a
stream stores the subject, that reply is usually the stream's PubAck rather than the
service's answer (the ADR's trap), and ``request`` says so.
"""

from __future__ import annotations

import json
import time

from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from . import jetstream as js


class SendError(Exception):
    """The bus did not take the message, or no reply came: a clear message."""


class NotConfirmed(SendError):
    """A stream stores the subject and gave no PubAck in time: it may still store it."""


async def publish(nc: Client, subject: str, data: bytes, headers: dict | None,
                  timeout: float = 5.0) -> dict:
    """``{"stream", "seq", "duplicate", "ms"}`` when a stream stored it, else ``{"ms"}``."""
    started = time.perf_counter()
    stored = await js.streams_storing(nc, subject)
    if stored:
        try:
            ack = await js.publish(nc, subject, data, headers or None, timeout=timeout)
        except js.NoPubAck:
            raise NotConfirmed(js.NoPubAck.UNKNOWN + ": send it again with the same Nats-Msg-Id "
                            "and the stream keeps it once") from None
        except js.JetStreamError as exc:
            raise SendError(str(exc)) from None
        return {**ack, "ms": _ms(started)}
    await nc.publish(subject, data, headers=headers or None)
    await nc.flush(timeout=timeout)
    return {"ms": _ms(started)}


async def request(nc: Client, subject: str, data: bytes, headers: dict | None,
                  timeout: float) -> dict:
    """The first reply: ``{"reply": {"subject", "data", "headers"}, "ms", "pub_ack"?}``;
    ``pub_ack`` names the stream when the reply is a JetStream PubAck, not a service."""
    started = time.perf_counter()
    try:
        msg = await nc.request(subject, data, timeout=timeout, headers=headers or None)
    except NoRespondersError:
        raise SendError(f"no responders: nothing listens on {subject!r}") from None
    except NatsTimeout:
        raise SendError(f"no reply within {timeout:g} s") from None
    ms = _ms(started)
    out = {"reply": {"subject": msg.subject, "data": msg.data, "headers": dict(msg.headers or {})},
           "ms": ms}
    ack = _as_pub_ack(msg.data)
    if ack:
        out["pub_ack"] = ack
    return out


def _as_pub_ack(data: bytes) -> dict | None:
    try:
        reply = json.loads(data or b"")
    except ValueError:
        return None
    if isinstance(reply, dict) and set(reply) <= {"stream", "seq", "duplicate", "domain"} \
            and "stream" in reply and "seq" in reply:
        return {"stream": reply["stream"], "seq": reply["seq"]}
    return None


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
