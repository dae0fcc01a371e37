"""Login lockouts (django-axes) go to the audit trail, as refused actions do."""

from __future__ import annotations

from django.conf import settings
from django.core.cache import cache

from .models import AuditRecord


def record_lockout(sender, request=None, username=None, ip_address=None, **kwargs) -> None:
    """axes' ``user_locked_out``: an AuditRecord ``login.lockout``, once per address.

    axes sends the signal again on every attempt made while locked out; a guesser
    trying a new username each time would write a row each time. So one row per
    address per cool-off period (a lockout that goes on is recorded again after it).
    """
    ip = ip_address or "unknown"
    if not cache.add(f"lucent:lockout-audited:{ip}", 1,
                     timeout=settings.LUCENT_LOGIN_LOCKOUT_MINUTES * 60):
        return
    AuditRecord.objects.create(
        username="", action="login.lockout", target=(username or "")[:512],
        parameters={"ip": ip, "failures": getattr(request, "axes_failures_since_start", None)},
        outcome="refused", detail=ip)
