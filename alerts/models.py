"""Alert rules, the alerts they raise (one row per firing, kept as history),
silences, webhooks and every notification sent."""

from __future__ import annotations

import fnmatch
import re

from django.conf import settings
from django.db import models
from django.utils import timezone

SEVERITIES = [("warning", "warning"), ("critical", "critical")]
RANK = {"warning": 1, "critical": 2}


class Rule(models.Model):
    """What to watch, with its threshold, for how long, and how bad it is.

    ``target`` is a glob on what the rule looks at (a stream, ``STREAM/consumer``,
    an agent kind, ``service/instance``, a server name); ``*`` is everything."""

    CONSUMER_PENDING = "consumer_pending"
    CONSUMER_STALLED = "consumer_stalled"
    ACK_PENDING_NEAR_MAX = "ack_pending_near_max"
    DEADLETTER_RATE = "deadletter_rate"
    STREAM_USAGE = "stream_usage"
    INTEREST_NO_CONSUMERS = "interest_no_consumers"
    REPLICA = "replica"
    AGENT = "agent"
    SERVICE_STALE = "service_stale"
    SERVICE_DOWN = "service_down"
    BUS = "bus"
    SLOW_CONSUMERS = "slow_consumers"
    SERVER_JS_LIMIT = "server_js_limit"
    CONSUMER_PAUSE = "consumer_pause"
    KINDS = [(k, k.replace("_", " ")) for k in (
        CONSUMER_PENDING, CONSUMER_STALLED, ACK_PENDING_NEAR_MAX, DEADLETTER_RATE, STREAM_USAGE,
        INTEREST_NO_CONSUMERS, REPLICA, AGENT, SERVICE_STALE, SERVICE_DOWN, BUS,
        SLOW_CONSUMERS, SERVER_JS_LIMIT, CONSUMER_PAUSE)]

    name = models.SlugField(max_length=100, unique=True)
    kind = models.CharField(max_length=32, choices=KINDS)
    target = models.CharField(max_length=300, default="*",
                              help_text="glob on the stream, STREAM/consumer, agent, service or server")
    threshold = models.FloatField(null=True, blank=True, help_text="see the rule's description")
    for_s = models.FloatField(default=0, help_text="seconds the condition must hold before firing")
    severity = models.CharField(max_length=16, choices=SEVERITIES, default="warning")
    enabled = models.BooleanField(default=True)
    description = models.TextField(blank=True)

    class Meta:
        ordering = ["kind", "name"]

    def __str__(self) -> str:
        return self.name

    def matches(self, target: str) -> bool:
        return self.target in ("", "*") or bool(target_glob(self.target).match(target))


_GLOBS: dict[str, re.Pattern] = {}


def target_glob(pattern: str) -> re.Pattern:
    compiled = _GLOBS.get(pattern)
    if compiled is None:
        compiled = _GLOBS[pattern] = re.compile(fnmatch.translate(pattern))
    return compiled


class Alert(models.Model):
    FIRING, RESOLVED = "firing", "resolved"

    rule = models.ForeignKey(Rule, on_delete=models.CASCADE, related_name="alerts")
    key = models.CharField(max_length=400, db_index=True)  # rule name + subject: one condition
    subject = models.CharField(max_length=400)  # what the alert is about
    severity = models.CharField(max_length=16, choices=SEVERITIES)
    state = models.CharField(max_length=16, default=FIRING, db_index=True,
                             choices=[(FIRING, FIRING), (RESOLVED, RESOLVED)])
    message = models.TextField()
    value = models.FloatField(null=True)
    link = models.CharField(max_length=500, blank=True)  # the page that explains it
    started_at = models.DateTimeField(default=timezone.now, db_index=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                        on_delete=models.SET_NULL)
    acknowledged_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        # Two judges at once (a leader's last sweep, the bus judge of another collector)
        # must not both fire one condition: the second insert fails and adopts the first.
        constraints = [models.UniqueConstraint(fields=["key"], condition=models.Q(state="firing"),
                                               name="one_firing_alert_per_key")]

    def __str__(self) -> str:
        return f"{self.severity} {self.rule.name}: {self.subject} ({self.state})"

    @property
    def silenced_until(self):
        return Silence.active_until(self.key)


class Silence(models.Model):
    """No notifications for this alert key until ``until``."""

    key = models.CharField(max_length=400, db_index=True)
    until = models.DateTimeField()
    by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    @classmethod
    def active_until(cls, key: str):
        return (cls.objects.filter(key=key, until__gt=timezone.now())
                .order_by("-until").values_list("until", flat=True).first())


class Webhook(models.Model):
    JSON, SLACK = "json", "slack"

    name = models.CharField(max_length=100)
    url = models.URLField(max_length=500)
    kind = models.CharField(max_length=16, default=JSON,
                            choices=[(JSON, "generic JSON"), (SLACK, "Slack-compatible text")])
    min_severity = models.CharField(max_length=16, choices=SEVERITIES, default="warning")
    enabled = models.BooleanField(default=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"

    def wants(self, severity: str) -> bool:
        return self.enabled and RANK.get(severity, 0) >= RANK[self.min_severity]


class Notification(models.Model):
    """One notification of a transition; or (``suppressed``) the transitions of one rule
    over its per-minute limit (``LUCENT_NOTIFY_PER_RULE_PER_MIN``), ``count`` of them,
    one row per rule and minute, that nobody was told about."""

    PENDING, SENT, FAILED, SUPPRESSED = "pending", "sent", "failed", "suppressed"

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="notifications")
    event = models.CharField(max_length=16)  # firing | resolved
    channel = models.CharField(max_length=120)  # "bus" or "webhook:<name>"
    webhook = models.ForeignKey(Webhook, null=True, blank=True, on_delete=models.SET_NULL)
    state = models.CharField(max_length=16, default=PENDING,
                             choices=[(s, s) for s in (PENDING, SENT, FAILED, SUPPRESSED)])
    count = models.IntegerField(default=1)  # transitions this row stands for (suppressed)
    attempts = models.IntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    # A webhook notification's next attempt is due then; one still pending well past it
    # has lost its task (a broker away, a worker killed): notify.resume_pending queues it.
    due_at = models.DateTimeField(null=True, blank=True)
    # Held by the runner making an attempt (one at a time: two would send it twice).
    claimed_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["due_at"], condition=models.Q(state="pending"),
                                name="alerts_notification_due")]
