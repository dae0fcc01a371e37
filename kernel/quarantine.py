"""Setting aside a message a pipeline cannot store (``Quarantined``), so it moves on.

Shared by the dead-letter index and the trace index: never drop silently, never stall.
"""

from __future__ import annotations

import logging

from django.db import DataError, transaction

from .models import Quarantined

log = logging.getLogger("lucent.quarantine")
INT64_MAX = 2**63 - 1
DATA_ERRORS = (DataError, OverflowError, ValueError, TypeError, UnicodeError)


def safe(text, limit: int) -> str:
    """Text any database column takes: ASCII with escapes, clipped, no NUL."""
    return str(text or "").encode("ascii", "backslashreplace").decode()[:limit].replace("\x00", "")


def set_aside(pipeline: str, stream: str, generation: str, seq: int | None, subject: str,
               reason: str, headers: dict | None, payload_size: int) -> None:
    """Set a message aside (``Quarantined``) so its pipeline moves on; once per message.
    Raises only if even that cannot be written (then the message is retried)."""
    key = {"pipeline": pipeline, "stream": safe(stream, 256), "generation": safe(generation, 64),
           "seq": seq if seq is None or 0 <= seq <= INT64_MAX else None}
    values = {"subject": safe(subject, 512), "reason": safe(reason, 2000),
              "payload_size": payload_size}
    log.error("%s: %s #%s set aside in Quarantined: %s", pipeline, stream, seq, values["reason"])
    for hdrs in ({safe(k, 256): safe(v, 4096) for k, v in (headers or {}).items()}, {}):
        try:
            with transaction.atomic():
                Quarantined.objects.update_or_create(**key, defaults={**values, "headers": hdrs})
            return
        except DATA_ERRORS:
            continue
    raise RuntimeError(f"{pipeline}: could not even quarantine {stream} #{seq}")

