"""Watching work happen on a stream: its new messages (with their stream
sequence), the acks its consumers send, and the advisories for messages that
failed for good.

Acks are ordinary messages on ``$JS.ACK.<stream>.<consumer>.<delivered>.
<stream seq>.<consumer seq>.<published ns>.<pending>`` (newer servers may add a
domain and account hash in front), so a core subscription sees every outcome
without touching the consumers: which message, how many deliveries, and how
long since it was published.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.aio.client import Client
from nats.js.api import DeliverPolicy

ACK_KINDS = {b"": "ack", b"+ACK": "ack", b"+NXT": "ack", b"-NAK": "nak", b"+TERM": "term",
             b"+WPI": "progress"}
FAILURE_ADVISORIES = ("MAX_DELIVERIES", "MSG_TERMINATED")


@dataclass(frozen=True, slots=True)
class Ack:
    stream: str
    consumer: str
    delivered: int
    stream_seq: int
    published: float  # seconds since the epoch, when the stream stored the message
    kind: str  # ack | nak | term | progress


def parse_ack(subject: str, body: bytes) -> Ack | None:
    """The ack an ``$JS.ACK`` message carries, or None for anything else."""
    tokens = subject.split(".")
    if len(tokens) == 9:
        fields = tokens[2:8]
    elif len(tokens) >= 11:
        fields = tokens[4:10]
    else:
        return None
    head = body.split(b" ", 1)[0][:5]
    kind = ACK_KINDS.get(head)
    if kind is None:
        return None
    try:
        return Ack(fields[0], fields[1], int(fields[2]), int(fields[3]),
                   int(fields[5]) / 1e9, kind)
    except ValueError:
        return None


async def follow_new(nc: Client, stream: str, subject: str, cb: Callable[..., Awaitable[None]]):
    """Every new message of ``stream`` on ``subject``, in order, from now on (an
    ordered consumer: ephemeral, no acks, recreated by nats-py after a gap)."""
    return await nc.jetstream().subscribe(subject, stream=stream, ordered_consumer=True,
                                          deliver_policy=DeliverPolicy.NEW, cb=cb)


async def watch_acks(nc: Client, stream: str, cb: Callable[[Ack], Awaitable[None]]) -> list:
    async def on_msg(msg):
        ack = parse_ack(msg.subject, msg.data)
        if ack is not None and ack.stream == stream:
            await cb(ack)

    return [await nc.subscribe(f"$JS.ACK.{stream}.>", cb=on_msg),
            await nc.subscribe(f"$JS.ACK.*.*.{stream}.>", cb=on_msg)]


async def watch_failures(nc: Client, stream: str, cb: Callable[[str, dict], Awaitable[None]]) -> list:
    """``cb(kind, advisory)`` for each MAX_DELIVERIES / MSG_TERMINATED advisory of ``stream``."""
    async def on_msg(msg):
        try:
            advisory = json.loads(msg.data)
        except ValueError:
            return
        await cb(msg.subject.split(".")[4], advisory)

    return [await nc.subscribe(f"$JS.EVENT.ADVISORY.CONSUMER.{kind}.{stream}.*", cb=on_msg)
            for kind in FAILURE_ADVISORIES]
