"""Times typed by people (filters, ranges): one parser, one answer for naive times."""

from __future__ import annotations

from datetime import datetime

from django.utils import timezone

from .actions import ActionError


def parse(value, field: str) -> datetime:
    """An ISO time (``Z`` allowed); a time without a zone is in the server's zone.
    A bad value is an ActionError naming the field."""
    try:
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise ActionError(f"{field}: {str(value)[:40]!r} is not a time (use 2026-11-26T10:30)") from None
    return when if when.tzinfo else timezone.make_aware(when)
