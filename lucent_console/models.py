from datetime import timedelta

from django.db import models
from django.db.models import Q
from django.utils import timezone

ROLES = ("viewer", "operator", "admin")


class Heartbeat(models.Model):
    """Last sign of life of a background component (collector, Celery beat/worker).

    /healthz reads these so that one web process can tell whether the rest of
    the tree is alive, whatever process or machine it runs on.
    """

    component = models.CharField(max_length=64, unique=True)
    at = models.DateTimeField(default=timezone.now)
    detail = models.JSONField(default=dict, blank=True)

    def __str__(self) -> str:
        return f"{self.component} at {self.at:%H:%M:%S}"

    @classmethod
    def beat(cls, component: str, **detail) -> None:
        cls.objects.update_or_create(
            component=component, defaults={"at": timezone.now(), "detail": detail}
        )

    def age_seconds(self) -> float:
        return (timezone.now() - self.at).total_seconds()


class AuditRecord(models.Model):
    """Who did what to which target, with which parameters, and how it ended.

    Written by the service layer for every action, refused and failed ones
    included (outcome ``refused`` / ``failed``): a refused action changes
    nothing but the audit trail.
    """

    OUTCOMES = [("ok", "ok"), ("refused", "refused"), ("failed", "failed")]

    at = models.DateTimeField(default=timezone.now, db_index=True)
    user = models.ForeignKey("auth.User", null=True, blank=True, on_delete=models.SET_NULL)
    username = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=64)
    target = models.CharField(max_length=512)
    parameters = models.JSONField(default=dict, blank=True)
    outcome = models.CharField(max_length=16, choices=OUTCOMES)
    detail = models.TextField(blank=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.username} {self.action} {self.target}: {self.outcome}"


class Lease(models.Model):
    """A lease in the database: one holder at a time among processes on any machines.

    Leadership lives on the bus (``bus.lease``); this one is for work that must go on
    when the bus cannot be reached, such as judging the bus-unreachable alert. Taken
    by a conditional update, so of several claimants at once exactly one succeeds.
    """

    name = models.CharField(max_length=64, unique=True)
    owner = models.CharField(max_length=200, blank=True)
    until = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.name}: {self.owner or 'free'} until {self.until:%H:%M:%S}"

    @classmethod
    def claim(cls, name: str, owner: str, ttl: float) -> bool:
        """Take or renew the lease for ``ttl`` seconds; False while another holds it."""
        now = timezone.now()
        cls.objects.get_or_create(name=name, defaults={"until": now})
        free_or_ours = Q(until__lt=now) | Q(owner=owner)
        return cls.objects.filter(free_or_ours, name=name).update(
            owner=owner, until=now + timedelta(seconds=ttl)) == 1

    @classmethod
    def release(cls, name: str, owner: str) -> None:
        cls.objects.filter(name=name, owner=owner).update(owner="", until=timezone.now())
