"""The ADR-003 message envelope: build one, and decode anything tolerantly.

``decode`` never raises on bad input: it says what it found (``kind``) and what
is wrong with it (``problems``). Payloads are untrusted; nothing here marks any
of it safe for HTML, templates escape it as usual.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

ENVELOPE_FIELDS = (
    "messageId", "correlationId", "causationId", "timestamp", "messageType",
    "version", "subject", "replyTo", "sender", "jetstream", "payload", "metadata",
)
# At least these make a JSON object an envelope rather than some other JSON.
REQUIRED = ("messageId", "messageType")
MAX_PARSE_BYTES = 4 * 1024 * 1024  # larger payloads are shown, not parsed
PREVIEW_BYTES = 64 * 1024

CORRELATION_HEADERS = ("X-Correlation-ID", "Lucent-Correlation-Id")
TYPE_HEADERS = ("X-Event-Type", "X-Job-Type", "X-Message-Type")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make(
    message_type: str,
    subject: str,
    payload: Any,
    *,
    sender: dict | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    reply_to: str | None = None,
    jetstream: dict | None = None,
    metadata: dict | None = None,
    message_id: str | None = None,
) -> dict:
    """A new envelope; a new correlation starts when none is given."""
    message_id = message_id or str(uuid.uuid4())
    env = {
        "messageId": message_id,
        "correlationId": correlation_id or message_id,
        "causationId": causation_id,
        "timestamp": now_iso(),
        "messageType": message_type,
        "version": "1.0",
        "subject": subject,
        "sender": sender or {},
        "payload": payload,
    }
    if reply_to:
        env["replyTo"] = reply_to
    if jetstream:
        env["jetstream"] = jetstream
    if metadata:
        env["metadata"] = metadata
    return env


def encode(envelope: dict) -> bytes:
    return json.dumps(envelope, separators=(",", ":")).encode()


def headers_for(envelope: dict) -> dict[str, str]:
    """The ADR's headers: dedup id plus correlation and type for header-only readers."""
    return {
        "Nats-Msg-Id": envelope["messageId"],
        "X-Correlation-ID": envelope.get("correlationId") or "",
        "X-Event-Type": envelope.get("messageType") or "",
    }


@dataclass
class Decoded:
    kind: str  # envelope | json | text | binary | empty
    size: int
    problems: list[str] = field(default_factory=list)
    envelope: dict | None = None  # the whole envelope object, when kind == envelope
    json_value: Any = None
    text: str | None = None  # decoded text (possibly a truncated preview)
    hex: str | None = None  # hex preview for binary
    truncated: bool = False
    message_id: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    message_type: str | None = None
    timestamp: str | None = None
    sender: dict | None = None

    @property
    def pretty(self) -> str | None:
        """Indented JSON for envelopes and other JSON; None otherwise."""
        if self.kind not in ("envelope", "json"):
            return None
        try:
            text = json.dumps(self.json_value, indent=2, ensure_ascii=False, sort_keys=False)
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                # JSON may escape a lone surrogate ("\ud800"), which no page can encode:
                # keep it escaped, as it came.
                text = json.dumps(self.json_value, indent=2, ensure_ascii=True, sort_keys=False)
            return text
        except (RecursionError, ValueError):
            # Nesting that parsed may still be too deep to print on a deeper stack (a
            # template): the page then shows the text as it came.
            return None

    @property
    def sender_name(self) -> str | None:
        if not isinstance(self.sender, dict):
            return None
        value = self.sender.get("serviceId") or self.sender.get("instanceId")
        return str(value) if value is not None else None

    def as_dict(self) -> dict:
        return {
            "kind": self.kind, "size": self.size, "problems": self.problems,
            "message_id": self.message_id, "correlation_id": self.correlation_id,
            "causation_id": self.causation_id, "message_type": self.message_type,
            "timestamp": self.timestamp, "sender": self.sender,
            "truncated": self.truncated,
        }


