"""What every action shares: role check, audit record, clear errors.

Service functions wrap their work in ``audited(...)``: the record is written
whatever happens, with outcome ``ok``, ``refused`` (role check failed: nothing
was done) or ``failed`` (bad input or the bus said no: nothing was done).
"""

from __future__ import annotations

from contextlib import contextmanager

from .models import AuditRecord
from .roles import has_role


class ActionError(Exception):
    """Bad input or a refusal from the bus: a clear message, nothing changed."""

    status = 400


class NotFound(ActionError):
    status = 404


class Refused(ActionError):
    status = 403


class Outcome:
    def __init__(self) -> None:
        self.detail = ""


@contextmanager
def audited(user, action: str, target: str, parameters: dict, role: str):
    outcome = Outcome()
    record = AuditRecord(user=user if getattr(user, "pk", None) else None,
                         username=getattr(user, "username", "") or "", action=action,
                         target=target[:512], parameters=parameters)
    try:
        if not has_role(user, role):
            raise Refused(f"{action} needs the {role} role")
        yield outcome
    except Refused as exc:
        record.outcome, record.detail = "refused", str(exc)
        record.save()
        raise
    except ActionError as exc:
        record.outcome, record.detail = "failed", str(exc)
        record.save()
        raise
    except Exception as exc:
        record.outcome, record.detail = "failed", f"{type(exc).__name__}: {exc}"
        record.save()
        raise ActionError(f"{action} failed: {exc}") from exc
    record.outcome, record.detail = "ok", outcome.detail
    record.save()
