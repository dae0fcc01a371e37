"""Operating durable consumers: pause, resume, reset, create, update, delete, recreate.

The request and reply fields are nats-server's own (github.com/nats-io/nats-server,
tag v2.14.5 and main, read for the 2.15 line the console pins):

- pause: ``server/jetstream_api.go`` ``JSApiConsumerPauseRequest{PauseUntil time.Time
  `json:"pause_until,omitempty"`}`` on ``$JS.API.CONSUMER.PAUSE.<stream>.<consumer>``;
  an empty body or a past time resumes. Consumer info then carries ``paused`` and
  ``pause_remaining`` (ns) and its config ``pause_until`` (``server/consumer.go``
  ``ConsumerInfo``/``ConsumerConfig``). nats-server 2.11+.
- reset: ``server/jetstream_api.go`` ``JSApiConsumerResetRequest{Seq uint64
  `json:"seq,omitempty"`}`` on ``$JS.API.CONSUMER.RESET.<stream>.<consumer>`` (no time
  field: a time is mapped to a sequence first), answered by the consumer itself
  (``server/consumer.go`` ``processResetReq``/``resetStartingSeqLocked``): ``seq`` is the
  next stream sequence to deliver, pending acks and redelivery counts are dropped; 0
  means "back to the ack floor"; only deliver policies all, by_start_sequence (not
  below ``opt_start_seq``) and by_start_time (not below it) may be reset. 2.14+.
- update: ``server/consumer.go`` ``checkNewConsumerConfig`` lists what may not change.

Older servers do not answer the pause and reset subjects at all (the JetStream API
swallows them: a timeout, not an error), so callers ask ``supports_*`` first.
"""

from __future__ import annotations

from datetime import UTC, datetime

from nats.aio.client import Client

from . import jetstream as js

PAUSE_SINCE = (2, 11, 0)
RESET_SINCE = (2, 14, 0)
FILTERS_SINCE = (2, 10, 0)  # filter_subjects, metadata, the create/update "action"


class Unsupported(js.JetStreamError):
    """The connected server is too old for this request."""


def version_text(nc: Client) -> str:
    return ".".join(str(n) for n in js.server_version(nc))


def supports(nc: Client, since: tuple[int, int, int]) -> bool:
    return js.server_version(nc) >= since


def _require(nc: Client, since: tuple[int, int, int], what: str) -> None:
    if not supports(nc, since):
        needed = ".".join(str(n) for n in since[:2])
        raise Unsupported(f"{what} is not supported by this server ({version_text(nc)}): "
                          f"it needs nats-server {needed} or later")


def rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def info(nc: Client, stream: str, name: str) -> dict:
    return await js.consumer_info(nc, stream, name)


async def pause(nc: Client, stream: str, name: str, until: datetime | None) -> dict:
    """Pause until ``until``; None resumes. The reply: ``paused, pause_until,
    pause_remaining`` (ns)."""
    _require(nc, PAUSE_SINCE, "pausing a consumer")
    body = {"pause_until": rfc3339(until)} if until is not None else None
    return await js.api(nc, f"CONSUMER.PAUSE.{stream}.{name}", body)


async def reset(nc: Client, stream: str, name: str, seq: int) -> dict:
    """Make ``seq`` the next stream sequence the consumer delivers; its pending acks and
    redelivery counts are dropped. The reply is the consumer info plus ``reset_seq``."""
    _require(nc, RESET_SINCE, "resetting a consumer")
    return await js.api(nc, f"CONSUMER.RESET.{stream}.{name}", {"seq": seq})


async def create(nc: Client, stream: str, config: dict, action: str) -> dict:
    """``action`` "create" (refused by 2.10+ if it exists with another config) or
    "update" (refused if it does not exist); 2.9 ignores the field, so callers check."""
    name = config["durable_name"]
    payload: dict = {"stream_name": stream, "config": config}
    if supports(nc, FILTERS_SINCE):
        payload["action"] = action
    return await js.api(nc, f"CONSUMER.CREATE.{stream}.{name}", payload)


async def delete(nc: Client, stream: str, name: str) -> dict:
    return await js.api(nc, f"CONSUMER.DELETE.{stream}.{name}")


async def seq_at_time(nc: Client, stream: str, when: datetime, first: int, last: int) -> int | None:
    """The first sequence stored at or after ``when``, None if none is.

    2.11+: ``STREAM.MSG.GET`` with ``start_time`` (the stream's own time index); older
    servers refuse that field ("bad request"), so there a binary search by sequence."""
    if supports(nc, PAUSE_SINCE):
        try:
            reply = await js.api(nc, f"STREAM.MSG.GET.{stream}", {"start_time": rfc3339(when)})
        except js.JetStreamError as exc:
            if exc.err_code == js.NO_MESSAGE_FOUND:
                return None
            raise
        return int(reply["message"]["seq"])
    if last < first or last == 0:
        return None
    seq = await js.message_time_search(nc, stream, first, last, when)
    return seq if seq <= last else None


async def recreate(nc: Client, stream: str, config: dict, seq: int) -> dict:
    """Delete the durable and create it again with ``config`` starting at ``seq``
    (deliver_policy by_start_sequence): the way to "reset" on servers without the reset
    API. Its ack state, pending acks and redelivery counts are lost. If the new one is
    refused, the old config is put back (from its first unacknowledged message on the
    old policy's terms) and the refusal raised."""
    fresh = {k: v for k, v in config.items() if k not in ("opt_start_time",)}
    fresh.update(deliver_policy="by_start_sequence", opt_start_seq=seq)
    await delete(nc, stream, config["durable_name"])
    try:
        return await create(nc, stream, fresh, "create")
    except js.JetStreamError as exc:
        try:
            await create(nc, stream, config, "create")
        except js.JetStreamError as again:
            raise js.JetStreamError(f"recreating failed ({exc}) and so did restoring the "
                                    f"old consumer ({again}): it is gone") from again
        raise js.JetStreamError(f"recreating was refused ({exc}); the old consumer was "
                                "created again with its config (its ack state is lost)") from exc
