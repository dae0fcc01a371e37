"""Hostile bus input, shared by the tests of every pipeline that reads the bus.

``CASES`` is a list of ``Case(name, headers, payload, bad)``: header values are
``str`` or raw ``bytes`` (invalid UTF-8, NUL...), which nats-py would refuse to
send, so ``publish_raw`` speaks the NATS protocol itself. ``bad`` names what the
dead-letter index cannot store as it came (``DeadLetter.malformed``): headers it
cannot read, values clipped to their column or stripped of NUL. Header blocks stay
under nats-server's 64 KiB limit (it refuses larger ones, with an error). A test
publishes them between good messages and checks that every one arrives, the good
ones after them too.
"""

from __future__ import annotations

import asyncio
import json
from typing import NamedTuple
from urllib.parse import urlparse

from lucent_bus import deadletters as dl

HUGE = "99999999999999999999"  # beyond 64 bits
DEEP = 1000


class Case(NamedTuple):
    name: str
    headers: dict[str, str | bytes]
    payload: bytes
    bad: set[str]  # what a dead-letter index names in ``malformed``


def _deep_envelope() -> bytes:
    return (b'{"messageId": "m-deep", "messageType": "Deep", "correlationId": "c-deep", "payload": '
            + b"[" * DEEP + b"]" * DEEP + b"}")


CASES: list[Case] = [
    Case("huge seq", {dl.H_SEQ: HUGE}, b"huge seq", {dl.H_SEQ}),
    Case("huge deliveries", {dl.H_DELIVERIES: HUGE}, b"huge deliveries", {dl.H_DELIVERIES}),
    Case("5000-digit seq", {dl.H_SEQ: "9" * 5000}, b"long digits", {dl.H_SEQ}),
    Case("negative seq", {dl.H_SEQ: "-1", dl.H_DELIVERIES: "-3"}, b"negative",
         {dl.H_SEQ, dl.H_DELIVERIES}),
    Case("impossible date", {dl.H_AT: "0001-01-01T00:00:00+14:00"}, b"year 0 in UTC", {dl.H_AT}),
    Case("date past 9999", {dl.H_AT: "9999-12-31T23:59:59-14:00"}, b"year 10000 in UTC", {dl.H_AT}),
    Case("not a date", {dl.H_AT: "yesterday"}, b"not a date", {dl.H_AT}),
    Case("Infinity", {dl.H_SEQ: "Infinity", dl.H_DELIVERIES: "NaN", dl.H_AT: "Infinity"},
         b'{"messageId": "m-inf", "messageType": Infinity, "timestamp": -Infinity, "n": NaN}',
         {dl.H_SEQ, dl.H_DELIVERIES, dl.H_AT}),
    Case("Infinity payload", {}, b"-Infinity", set()),
    Case("invalid UTF-8 headers", {"X-Bad": b"\xff\xfe\xc3(", dl.H_SUBJECT: b"orders.\xff\xfe",
                                   dl.H_CONSUMER: b"ship\xc3per"}, b"bad header bytes", set()),
    Case("invalid UTF-8 payload", {}, b"\xff\xfe\xc3(\x80 not text", set()),
    Case("NUL bytes", {"X-Nul": b"a\x00b", dl.H_REASON: b"max\x00deliveries"}, b"nul\x00inside",
         {"headers", dl.H_REASON}),
    Case("1000-deep JSON", {}, b"[" * DEEP + b"]" * DEEP, set()),
    Case("1000-deep envelope", {}, _deep_envelope(), set()),
    Case("100000-deep JSON", {}, b"{\"a\":" * 100_000 + b"1" + b"}" * 100_000, set()),
    Case("huge JSON number", {}, b'{"messageId": 1' + b"0" * 5000 + b', "messageType": "T"}', set()),
    Case("1 MB payload", {}, b"x" * 1_000_000, set()),
    Case("long header values", {dl.H_STREAM: "S" * 5000, dl.H_REASON: "r" * 500,
                                dl.H_ERROR: "e" * 50_000},
         b"long values", {dl.H_STREAM, dl.H_REASON}),
    Case("long correlation header", {"X-Correlation-ID": "c" * 1000},
         json.dumps({"a": [1] * 10}).encode(), {"correlation_id"}),
]


