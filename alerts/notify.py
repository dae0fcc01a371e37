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
import urllib.request
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from .models import Alert, Notification, Silence, Webhook

log = logging.getLogger("lucent.alerts")
MAX_ATTEMPTS = 6
TIMEOUT_S = 5.0
CLAIM_S = TIMEOUT_S + 10  # an attempt's longest (its request's timeout) and a margin
RESUME_AFTER_S = 30.0  # pending this long past due: its task is gone; queued again
RESUME_AT_MOST = 500  # queued again per sweep (the rest at the next)
RESUME_MAX_AGE_S = 3600.0  # older than this and still unsent: marked failed, not sent late


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
                                                    channel=f"webhook:{hook.name}"[:120],
                                                    due_at=timezone.now()))
    for n in made[1:]:
        transaction.on_commit(lambda pk=n.pk: enqueue(pk))
    return made


def _claim(pk: int) -> datetime | None:
    """Hold a pending webhook notification for one attempt (a conditional update: of
    two runners at once, one gets it); the claim's end, which fences what the attempt
    records, or None. A runner that dies holding it lets go when the claim runs out,
    and ``resume_pending`` queues it again."""
    now = timezone.now()
    until = now + timedelta(seconds=CLAIM_S)
    free = Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)
    claimed = Notification.objects.filter(free, pk=pk, state=Notification.PENDING,
                                          webhook__isnull=False).update(claimed_until=until)
    return until if claimed else None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer to act on, not to follow: urllib would turn the POST into
    a GET without its body (and each hop would lengthen the attempt past its claim)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib raises HTTPError for the 3xx: a failed attempt, recorded


_opener = urllib.request.build_opener(_NoRedirect)


def _superseded(n: Notification) -> bool:
    """A firing notice whose alert has resolved and been notified as resolved to this
    webhook: sent now it would arrive after that and say the alert is firing."""
    return n.event == "firing" and Notification.objects.filter(
        alert_id=n.alert_id, webhook_id=n.webhook_id, event="resolved",
        state=Notification.SENT).exists()


def deliver(pk: int) -> bool:
    """One attempt at a webhook notification; True when there is nothing more to do
    here (sent, given up on, or another runner is making its attempt now)."""
    claim = _claim(pk)
    if claim is None:
        return True
    n = Notification.objects.select_related("alert__rule", "webhook").get(pk=pk)
    if n.webhook is None:  # deleted since the claim: nobody to send it to
        return True
    attempts, state, sent_at, error, due_at = n.attempts, Notification.PENDING, None, "", n.due_at
    if _superseded(n):
        state, error = Notification.FAILED, "not sent: the alert resolved, and that was sent first"
    else:
        attempts += 1
        try:
            _send(n)
            state, sent_at = Notification.SENT, timezone.now()
        except Exception as exc:  # any failure of the receiver, the network or the request
            error = f"{type(exc).__name__}: {exc}"[:2000]
            if attempts >= MAX_ATTEMPTS:
                state = Notification.FAILED
            else:
                due_at = timezone.now() + timedelta(seconds=backoff(attempts - 1))
    # Recorded only while the claim is ours: an attempt that outlived it (a receiver
    # dripping its answer) must not undo what the runner holding it now records.
    kept = Notification.objects.filter(pk=pk, claimed_until=claim).update(
        state=state, sent_at=sent_at, last_error=error, attempts=attempts, due_at=due_at,
        claimed_until=None)
    if not kept:
        log.warning("alerts: webhook notification %s: the attempt (%s) outlived its claim; "
                    "another runner has it now", pk, error or state)
        return True
    if error:
        log.warning("alerts: webhook notification %s: %s (attempt %d)", pk, error, attempts)
    return state != Notification.PENDING


def _send(n: Notification) -> None:
    payload = slack_text(n.alert, n.event) if n.webhook.kind == Webhook.SLACK else body(n.alert, n.event)
    # A runner killed after the receiver got it and before recording it is the one case
    # where the receiver gets it again: the key lets it tell.
    request = urllib.request.Request(n.webhook.url, json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "User-Agent": "lucent-console",
                                              "Idempotency-Key": f"lucent-notification-{n.pk}"})
    with _opener.open(request, timeout=TIMEOUT_S) as response:
        response.read(1024)


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
    from .tasks import deliver_notification  # here: alerts.tasks imports this module

    try:
        deliver_notification.delay(pk)
    except Exception:  # the broker away: the row is the record; the sweep queues it again
        log.exception("alerts: webhook notification %s not queued; queued again within %.0fs "
                      "of the broker coming back", pk, RESUME_AFTER_S)


def resume_pending() -> int:
    """Queue again every webhook notification still pending ``RESUME_AFTER_S`` past its
    due time and held by no runner: its task was lost (the broker was away when it was
    queued, or a worker died with it). Safe anywhere, any number of times: a runner's
    claim keeps it to one attempt at a time. Returns how many it queued."""
    now = timezone.now()
    free = Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)
    lost = Notification.objects.filter(free, state=Notification.PENDING, webhook__isnull=False,
                                       due_at__lt=now - timedelta(seconds=RESUME_AFTER_S))
    too_old = lost.filter(created_at__lt=now - timedelta(seconds=RESUME_MAX_AGE_S))
    gave_up = too_old.update(state=Notification.FAILED, last_error=(
        f"not sent: its task was lost and it is over {RESUME_MAX_AGE_S / 3600:.0f} h old"))
    if gave_up:
        log.error("alerts: %d webhook notification(s) lost their task over %.0f h ago; "
                  "marked failed, not sent late", gave_up, RESUME_MAX_AGE_S / 3600)
    queued = 0
    for pk in lost.order_by("due_at").values_list("pk", flat=True)[:RESUME_AT_MOST]:
        # Conditional: a runner that claimed it or set a new due time meanwhile keeps it.
        if Notification.objects.filter(free, pk=pk, due_at__lt=now - timedelta(
                seconds=RESUME_AFTER_S)).update(due_at=now):  # not again before it runs
            log.warning("alerts: webhook notification %s lost its task; queued again", pk)
            enqueue(pk)
            queued += 1
    return queued
