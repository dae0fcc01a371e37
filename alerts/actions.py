"""Reading alerts, and the operator's actions on them (audited)."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Case, IntegerField, Value, When
from django.utils import timezone

from kernel.actions import ActionError, NotFound, audited

from .models import Alert, Notification, Rule, Silence

MAX_SILENCE_MIN = 7 * 24 * 60
_SEVERITY_ORDER = Case(When(severity="critical", then=Value(0)), default=Value(1),
                       output_field=IntegerField())


def firing():
    """Firing alerts, worst first, then newest."""
    return (Alert.objects.filter(state=Alert.FIRING).select_related("rule", "acknowledged_by")
            .annotate(order=_SEVERITY_ORDER).order_by("order", "-started_at"))


def active_silences() -> dict:
    """Alert key -> until when it is silenced, for every silence in force."""
    out: dict = {}
    for key, until in Silence.objects.filter(until__gt=timezone.now()).values_list("key", "until"):
        out[key] = max(until, out.get(key, until))
    return out


def panel(history: int = 50) -> dict:
    silenced = active_silences()
    rows = list(firing())
    for a in rows:
        a.silenced = silenced.get(a.key)
    return {"firing": rows,
            "counts": {s: sum(a.severity == s for a in rows) for s in ("critical", "warning")},
            "history": list(Alert.objects.filter(state=Alert.RESOLVED)
                            .select_related("rule")[:history])}


def details() -> dict:
    return {"rules": list(Rule.objects.all()),
            "notifications": list(Notification.objects.select_related("alert__rule")[:30])}


def _alert(pk) -> Alert:
    try:
        return Alert.objects.select_related("rule").get(pk=int(pk))
    except (ValueError, TypeError, OverflowError, Alert.DoesNotExist):
        raise NotFound(f"No alert {str(pk)[:40]!r}.") from None


def acknowledge(user, pk) -> Alert:
    with audited(user, "alert.acknowledge", f"alert {pk}", {"id": pk}, "operator") as outcome:
        alert = _alert(pk)
        if alert.state != Alert.FIRING:
            raise ActionError(f"Alert {alert.pk} is {alert.state}: nothing to acknowledge.")
        alert.acknowledged_by, alert.acknowledged_at = user, timezone.now()
        alert.save(update_fields=["acknowledged_by", "acknowledged_at"])
        outcome.detail = f"{alert.rule.name}: {alert.subject}"
    return alert


def silence(user, pk, minutes) -> Silence:
    with audited(user, "alert.silence", f"alert {pk}", {"id": pk, "minutes": minutes},
                 "operator") as outcome:
        alert = _alert(pk)
        try:
            # int(float("inf")) is an OverflowError; a float with a fraction is no count.
            if isinstance(minutes, bool) or (isinstance(minutes, float)
                                              and not minutes.is_integer()):
                raise ValueError(minutes)
            minutes = int(minutes)
        except (TypeError, ValueError, OverflowError):
            raise ActionError("minutes must be a whole number") from None
        if not 1 <= minutes <= MAX_SILENCE_MIN:
            raise ActionError(f"minutes must be 1..{MAX_SILENCE_MIN} (a week)")
        until = timezone.now() + timedelta(minutes=minutes)
        made = Silence.objects.create(key=alert.key, until=until, by=user)
        outcome.detail = f"{alert.key} silenced until {until:%Y-%m-%d %H:%M} UTC"
    return made
