"""Request and response bodies of the agents/services API (the command probe)."""

from __future__ import annotations

from rest_framework import serializers

from kernel.serializers import (
    FiniteFloatField,
    StrictSerializer,
    SubjectField,
    TextField,
    WholeNumberField,
)

from .probe import MAX_COUNT, MAX_PAYLOAD, MAX_TIMEOUT_S


class ProbeSerializer(StrictSerializer):
    """``POST /api/v1/probe/``: N requests to a command subject, timed."""

    subject = SubjectField(publish=True, help_text="a command subject (not the bus's own)")
    payload = TextField(required=False, allow_null=True, allow_blank=True,
                        max_length=MAX_PAYLOAD, trim_whitespace=False,
                        help_text="the request body (unset: a PingRequest the services answer)")
    count = WholeNumberField(required=False, allow_null=True, min_value=1, max_value=MAX_COUNT)
    timeout = FiniteFloatField(required=False, allow_null=True, above=0, max_value=MAX_TIMEOUT_S,
                               help_text="seconds per request")


class ProbeReply(serializers.Serializer):
    rtt_ms = serializers.FloatField()


class ProbeResult(serializers.Serializer):
    subject = serializers.CharField()
    count = serializers.IntegerField()
    ok = serializers.IntegerField()
    errors = serializers.IntegerField()
    no_responders = serializers.IntegerField()
    timeouts = serializers.IntegerField()
    p50_ms = serializers.FloatField(allow_null=True)
    p99_ms = serializers.FloatField(allow_null=True)
    max_ms = serializers.FloatField(allow_null=True)
    replies = serializers.ListField(child=serializers.DictField())
