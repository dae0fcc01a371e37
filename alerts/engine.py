"""Alerting in the collector: evaluate every snapshot, record transitions, notify.

Rules are read from the database every ``RULES_TTL_S`` (edits in the admin take
effect within that), and so are the firing alerts: a new leader term or a restarted
collector starts from them (neither firing twice nor resolving what it has not yet
judged, see ``rules.Evaluator``), and alerts fired or resolved by another process
(the bus judge of ``collector.BusJudge``, while no leader can be elected) are
followed. The database keeps one firing alert per key (a conditional unique
constraint) and a resolution is a conditional update, so two judges at once fire
and resolve an alert once, with one notification each. Only transitions touch the
database (and a grouped alert's count, when it changes). Never raises: an alerting
failure is logged, the sweep goes on.

Floods stay small: past ``LUCENT_ALERT_GROUP_AT`` subjects a rule fires one grouped
alert (``rules.group``); each rule notifies at most ``LUCENT_NOTIFY_PER_RULE_PER_MIN``
transitions a minute (``notify.RateLimit``, the rest counted as suppressed); an alert
whose service instance was forgotten resolves without a notification.
"""

from __future__ import annotations

import logging
import time

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from lucent_bus import envelope, notify_subjects

from . import notify
from .models import Alert, Notification, Rule
from .rules import GROUP_SUBJECT, Evaluator

log = logging.getLogger("lucent.alerts")
RULES_TTL_S = 10.0
SUBJECT = "lucent.services.console.alerts"
LIVE_NOTIFY = notify_subjects.LIVE_ALERTS


def load() -> tuple[list[Rule], dict[str, int]]:
    return (list(Rule.objects.all()),
            dict(Alert.objects.filter(state=Alert.FIRING).values_list("key", "id")))


class Alerting:
    def __init__(self) -> None:
        self.rules: list[Rule] = []
        self.evaluator: Evaluator | None = None
        self.loaded_at = 0.0
        self.unsent: list[tuple[dict, int]] = []  # bus notifications waiting for the bus
        self.last_ms = 0.0
        self.group_values: dict[str, float | None] = {}  # grouped alert key -> count recorded

    async def evaluate(self, nc, snapshot: dict) -> bool:
        """Judge one snapshot; True when an alert fired or resolved."""
        try:
            if time.monotonic() - self.loaded_at > RULES_TTL_S:
                self.rules, firing = await sync_to_async(load)()
                if self.evaluator is None:
                    self.evaluator = Evaluator(firing, group_at=settings.LUCENT_ALERT_GROUP_AT,
                                               forget_s=settings.LUCENT_SERVICE_FORGET_S)
                else:
                    self.evaluator.adopt(firing)
                self.loaded_at = time.monotonic()
            started = time.perf_counter()
            fire, resolve = self.evaluator.step(snapshot, self.rules)
            self.last_ms = (time.perf_counter() - started) * 1000
            if fire or resolve:
                self.unsent += await sync_to_async(self.record)(fire, resolve)
            counts = {k: g for k, g in self.evaluator.groups.items()
                      if k in self.evaluator.firing and self.group_values.get(k) != g.value}
            if counts:
                await sync_to_async(self.recount)(counts)
            await self.flush(nc, changed=bool(fire or resolve))
            return bool(fire or resolve)
        except Exception:
            log.exception("alerts: evaluation failed")
            return False

    def record(self, fire, resolve) -> list[tuple[dict, int]]:
        """Store the transitions and their notifications; the bus ones to publish.
        All or nothing: if the database fails, the next sweep tries again."""
        out, firing, resolved = [], {}, []
        forgotten = self.evaluator.forgotten
        with transaction.atomic():
            changed = []
            for c in fire:
                alert, new = self._fire(c)
                firing[c.key] = alert.pk
                if c.subject == GROUP_SUBJECT:
                    self.group_values[c.key] = alert.value
                if new:
                    changed.append((alert, "firing"))
            for key in resolve:
                # A forgotten instance did not recover: saying "resolved" would be false.
                alert = self._resolve(self.evaluator.firing[key], key in forgotten)
                resolved.append(key)
                self.group_values.pop(key, None)
                if alert is not None and key not in forgotten:
                    changed.append((alert, "resolved"))
            limit = notify.RateLimit()
            for alert, event in changed:
                for n in notify.record(alert, event, limit):
                    if n.channel == "bus":
                        out.append((notify.body(alert, event), n.pk))
        self.evaluator.firing.update(firing)
        for key in resolved:
            self.evaluator.resolved(key)
        return out

    @staticmethod
    def _fire(c) -> tuple[Alert, bool]:
        """The firing alert of ``c.key``, and whether we made it (else another judge
        fired it first: it is the firing one, and it has notified)."""
        try:
            with transaction.atomic():
                return Alert.objects.create(rule=c.rule, key=c.key, subject=c.subject,
                                            severity=c.rule.severity, message=c.message,
                                            value=c.value, link=c.link), True
        except IntegrityError:
            return Alert.objects.select_related("rule").get(key=c.key, state=Alert.FIRING), False

    @staticmethod
    def _resolve(pk: int, forgotten: bool = False) -> Alert | None:
        """Resolve alert ``pk``; None when it was not firing any more (another judge
        resolved it, and notified)."""
        now = timezone.now()
        if not Alert.objects.filter(pk=pk, state=Alert.FIRING).update(
                state=Alert.RESOLVED, resolved_at=now):
            return None
        alert = Alert.objects.select_related("rule").get(pk=pk)
        if forgotten:
            alert.message = f"{alert.message} (instance forgotten: silent too long)"[:2000]
            alert.save(update_fields=["message"])
        return alert

    def recount(self, groups: dict) -> None:
        """A grouped alert says how many it stands for now (one row, when it changes)."""
        for key, g in groups.items():
            Alert.objects.filter(pk=self.evaluator.firing[key], state=Alert.FIRING).update(
                message=g.message, value=g.value)
            self.group_values[key] = g.value

    async def flush(self, nc, changed: bool) -> None:
        if not nc.is_connected:
            return
        sent = []
        for body, pk in self.unsent:
            kind = "AlertFiring" if body["state"] == "firing" else "AlertResolved"
            await nc.publish(SUBJECT, envelope.encode(envelope.make(
                kind, SUBJECT, body, sender={"serviceId": "console", "instanceId": "collector"})))
            sent.append(pk)
        self.unsent = []
        if sent:
            await sync_to_async(Notification.objects.filter(pk__in=sent).update)(
                state=Notification.SENT, attempts=1, sent_at=timezone.now())
        if changed:
            await nc.publish(LIVE_NOTIFY, b"")
