"""Request and response bodies of the alert API."""

from __future__ import annotations

from rest_framework import serializers

from kernel.serializers import StrictSerializer, WholeNumberField

from .actions import MAX_SILENCE_MIN


class SilenceSerializer(StrictSerializer):
    """``POST /api/v1/alerts/<id>/silence/``: for how long (an hour if not said)."""

    minutes = WholeNumberField(required=False, min_value=1, max_value=MAX_SILENCE_MIN,
                               default=60, help_text=f"1..{MAX_SILENCE_MIN} (a week)")


class AlertActionSerializer(SilenceSerializer):
    """The body of either action as the schema shows it (``ack`` takes ``{}``)."""


class AlertRow(serializers.Serializer):
    id = serializers.IntegerField()
    rule = serializers.CharField()
    kind = serializers.CharField()
    severity = serializers.CharField()
    state = serializers.CharField()
    subject = serializers.CharField(allow_blank=True)
    message = serializers.CharField(allow_blank=True)
    value = serializers.FloatField(allow_null=True)
    link = serializers.CharField(allow_blank=True, allow_null=True)
    started_at = serializers.CharField()
    resolved_at = serializers.CharField(allow_null=True)
    acknowledged_by = serializers.CharField(allow_null=True)
    silenced_until = serializers.CharField(allow_null=True)


class AlertPage(serializers.Serializer):
    count = serializers.IntegerField()
    next = serializers.CharField(allow_null=True)
    previous = serializers.CharField(allow_null=True)
    results = AlertRow(many=True)
