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
