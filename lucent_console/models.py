from django.db import models
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
