"""Notifications of firing and resolved alerts: recorded, then sent.

The collector publishes each one on ``lucent.services.console.alerts`` itself
(as the ADR's services do); webhooks are sent by Celery (``tasks.py``) with
retries and backoff, so a slow or failing receiver never holds up evaluation.
``deliver`` makes one attempt and records it; tests call it directly.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .models import Alert, Notification, Silence, Webhook

log = logging.getLogger("lucent.alerts")
MAX_ATTEMPTS = 6
TIMEOUT_S = 5.0


def backoff(attempt: int) -> float:
    """Seconds before retry ``attempt`` (0-based): base, 2x base, 4x ... capped at 60 s."""
    return min(60.0, settings.LUCENT_WEBHOOK_BACKOFF_S * 2 ** attempt)


def body(alert: Alert, event: str) -> dict:
    return {"id": alert.pk, "rule": alert.rule.name, "kind": alert.rule.kind,
            "severity": alert.severity, "state": event, "subject": alert.subject,
            "message": alert.message, "value": alert.value, "link": alert.link,
            "started_at": alert.started_at.isoformat(),
            "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None}


def slack_text(alert: Alert, event: str) -> dict:
    mark = ":red_circle:" if event == "firing" and alert.severity == "critical" else (
        ":warning:" if event == "firing" else ":white_check_mark:")
    return {"text": f"{mark} [{event.upper()}] {alert.severity} {alert.rule.name}: "
                    f"{alert.subject}: {alert.message}"}


class RateLimit:
    """At most ``per_min`` transitions of one rule notified a minute (a flood of alerts
    must not become a flood of pages to whoever is on call); the rest are counted, in
    one ``suppressed`` row per rule and minute. The database says what was sent, so
    every judge (leader, bus judge) keeps to the one limit. Use one per transaction."""

    def __init__(self, per_min: int | None = None) -> None:
        self.per_min = settings.LUCENT_NOTIFY_PER_RULE_PER_MIN if per_min is None else per_min
        self.since = timezone.now() - timedelta(seconds=60)
        self.sent: dict[int, int] = {}  # rule id -> transitions notified in the last minute

    def allow(self, alert: Alert) -> bool:
        rule_id = alert.rule_id
        if rule_id not in self.sent:
            self.sent[rule_id] = Notification.objects.filter(
                alert__rule_id=rule_id, channel="bus", created_at__gte=self.since).count()
        if self.sent[rule_id] >= self.per_min:
            return False
        self.sent[rule_id] += 1
        return True

    def suppress(self, alert: Alert, event: str) -> Notification:
        row = (Notification.objects.filter(alert__rule_id=alert.rule_id, state=Notification.SUPPRESSED,
                                           created_at__gte=self.since).order_by("-id").first())
        if row is None:
            row = Notification(alert=alert, event=event, channel="suppressed",
                               state=Notification.SUPPRESSED, count=0)
        row.count += 1
        row.last_error = (f"{row.count:,} transition{'s' if row.count != 1 else ''} of rule "
                          f"{alert.rule.name} not notified: over {self.per_min} a minute")
        row.save()
        return row


def record(alert: Alert, event: str, limit: RateLimit | None = None) -> list[Notification]:
    """The notifications one transition makes (none while silenced, none over the
    rule's rate ``limit``: then it is counted as suppressed); webhook ones are queued."""
    if Silence.active_until(alert.key):
        return []
    if limit is not None and not limit.allow(alert):
        limit.suppress(alert, event)
        return []
    made = [Notification.objects.create(alert=alert, event=event, channel="bus")]
    for hook in Webhook.objects.filter(enabled=True):
        if hook.wants(alert.severity):
            made.append(Notification.objects.create(alert=alert, event=event, webhook=hook,
                                                    channel=f"webhook:{hook.name}"[:120]))
    for n in made[1:]:
        transaction.on_commit(lambda pk=n.pk: enqueue(pk))
    return made


def deliver(pk: int) -> bool:
    """One attempt at a webhook notification; True when there is nothing more to do."""
    n = Notification.objects.select_related("alert__rule", "webhook").get(pk=pk)
    if n.state != Notification.PENDING or n.webhook is None:
        return True
    payload = slack_text(n.alert, n.event) if n.webhook.kind == Webhook.SLACK else body(n.alert, n.event)
    request = urllib.request.Request(n.webhook.url, json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "User-Agent": "lucent-console"})
    n.attempts += 1
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            response.read(1024)
        n.state, n.sent_at, n.last_error = Notification.SENT, timezone.now(), ""
    except (urllib.error.URLError, OSError, ValueError) as exc:
        n.last_error = f"{type(exc).__name__}: {exc}"[:2000]
        if n.attempts >= MAX_ATTEMPTS:
            n.state = Notification.FAILED
    n.save(update_fields=["state", "sent_at", "last_error", "attempts"])
    return n.state != Notification.PENDING


def _inline(pk: int) -> None:
    for attempt in range(MAX_ATTEMPTS + 2):  # + tries lost to a busy database
        try:
            if deliver(pk):
                return
        except Exception:
            log.exception("alerts: webhook notification %s (will retry)", pk)
        time.sleep(backoff(attempt))


def enqueue(pk: int) -> None:
    """Celery sends it (or, with LUCENT_JOBS_INLINE, a thread of this process)."""
    if settings.LUCENT_JOBS_INLINE:
        threading.Thread(target=_inline, args=(pk,), daemon=True, name=f"webhook-{pk}").start()
        return
    from .tasks import deliver_notification

    deliver_notification.delay(pk)
