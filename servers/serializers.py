"""The servers API's query and answers (strict: an unknown parameter is a 400)."""

from __future__ import annotations

from rest_framework import serializers

from kernel.serializers import StrictBooleanField, StrictSerializer, TextField, WholeNumberField

from .connections import SORTS


class ConnectionQuery(StrictSerializer):
    q = TextField(required=False, allow_blank=True, max_length=200,
                  help_text="substring of the name, address, account or client language")
    sort = serializers.ChoiceField(choices=sorted(SORTS), required=False, error_messages={
        "invalid_choice": "must be one of " + ", ".join(sorted(SORTS))})
    desc = StrictBooleanField(required=False, allow_null=True,
                              help_text="descending; default: the sort's natural direction")
    limit = WholeNumberField(required=False, min_value=1, max_value=1000)
    offset = WholeNumberField(required=False, min_value=0, max_value=10_000_000)


class ServerQuery(StrictSerializer):
    """No parameters."""


class ServerRow(serializers.Serializer):
    """A server's figures; a server that did not answer has ``down``, ``name`` (its
    address) and ``errors`` only."""

    name = serializers.CharField()
    errors = serializers.ListField(child=serializers.CharField())
    down = serializers.BooleanField(required=False)
    origin = serializers.CharField(required=False)
    id = serializers.CharField(required=False)
    version = serializers.CharField(required=False)
    uptime = serializers.CharField(required=False)
    uptime_s = serializers.FloatField(allow_null=True, required=False)
    connections = serializers.IntegerField(allow_null=True, required=False)
    slow_consumers = serializers.IntegerField(allow_null=True, required=False)
    slow_consumers_5m = serializers.IntegerField(required=False)
    mem = serializers.IntegerField(allow_null=True, required=False)
    cpu = serializers.FloatField(allow_null=True, required=False)
    in_msgs_per_s = serializers.FloatField(allow_null=True, required=False)
    out_msgs_per_s = serializers.FloatField(allow_null=True, required=False)
    in_bytes_per_s = serializers.FloatField(allow_null=True, required=False)
    out_bytes_per_s = serializers.FloatField(allow_null=True, required=False)
    jetstream = serializers.DictField(allow_null=True, required=False)
    health = serializers.CharField(required=False)


class ConnectionRow(serializers.Serializer):
    server = serializers.CharField()
    cid = serializers.IntegerField()
    name = serializers.CharField()
    lang = serializers.CharField()
    version = serializers.CharField()
    ip = serializers.CharField()
    port = serializers.IntegerField(allow_null=True)
    account = serializers.CharField()
    subscriptions = serializers.IntegerField()
    pending_bytes = serializers.IntegerField()
    in_msgs = serializers.IntegerField()
    out_msgs = serializers.IntegerField()
    in_msgs_per_s = serializers.FloatField(allow_null=True)
    out_msgs_per_s = serializers.FloatField(allow_null=True)
    rtt_ms = serializers.FloatField(allow_null=True)
    slow = serializers.BooleanField()


class ConnectionPage(serializers.Serializer):
    count = serializers.IntegerField()
    offset = serializers.IntegerField()
    limit = serializers.IntegerField()
    errors = serializers.ListField(child=serializers.CharField())
    truncated = serializers.ListField(child=serializers.CharField())
    results = ConnectionRow(many=True)
