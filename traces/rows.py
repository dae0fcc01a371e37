"""The trace index's rows: one tolerant decode of one delivered message.

``row_from`` never raises: a field that cannot be read is left empty, so no message
leaves a hole in the index (``traces.indexer`` for the whole pipeline).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

from lucent_bus import deadletters as dl
from lucent_bus import envelope, tail
from lucent_bus import jetstream as js

from .models import EnvelopeRecord

log = logging.getLogger("lucent.traces")

FIELDS = ("stream", "seq", "subject", "message_id", "correlation_id", "causation_id",
          "message_type", "sender", "at", "origin_stream", "origin_seq")
PLAUSIBLE = timedelta(hours=1)
LIMITS = {f.name: f.max_length for f in EnvelopeRecord._meta.fields if f.max_length}
INT64_MAX = 2**63 - 1


def _clip(value: str | None, field: str) -> str:
    # Bus data may hold NUL (refused by PostgreSQL) or be longer than the column.
    if not value:
        return ""
    if "\x00" in value:
        value = value.replace("\x00", "")
    return value[:LIMITS[field]]


def _str(value) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    return value if isinstance(value, str) else str(value)


def fields_of(data: bytes, headers: dict | None) -> tuple:
    """(message id, correlation id, causation id, type, sender, timestamp) of a message.

    The common case, a UTF-8 JSON envelope that names its correlation and type,
    takes one ``json.loads``; anything else goes through ``envelope.decode``, whose
    answers this must equal (tests/test_traces.py). Full decoding costs twice as
    much, which mattered at 10,000 messages/s (bench/trace_index.py).
    """
    if data[:1] == b"{" and len(data) <= envelope.MAX_PARSE_BYTES:
        try:
            obj = json.loads(data.decode())
        except (ValueError, RecursionError):
            obj = None
        if (isinstance(obj, dict) and isinstance(obj.get("messageType"), str) and obj["messageType"]
                and isinstance(obj.get("correlationId"), str) and obj["correlationId"]):
            sender = obj.get("sender")
            name = None
            if isinstance(sender, dict):
                name = sender.get("serviceId") or sender.get("instanceId")
            return (_str(obj.get("messageId")), obj["correlationId"], _str(obj.get("causationId")),
                    obj["messageType"], str(name) if name is not None else None,
                    _str(obj.get("timestamp")))
    d = envelope.decode(data, headers)
    return d.message_id, d.correlation_id, d.causation_id, d.message_type, d.sender_name, d.timestamp


def row_from(stream: str, subject: str, reply: str | None, data: bytes, headers: dict | None,
             received: datetime | None = None, generation: str = "") -> tuple:
    """One index row (``FIELDS`` order, then the stream's generation) from one delivered
    message; never raises: what cannot be read is left empty."""
    seq, ns = tail.position(reply)
    if seq is not None and not 0 <= seq <= INT64_MAX:
        seq = None
    try:
        return _row(stream, subject, seq, ns, data, headers, received, generation)
    except Exception as exc:  # a row with its fields empty rather than a hole in the index
        log.warning("traces: %s #%s could not be read (%s: %s); indexed with its fields empty",
                    stream, seq, type(exc).__name__, exc)
        return (stream, seq, _clip(str(subject), "subject"), "", "", "", "", "",
                _time_of(ns, received), "", None, generation)


def _time_of(ns: int | None, received: datetime | None) -> datetime:
    try:
        if ns:
            return datetime.fromtimestamp(ns / 1e9, UTC)
    except (OverflowError, ValueError, OSError):
        pass
    return received or datetime.now(UTC)


def _row(stream: str, subject: str, seq: int | None, ns: int | None, data: bytes,
         headers: dict | None, received: datetime | None, generation: str) -> tuple:
    message_id, correlation_id, causation_id, message_type, sender, sent = fields_of(data, headers)
    if ns:
        at = _time_of(ns, received)
    else:
        # Read live: the publisher's time when it is plausible, as the receive time
        # lags behind whenever the console has a backlog.
        received = received or datetime.now(UTC)
        at = received
        try:
            sent = js.parse_time(sent)
            if sent and sent.tzinfo and abs(sent - received) < PLAUSIBLE:
                at = sent
        except (ValueError, OverflowError, TypeError):  # 0001-01-01T00:00:00+14:00 and such
            pass
    origin_stream, origin_seq = "", None
    if stream == dl.STREAM:
        headers = headers or {}
        origin_stream = headers.get(dl.H_STREAM) or dl.parse_subject(subject)[0]
        raw = headers.get(dl.H_SEQ, "")
        # isdigit() also holds for digits int() cannot read, or past what the column holds.
        if raw.isascii() and raw.isdigit() and len(raw) <= 19 and int(raw) <= INT64_MAX:
            origin_seq = int(raw)
    elif not message_id and headers:
        message_id = headers.get("Nats-Msg-Id")
    return (stream, seq, _clip(subject, "subject"), _clip(message_id, "message_id"),
            _clip(correlation_id, "correlation_id"), _clip(causation_id, "causation_id"),
            _clip(message_type, "message_type"), _clip(sender, "sender"), at,
            _clip(origin_stream, "origin_stream"), origin_seq, generation)
