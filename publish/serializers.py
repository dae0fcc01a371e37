"""``POST /api/v1/publish/``: the request body and the answer."""

from __future__ import annotations

from rest_framework import serializers

from kernel.headers import MAX_PAYLOAD
from kernel.serializers import (
    StrictBooleanField,
    StrictSerializer,
    SubjectField,
    TextField,
    WholeNumberField,
    optional,
)

from .sending import MAX_TIMEOUT_MS


class PublishSerializer(StrictSerializer):
    subject = SubjectField(publish=True, help_text="where to publish (not the bus's own subjects)")
    payload = TextField(allow_blank=True, trim_whitespace=False, max_length=2 * MAX_PAYLOAD,
                        help_text="the message body: text, or base64 with payload_encoding")
    payload_encoding = optional(serializers.ChoiceField, choices=["text", "base64"])
    headers = optional(serializers.DictField, child=TextField(allow_blank=True,
                                                              trim_whitespace=False),
                       help_text="message headers, names to one-line values")
    request = optional(StrictBooleanField, help_text="send a request and wait for its reply")
    timeout_ms = optional(WholeNumberField, min_value=1, max_value=MAX_TIMEOUT_MS,
                          help_text="how long a request waits for its reply")
    confirm_own = optional(StrictBooleanField, help_text=(
        "an admin confirms writing into the console's own DEAD_LETTERS stream"))


class ReplySerializer(serializers.Serializer):
    subject = serializers.CharField()
    headers = serializers.DictField(child=serializers.CharField())
    payload = serializers.CharField()
    payload_encoding = serializers.CharField()


class Sent(serializers.Serializer):
    subject = serializers.CharField()
    bytes = serializers.IntegerField()
    sha256 = serializers.CharField()
    ms = serializers.FloatField()
    stream = serializers.CharField(required=False, help_text="the stream that stored it")
    seq = serializers.IntegerField(required=False)
    duplicate = serializers.BooleanField(required=False)
    reply = ReplySerializer(required=False)
    pub_ack = serializers.DictField(required=False, help_text=(
        "the reply was this stream's PubAck, not a service's answer"))
