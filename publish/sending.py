"""Publish a message or send a request (operator, audited with a digest of the payload).

The same deny-list as the probe: nothing is sent to the bus's own subjects (JetStream's
API, KV and object stores, the system account, inboxes, the console's own traffic). A
payload is text (or base64 for binary); headers are checked (kernel/headers.py); the
audit keeps the subject, headers, size and sha256 of the payload, never the payload.
"""

from __future__ import annotations

import base64
import hashlib
import json

from kernel.actions import ActionError, OutcomeUnknown, audited, guard_own, refuse_reserved
from kernel.headers import check_headers, payload_bytes
from kernel.roles import has_role
from lucent_bus import deadletters as dl
from lucent_bus import envelope, own, send, subjects
from lucent_bus import jetstream as js
from lucent_bus import sync as bus_sync

MAX_TIMEOUT_MS = 30_000
DEFAULT_TIMEOUT_MS = 2_000
# Set by the console's capture and replays: a hand-made message may not pose as one.
RESERVED_HEADERS = ("Lucent-DL-", "Lucent-Replay-")


def body(payload, encoding=None) -> bytes:
    return payload_bytes(payload, encoding)


def check(subject, payload="", encoding=None, headers=None, timeout_ms=None):
    """(subject, data, headers, timeout s) as they will be sent, or ActionError."""
    subject = subject.strip() if isinstance(subject, str) else ""
    if not subjects.is_valid(subject, wildcards=False):
        raise ActionError(f"{subject[:80]!r} is not a subject one can publish to "
                          "(no wildcards, no spaces, no empty tokens)")
    refuse_reserved(subject)
    data = body(payload if payload is not None else "", encoding)
    checked = check_headers(headers or {}, RESERVED_HEADERS)
    timeout_ms = DEFAULT_TIMEOUT_MS if timeout_ms in (None, "") else timeout_ms
    if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int) \
            or not 1 <= timeout_ms <= MAX_TIMEOUT_MS:
        raise ActionError(f"timeout_ms must be a whole number 1..{MAX_TIMEOUT_MS}")
    return subject, data, checked, timeout_ms / 1000


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def own_target(subject: str) -> str | None:
    """What breaks when a hand-made message lands in one of the console's own streams
    (a subject DEAD_LETTERS stores: it would be indexed as a dead letter); the other
    own streams' subjects ($JS.>, $KV.>) are refused outright."""
    if subjects.matches(subjects.DEAD_LETTERS, subject):
        return own.own_stream(dl.STREAM)
    return None


def send_message(user, subject, payload="", *, encoding=None, headers=None, request=False,
                 timeout_ms=None, confirm_own=False) -> dict:
    """Publish (or, with ``request``, send a request and wait for its reply). Returns
    ``{"stream"?, "seq"?, "duplicate"?, "reply"?, "ms"}``; a reply is decoded like a
    message (JSON, text or hex), for the page and the API alike."""
    action = "bus.request" if request else "bus.publish"
    target = subject.strip() if isinstance(subject, str) else ""
    with audited(user, action, target[:512], {"headers": headers, "request": bool(request),
                                              "confirm_own": bool(confirm_own)},
                 "operator") as outcome:
        subject, data, headers, timeout = check(subject, payload, encoding, headers, timeout_ms)
        guard_own(has_role(user, "admin"), f"stream {dl.STREAM} (which stores {subject})",
                  own_target(subject), confirm_own)
        outcome.parameters = {"bytes": len(data), "sha256": digest(data)}
        try:
            if request:
                result = bus_sync.with_client(send.request, subject, data, headers, timeout)
            else:
                result = bus_sync.with_client(send.publish, subject, data, headers, timeout)
        except send.NotConfirmed as exc:
            raise OutcomeUnknown(str(exc)) from None
        except send.SendError as exc:
            raise ActionError(str(exc)) from None
        if request:
            result = _decoded(result)
        outcome.detail = _detail(result, len(data))
    return {"subject": subject, "bytes": len(data), "sha256": digest(data), **result}


def _decoded(result: dict) -> dict:
    reply = result.pop("reply")
    data = reply["data"]
    try:
        text, encoding = data.decode("utf-8"), "text"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(data).decode(), "base64"
    result["reply"] = {"subject": reply["subject"], "headers": reply["headers"],
                       "payload": text, "payload_encoding": encoding,
                       "decoded": envelope.decode(data, reply["headers"])}
    return result


def _detail(result: dict, size: int) -> str:
    if "pub_ack" in result:
        return (f"{size} bytes; the reply was {result['pub_ack']['stream']}'s PubAck, "
                f"not a service, in {result['ms']} ms")
    if "reply" in result:
        return f"{size} bytes; replied in {result['ms']} ms"
    if result.get("stream"):
        return f"{size} bytes; stored in {result['stream']} #{result['seq']}"
    return f"{size} bytes; published (no stream stores it)"


def template(message_type: str, subject: str) -> str:
    """An ADR envelope to start from: a new message id, correlation id and time."""
    message_type = (message_type or "Command").strip()[:100] or "Command"
    return json.dumps(envelope.make(message_type, subject or "", {},
                                    sender={"serviceId": "console", "instanceId": "publish"}),
                      indent=2)


def stored_by(subject: str) -> list[str] | None:
    """Streams on the bus whose subjects take ``subject`` (for the confirmation), asked
    of the bus itself; None when it cannot be asked now (the page says so)."""
    try:
        return sorted(bus_sync.with_client(js.streams_storing, subject))
    except Exception:  # noqa: BLE001 - a review still shows, saying it could not check
        return None
