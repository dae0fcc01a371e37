"""How a dead letter looks on the bus (shared by the capture and by services).

A dead letter is a copy of the failed message, published to
``lucent.deadletter.<stream>.<consumer>`` with the original headers plus the
``Lucent-DL-*`` headers below, and a ``Nats-Msg-Id`` derived from
(stream, its generation, sequence, consumer) so that a repeated capture is
deduplicated, while a failure of a stream declared again (which counts from 1
again) is not mistaken for one of its previous life.
"""

from __future__ import annotations

from datetime import UTC, datetime

SUBJECT_PREFIX = "lucent.deadletter"
STREAM = "DEAD_LETTERS"

H_STREAM = "Lucent-DL-Stream"
H_SEQ = "Lucent-DL-Seq"
H_SUBJECT = "Lucent-DL-Subject"
H_CONSUMER = "Lucent-DL-Consumer"
H_DELIVERIES = "Lucent-DL-Deliveries"
H_REASON = "Lucent-DL-Reason"
H_ERROR = "Lucent-DL-Error"
H_AT = "Lucent-DL-At"
H_PAYLOAD = "Lucent-DL-Payload"  # "missing" when the original could not be fetched
H_GENERATION = "Lucent-DL-Generation"  # the source stream's generation (its created time)

REASON_MAX_DELIVERIES = "max_deliveries"
REASON_TERMINATED = "terminated"
REASON_EXPLICIT = "explicit"


def _token(value: str) -> str:
    # Stream and consumer names cannot hold dots or wildcards, but be safe.
    return "".join(c if c not in ".*> \t" else "_" for c in value) or "_"


def subject(stream: str, consumer: str) -> str:
    return f"{SUBJECT_PREFIX}.{_token(stream)}.{_token(consumer)}"


def msg_id(stream: str, seq: int, consumer: str, generation: str = "") -> str:
    # Without the generation, a stream deleted and declared again within DEAD_LETTERS'
    # duplicate window (1 day) would have its new failures dropped as duplicates.
    if not generation:
        return f"dl:{stream}:{seq}:{consumer}"
    return f"dl:{stream}@{generation}:{seq}:{consumer}"


def headers(
    original_headers: dict | None,
    *,
    stream: str,
    seq: int,
    subject: str,
    consumer: str,
    deliveries: int,
    reason: str,
    error: str = "",
    payload_missing: bool = False,
    at: str | None = None,
    generation: str = "",
) -> dict[str, str]:
    out = {k: v for k, v in (original_headers or {}).items() if not k.startswith("Nats-")}
    out.update({
        "Nats-Msg-Id": msg_id(stream, seq, consumer, generation),
        H_STREAM: stream,
        H_SEQ: str(seq),
        H_SUBJECT: subject,
        H_CONSUMER: consumer,
        H_DELIVERIES: str(deliveries),
        H_REASON: reason,
        H_AT: datetime.now(UTC).isoformat(timespec="milliseconds"),
    })
    if error:
        out[H_ERROR] = error[:1000]
    if payload_missing:
        out[H_PAYLOAD] = "missing"
    if generation:
        out[H_GENERATION] = generation
    return out


def parse_subject(subject: str) -> tuple[str, str]:
    """(stream, consumer) from ``lucent.deadletter.<stream>.<consumer>``."""
    tokens = subject.split(".")
    stream = tokens[2] if len(tokens) > 2 else ""
    consumer = ".".join(tokens[3:]) if len(tokens) > 3 else ""
    return stream, consumer


def generation(stream_info: dict) -> str:
    """A stream's generation: its ``created`` time. A stream deleted and declared again,
    another bus or a restore counts its sequences from 1 again under a new one, so
    anything keyed by a stream sequence keeps this next to it."""
    return str(stream_info.get("created") or "")[:64]
