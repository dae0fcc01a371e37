"""Following streams as they grow, for the console's indexes.

- ``ordered``: an ordered consumer from a start sequence (ephemeral, push, AckNone,
  in memory, flow control and heartbeats; on a gap or a stall nats-py recreates it
  from the last sequence it delivered). It holds nothing back and is gone when we
  are, so it suits limits-retention streams only.
  ``resume_from`` says where to start from a saved position.
- ``live``: a core subscription to a stream's subjects: no stream sequence, only
  what is published while subscribed. For streams where one more consumer would
  change the stream: on a work queue a second consumer with an overlapping filter
  is refused, and on an interest stream it would be interest (the stream would
  keep what nobody else wants, and ``topology lint`` would no longer see an
  interest stream without readers).
- ``position``: stream sequence and time of a delivered message from its reply
  subject, without building nats-py's Metadata objects for every message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api

from . import jetstream as js

Callback = Callable[[Msg], Awaitable[None]]


async def resume_from(nc: Client, stream: str, seq: int) -> int:
    """``seq``, or 1 when the stream ends before it (it was deleted and created again
    since the caller saved its position)."""
    info = await js.stream_info(nc, stream)
    return 1 if seq > info["state"]["last_seq"] + 1 else max(1, seq)


async def ordered(nc: Client, stream: str, start_seq: int, cb: Callback,
                  heartbeat: float = 5.0) -> Subscription:
    """Deliver every message of ``stream`` from ``start_seq`` on, in order, to ``cb``."""
    info = await js.stream_info(nc, stream)
    config = api.ConsumerConfig(filter_subjects=info["config"]["subjects"],
                                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                                opt_start_seq=start_seq, inactive_threshold=30.0)
    sub = await nc.jetstream().subscribe(
        info["config"]["subjects"][0], stream=stream, config=config, cb=cb,
        ordered_consumer=True, idle_heartbeat=heartbeat)
    # nats-py recreates a stalled consumer (no heartbeat, e.g. after the bus was away)
    # from the last sequence it delivered, which is 0 until the first delivery: it
    # would read the whole stream again. Start it where we asked instead.
    sub._sub._jsi._sseq = start_seq - 1
    return sub


async def live(nc: Client, stream: str, cb: Callback) -> list[Subscription]:
    """Core subscriptions to the subjects ``stream`` stores (from its live config)."""
    info = await js.stream_info(nc, stream)
    return [await nc.subscribe(s, cb=cb, pending_msgs_limit=1_000_000)
            for s in info["config"]["subjects"]]


def position(reply: str | None) -> tuple[int | None, int | None]:
    """(stream sequence, stream time in ns since the epoch) from a JetStream delivery."""
    tokens = (reply or "").split(".")
    if tokens[:2] != ["$JS", "ACK"]:
        return None, None
    at = 5 if len(tokens) == 9 else 7  # v1, or v2 with domain and account hash
    try:
        return int(tokens[at]), int(tokens[at + 2])
    except (IndexError, ValueError):
        return None, None
