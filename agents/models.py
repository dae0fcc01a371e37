from django.db import models


class ServiceEvent(models.Model):
    """An alert (``lucent.services.<service>.alerts``) or a config update (``.config``)."""

    ALERT, CONFIG = "alert", "config"
    kind = models.CharField(max_length=8, choices=[(ALERT, "alert"), (CONFIG, "config")])
    service = models.CharField(max_length=200, db_index=True)
    instance = models.CharField(max_length=200, blank=True)
    at = models.DateTimeField(db_index=True)
    severity = models.CharField(max_length=40, blank=True)
    message = models.TextField(blank=True)
    payload = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