def header_block(headers: dict[str, str | bytes]) -> bytes:
    out = bytearray(b"NATS/1.0\r\n")
    for key, value in headers.items():
        raw = value if isinstance(value, bytes) else value.encode()
        out += key.encode() + b": " + raw + b"\r\n"
    return bytes(out + b"\r\n")


async def publish_raw(url: str, messages: list[tuple[str, dict[str, str | bytes], bytes]],
                      timeout: float = 10.0) -> list[dict]:
    """Publish (subject, headers, payload) messages as they are, bytes for bytes, over a
    plain NATS connection of its own; the JetStream PubAck of each, in order (``{}``
    where no stream answered)."""
    parsed = urlparse(url)
    reader, writer = await asyncio.open_connection(parsed.hostname, parsed.port or 4222,
                                                   limit=2**22)
    replies: dict[int, dict] = {}
    try:
        info = await reader.readline()
        assert info.startswith(b"INFO"), info
        connect = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True,
                   "protocol": 1, "lang": "python-test", "version": "0"}
        if parsed.username:
            connect.update(user=parsed.username, **{"pass": parsed.password or ""})
        writer.write(b"CONNECT " + json.dumps(connect).encode() + b"\r\nSUB _INBOX.raw.* 1\r\n")
        for i, (subject, headers, payload) in enumerate(messages):
            block = header_block(headers)
            writer.write(f"HPUB {subject} _INBOX.raw.{i} {len(block)} {len(block) + len(payload)}"
                         "\r\n".encode() + block + payload + b"\r\n")
        await writer.drain()
        while len(replies) < len(messages):
            line = await asyncio.wait_for(reader.readline(), timeout)
            assert line and not line.startswith(b"-ERR"), line
            if line.startswith(b"PING"):
                writer.write(b"PONG\r\n")
                continue
            if not line.startswith((b"MSG", b"HMSG")):
                continue
            parts = line.split()
            body = await reader.readexactly(int(parts[-1]) + 2)
            hdr_len = int(parts[-2]) if line.startswith(b"HMSG") else 0
            data = body[hdr_len:-2]
            replies[int(parts[1].rsplit(b".", 1)[1])] = json.loads(data) if data else {}
        return [replies[i] for i in range(len(messages))]
    finally:
        writer.close()


# JSON values a service may put in a field of its payload (a heartbeat's latency, an
# event's message, an envelope's sender): each parses (Python's json reads NaN and
# Infinity) and none of them may break a page, the API or /metrics.
VALUES: dict[str, bytes] = {
    "Infinity": b"Infinity",
    "-Infinity": b"-Infinity",
    "NaN": b"NaN",
    "1e400": b"1e400",  # a float overflowing to infinity
    "int beyond 64 bits": b"1" + b"0" * 30,
    "4000-digit int": b"9" * 4000,
    "lone surrogate": b'"\\ud800 half a pair"',
    "NUL escape": b'"a\\u0000b"',
    "impossible date": b'"0001-01-01T00:00:00+14:00"',
    "950-deep list": b"[" * 950 + b"]" * 950,
    "200-deep object": b'{"a":' * 200 + b"1" + b"}" * 200,
    "100 KB string": b'"' + b"x" * 100_000 + b'"',
    "5000 keys": b"{" + b",".join(b'"k%d":%d' % (i, i) for i in range(5000)) + b"}",
    "markup": b'"<script>alert(1)</script>"',
}


def value_payloads(value: bytes) -> list[bytes]:
    """Heartbeat or event bodies carrying ``value`` in each place a reader looks."""
    return [
        b'{"status": "up", "latencyMs": ' + value + b', "interval_s": ' + value + b"}",
        b'{"status": ' + value + b', "version": ' + value + b', "nodeId": ' + value
        + b', "message": ' + value + b', "severity": ' + value + b"}",
        b'{"messageId": "m-v", "messageType": ' + value + b', "correlationId": ' + value
        + b', "sender": {"serviceId": ' + value + b', "instanceId": ' + value + b'}, '
        b'"payload": {"status": "up", "detail": ' + value + b"}}",
    ]