def _str_or_none(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape: shown escaped
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _header(headers: dict | None, names: tuple[str, ...]) -> str | None:
    if not headers:
        return None
    lowered = {str(k).lower(): v for k, v in headers.items()}
    for name in names:
        value = lowered.get(name.lower())
        if value:
            return str(value)
    return None


def _check_envelope(obj: dict, problems: list[str]) -> None:
    for key in REQUIRED:
        if not obj.get(key):
            problems.append(f"missing {key}")
    ts = obj.get("timestamp")
    if ts is not None:
        try:
            datetime.fromisoformat(str(ts).replace("Z", "+00:00"))
        except ValueError:
            problems.append("timestamp is not ISO 8601")
    if "sender" in obj and not isinstance(obj["sender"], (dict, type(None))):
        problems.append("sender is not an object")
    unknown = sorted(set(obj) - set(ENVELOPE_FIELDS))
    if unknown:
        problems.append("extra fields: " + ", ".join(unknown[:10]))


def decode(data: bytes | bytearray | memoryview | None, headers: dict | None = None) -> Decoded:
    """Decode a message body; never raises."""
    try:
        return _decode(bytes(data or b""), headers)
    except Exception as exc:  # last resort: a decoder bug must not hide a message
        raw = bytes(data or b"")
        return Decoded(kind="binary", size=len(raw), hex=raw[:PREVIEW_BYTES].hex(" "),
                       truncated=len(raw) > PREVIEW_BYTES,
                       problems=[f"decoder error: {type(exc).__name__}"])


def _decode(raw: bytes, headers: dict | None) -> Decoded:
    size = len(raw)
    header_corr = _header(headers, CORRELATION_HEADERS)
    header_type = _header(headers, TYPE_HEADERS)
    if size == 0:
        return Decoded(kind="empty", size=0, correlation_id=header_corr,
                       message_type=header_type, problems=["empty payload"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return Decoded(kind="binary", size=size, hex=raw[:PREVIEW_BYTES].hex(" "),
                       truncated=size > PREVIEW_BYTES, correlation_id=header_corr,
                       message_type=header_type, problems=["not UTF-8 text"])
    if "\x00" in text:
        return Decoded(kind="binary", size=size, hex=raw[:PREVIEW_BYTES].hex(" "),
                       truncated=size > PREVIEW_BYTES, correlation_id=header_corr,
                       message_type=header_type, problems=["contains NUL bytes"])
    preview = text if size <= PREVIEW_BYTES else text[:PREVIEW_BYTES]
    stripped = text.lstrip()
    if size > MAX_PARSE_BYTES or stripped[:1] not in ("{", "[", '"') and not _looks_scalar(stripped):
        problems = [f"too large to parse ({size} bytes)"] if size > MAX_PARSE_BYTES else []
        return Decoded(kind="text", size=size, text=preview, truncated=size > PREVIEW_BYTES,
                       correlation_id=header_corr, message_type=header_type,
                       problems=problems)
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return Decoded(kind="text", size=size, text=preview, truncated=size > PREVIEW_BYTES,
                       correlation_id=header_corr, message_type=header_type,
                       problems=[f"invalid JSON: {str(exc)[:120]}"]
                       if stripped[:1] in ("{", "[") else [])
    if isinstance(value, dict) and any(k in value for k in REQUIRED):
        problems: list[str] = []
        _check_envelope(value, problems)
        sender = value.get("sender") if isinstance(value.get("sender"), dict) else None
        return Decoded(
            kind="envelope", size=size, problems=problems, envelope=value,
            json_value=value, text=preview, truncated=size > PREVIEW_BYTES,
            message_id=_str_or_none(value.get("messageId")),
            correlation_id=_str_or_none(value.get("correlationId")) or header_corr,
            causation_id=_str_or_none(value.get("causationId")),
            message_type=_str_or_none(value.get("messageType")) or header_type,
            timestamp=_str_or_none(value.get("timestamp")),
            sender=sender,
        )
    return Decoded(kind="json", size=size, json_value=value, text=preview,
                   truncated=size > PREVIEW_BYTES, correlation_id=header_corr,
                   message_type=header_type, problems=["JSON but not an envelope"])


def _looks_scalar(text: str) -> bool:
    head = text[:6]
    return head[:1].isdigit() or head[:1] == "-" or head.startswith(("true", "false", "null"))
