"""What every action shares: role check, audit record, clear errors.

Service functions wrap their work in ``audited(...)``: the record is written
whatever happens, with outcome ``ok``, ``refused`` (role check failed: nothing
was done), ``failed`` (bad input or the bus said no: nothing was done) or ``unknown``
(the bus did not confirm a write in time: it may still be stored when it answers).
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from typing import Any

from django.db import DatabaseError, transaction

from lucent_bus import subjects

from .models import AuditRecord
from .roles import has_role


class ActionError(Exception):
    """Bad input or a refusal from the bus: a clear message, nothing changed."""

    status = 400


class NotFound(ActionError):
    status = 404


class Refused(ActionError):
    status = 403


class Conflict(ActionError):
    """What the action was based on has changed since it was read (nothing was done)."""

    status = 409


class OutcomeUnknown(ActionError):
    """A write the bus did not confirm in time (a frozen or slow server stores what was
    written to it when it wakes): not "nothing was done". Answered 400 like a failure,
    recorded as ``unknown``; the message says how to find out."""


class Outcome:
    """What an action tells its audit record as it goes: ``detail`` (the result) and
    ``parameters`` (more to record, learned while acting, e.g. both versions of an
    edited replay), added to the record's parameters whatever the outcome."""

    def __init__(self) -> None:
        self.detail = ""
        self.parameters: dict | None = None


# How much of an action's parameters the audit keeps: enough to see what was asked,
# never so much that a hostile body fills the table (or fails to be stored at all).
MAX_TEXT = 500
MAX_ITEMS = 50
MAX_DEPTH = 4
MAX_JSON = 4000
MAX_DETAIL = 2000


def json_safe(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON the database accepts: non-finite numbers as text (SQLite's
    JSON_VALID and PostgreSQL's jsonb both refuse Infinity and NaN), other objects as
    their text, strings, lists and mappings clipped."""
    if value is None or isinstance(value, (bool, int)):
        return value if not isinstance(value, int) or abs(value) < 2**63 else str(value)[:40]
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value[:MAX_TEXT]).decode("utf-8", "replace")
    if isinstance(value, str):
        return value[:MAX_TEXT]
    if depth >= MAX_DEPTH:
        return str(value)[:MAX_TEXT]
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k)[:100]: json_safe(v, depth + 1)
                for k, v in list(value.items())[:MAX_ITEMS]}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v, depth + 1) for v in list(value)[:MAX_ITEMS]]
    return str(value)[:MAX_TEXT]


def safe_parameters(parameters: Any) -> dict:
    """An action's parameters as the audit stores them: JSON-safe and at most MAX_JSON
    characters (beyond that, the clipped text of the whole)."""
    try:
        safe = json_safe(parameters if parameters is not None else {})
        text = json.dumps(safe, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        return {"unrecordable": f"{type(exc).__name__}: {str(exc)[:200]}"}
    if not isinstance(safe, dict):
        safe = {"value": safe}
    if len(text) > MAX_JSON:
        return {"clipped": text[:MAX_JSON]}
    return safe


def _save(record: AuditRecord) -> None:
    """Store the record; whatever the parameters, the attempt itself is recorded."""
    record.detail = (record.detail or "")[:MAX_DETAIL]
    try:
        with transaction.atomic():
            record.save()
    except DatabaseError:
        record.pk = None
        record.parameters = {"unrecordable": "the database refused the parameters"}
        record.save()


@contextmanager
def audited(user, action: str, target: str, parameters: dict, role: str):
    outcome = Outcome()
    record = AuditRecord(user=user if getattr(user, "pk", None) else None,
                         username=getattr(user, "username", "") or "", action=action[:64],
                         target=str(target)[:512], parameters=safe_parameters(parameters))
    try:
        if not has_role(user, role):
            raise Refused(f"{action} needs the {role} role")
        yield outcome
        if outcome.parameters:
            record.parameters = safe_parameters({**(parameters or {}), **outcome.parameters})
    except Refused as exc:
        record.outcome, record.detail = "refused", str(exc)
        _save(record)
        raise
    except OutcomeUnknown as exc:
        record.outcome, record.detail = "unknown", str(exc)
        _save(record)
        raise
    except ActionError as exc:
        record.outcome, record.detail = "failed", str(exc)
        _save(record)
        raise
    except Exception as exc:
        record.outcome, record.detail = "failed", f"{type(exc).__name__}: {exc}"
        _save(record)
        raise ActionError(f"{action} failed: {exc}") from exc
    record.outcome, record.detail = "ok", outcome.detail
    _save(record)


def refuse_reserved(subject: str, replay: bool = False) -> None:
    """Raise ActionError (400) when ``subject`` is one of the bus's own subjects (or, for
    a replay, the dead letters themselves): no action of the console sends there."""
    reason = subjects.reserved(subject, replay)
    if reason:
        raise ActionError(reason)


def guard_own(admin: bool, what: str, reason: str | None, confirmed: bool) -> None:
    """The console's own part ``what`` (``reason``: what breaks, from ``lucent_bus.own``;
    None when it is not the console's): only an admin who confirmed the warning changes
    it. Refused (403, audited as refused) otherwise, naming what breaks. ``admin`` is
    asked by the caller (``has_role(user, "admin")``) where the database may be read."""
    if not reason:
        return
    if not admin:
        raise Refused(f"{what} is the console's own: {reason}. Only an admin may change it.")
    if not confirmed:
        raise Refused(f"{what} is the console's own: {reason}. Confirm this warning to change "
                      'it (the page\'s box, "confirm_own": true in the API, --confirm-own on '
                      "the command line).")
