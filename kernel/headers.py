"""Message headers typed by an operator (publish, edit-and-replay): checked alike.

A header name is an RFC 7230 token (what NATS, like HTTP, accepts); a value is one line
of text. Names the bus or the console set themselves may not be forged by hand: each
caller says which prefixes it reserves.
"""

from __future__ import annotations

import base64
import binascii
import re

from .actions import ActionError

MAX_HEADERS = 64
MAX_HEADER_VALUE = 4096
HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,256}$")


def check_headers(headers, reserved: tuple[str, ...] = ()) -> dict[str, str]:
    """``headers`` as a dict of names to values, or ActionError (400) naming the first
    problem; names starting with one of ``reserved`` are refused."""
    if not isinstance(headers, dict):
        raise ActionError("headers must be an object of names to text values")
    if len(headers) > MAX_HEADERS:
        raise ActionError(f"headers: at most {MAX_HEADERS}")
    out = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not HEADER_NAME.match(name):
            raise ActionError(f"header name {str(name)[:60]!r} is not a valid token")
        if reserved and name.startswith(reserved):
            raise ActionError(f"header {name!r} is set by the bus or the console, not by hand")
        if not isinstance(value, str) or "\r" in value or "\n" in value:
            raise ActionError(f"header {name!r}: the value must be text on one line")
        if len(value) > MAX_HEADER_VALUE:
            raise ActionError(f"header {name!r}: at most {MAX_HEADER_VALUE} characters")
        out[name] = value
    return out


def parse_header_lines(text: str, reserved: tuple[str, ...] = ()) -> dict[str, str]:
    """A form's headers box: one ``Name: value`` per line; blank lines ignored."""
    out: dict[str, str] = {}
    for number, line in enumerate((text or "").splitlines(), 1):
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise ActionError(f"headers line {number}: expected 'Name: value'")
        out[name.strip()] = value.strip()
    return check_headers(out, reserved)


MAX_PAYLOAD = 1024 * 1024  # nats-server's default max_payload


def payload_bytes(payload, encoding=None) -> bytes:
    """A typed payload as the bytes to send: text (UTF-8) or base64 for binary, at most
    MAX_PAYLOAD; ActionError (400) naming what is wrong otherwise."""
    if not isinstance(payload, str):
        raise ActionError("payload must be text (base64 with payload_encoding: base64)")
    if encoding not in (None, "", "text", "base64"):
        raise ActionError("payload_encoding must be text or base64")
    if encoding == "base64":
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ActionError("payload is not valid base64") from None
    else:
        data = payload.encode("utf-8", "surrogatepass")
    if len(data) > MAX_PAYLOAD:
        raise ActionError(f"payload: at most {MAX_PAYLOAD} bytes")
    return data
