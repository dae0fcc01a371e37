"""Edit a dead letter before replaying it: a changed payload and headers, checked.

A failed message often needs one field mended (a typo in a symbol, a missing header)
before it can succeed. The edit is part of the replay's identity: its ``Nats-Msg-Id``
is derived from (letter, generation, digest of the edit, target), so a retried edit is
deduplicated by the target stream while a different edit of the same letter is a new
message. The original stays in DEAD_LETTERS; the replay row keeps the edited version
whole and the audit record keeps both versions' digests, headers and first bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass

from kernel import headers as headers_

MAX_PAYLOAD = headers_.MAX_PAYLOAD
# Set by the bus or the console itself: an edit may not forge them.
RESERVED_HEADERS = ("Nats-", "Lucent-DL-", "Lucent-Replay-")
AUDIT_PREVIEW = 400  # characters of each version kept in the audit record


@dataclass(frozen=True)
class Edit:
    """What replaces the stored message: ``data`` None keeps the stored payload,
    ``headers`` None keeps the stored headers."""

    data: bytes | None = None
    headers: dict[str, str] | None = None

    def apply(self, stored_data: bytes, stored_headers: dict) -> tuple[bytes, dict]:
        data = stored_data if self.data is None else self.data
        headers = visible(stored_headers) if self.headers is None else dict(self.headers)
        return data, headers


def visible(headers: dict) -> dict:
    """The headers of a stored letter a replay carries (the bus's and the capture's
    own are dropped)."""
    return {k: v for k, v in (headers or {}).items()
            if not k.startswith(RESERVED_HEADERS) and k != "Status"}


def digest(data: bytes, headers: dict) -> str:
    """One message's identity: its payload and headers, order of headers aside."""
    canon = json.dumps({"headers": sorted(headers.items()),
                        "payload": base64.b64encode(data).decode()}, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()


def parse(payload=None, encoding=None, headers=None) -> Edit | None:
    """The edit asked for, checked; None when nothing is edited. ActionError (400)
    names what is wrong: nothing is sent."""
    if payload is None and headers is None:
        return None
    data = None if payload is None else headers_.payload_bytes(payload, encoding)
    return Edit(data, None if headers is None else check_headers(headers))


def check_headers(headers) -> dict[str, str]:
    return headers_.check_headers(headers, RESERVED_HEADERS)


def parse_header_lines(text: str) -> dict[str, str]:
    """The page's headers box: one ``Name: value`` per line."""
    return headers_.parse_header_lines(text, RESERVED_HEADERS)


def version(data: bytes, headers: dict) -> dict:
    """One version as the audit keeps it: digest, headers and the first characters."""
    text = data.decode("utf-8", "replace")
    return {"sha256": digest(data, headers), "bytes": len(data),
            "payload": text[:AUDIT_PREVIEW] + ("…" if len(text) > AUDIT_PREVIEW else ""),
            "headers": headers}


def stored_form(data: bytes, headers: dict) -> dict:
    """The edited version whole, as the replay row keeps it."""
    try:
        return {"payload": data.decode("utf-8"), "payload_encoding": "text",
                "headers": headers, "sha256": digest(data, headers)}
    except UnicodeDecodeError:
        return {"payload": base64.b64encode(data).decode(), "payload_encoding": "base64",
                "headers": headers, "sha256": digest(data, headers)}
