"""Request and response bodies of the key-value API (``manage.py kv put/del`` validates
its options with the same request serializers)."""

from __future__ import annotations

from rest_framework import serializers

from kernel.serializers import (
    StrictBooleanField,
    StrictSerializer,
    TextField,
    WholeNumberField,
    optional,
)

MAX_VALUE_CHARS = 8 * 1024 * 1024  # beyond any server's max_payload, base64 included


class KvPutSerializer(StrictSerializer):
    """``PUT /api/v1/kv/<bucket>/keys/<key>/``: ``{"value", "encoding"?, "confirm_own"?,
    "revision"?}``."""

    value = TextField(allow_blank=True, trim_whitespace=False, max_length=MAX_VALUE_CHARS,
                      help_text="the value as text, or base64 with \"encoding\": \"base64\"")
    encoding = optional(serializers.ChoiceField, choices=["base64"],
                        help_text='"base64" when value is base64 (binary values)')
    confirm_own = optional(StrictBooleanField,
                           help_text="an admin confirming the warning to change the "
                                     "console's own bucket")
    revision = optional(WholeNumberField, min_value=0, max_value=2**63 - 1,
                        help_text="store only if this is still the key's latest revision "
                                  "(0: only if the key was never written); 409 otherwise")

    def to_internal_value(self, data):
        values = super().to_internal_value(data)
        values.setdefault("value", "")  # an empty value is a value ("" means given here)
        return values


class KvDeleteSerializer(StrictSerializer):
    """``DELETE /api/v1/kv/<bucket>/keys/<key>/``: ``{}``, ``{"confirm_own": true}``,
    ``{"purge": true}``."""

    confirm_own = optional(StrictBooleanField)
    purge = optional(StrictBooleanField, help_text="admin: also remove every earlier revision "
                     "(nats kv purge); a deleted key can be purged too")


class BucketRow(serializers.Serializer):
    bucket = serializers.CharField()
    values = serializers.IntegerField(help_text="stored revisions, delete markers included")
    bytes = serializers.IntegerField()
    history = serializers.IntegerField(allow_null=True, help_text="revisions kept per key; null: all")
    ttl = serializers.FloatField(help_text="seconds a value lives; 0: forever")
    keys = serializers.IntegerField()
    storage = serializers.CharField()
    replicas = serializers.IntegerField()
    own = serializers.CharField(allow_null=True, help_text="the console's own: what breaks")


class KeyRow(serializers.Serializer):
    key = serializers.CharField()
    revision = serializers.IntegerField()
    operation = serializers.ChoiceField(choices=["PUT", "DEL", "PURGE"])
    created = serializers.CharField()
    revisions = serializers.IntegerField()
    size = serializers.IntegerField()


class KeyPage(serializers.Serializer):
    count = serializers.IntegerField()
    next = serializers.CharField(allow_null=True)
    previous = serializers.CharField(allow_null=True)
    results = KeyRow(many=True)


class Revision(serializers.Serializer):
    revision = serializers.IntegerField()
    value = serializers.CharField(allow_null=True)
    encoding = serializers.CharField(allow_null=True)
    operation = serializers.ChoiceField(choices=["PUT", "DEL", "PURGE"])
    created = serializers.CharField()
    user = serializers.CharField(allow_null=True, help_text="who, for writes by the console")
    size = serializers.IntegerField()
    clipped = serializers.BooleanField()


class KeyDetail(Revision):
    bucket = serializers.CharField()
    key = serializers.CharField()
    history = Revision(many=True)


class KvWritten(serializers.Serializer):
    bucket = serializers.CharField()
    key = serializers.CharField()
    revision = serializers.IntegerField()
    operation = serializers.CharField()
