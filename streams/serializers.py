"""Request and response bodies of the stream, dead-letter and job API.

The request serializers are the ones ``manage.py deadletters`` validates its options
with, so the API and the CLI refuse the same values with the same messages.
"""


from __future__ import annotations

from rest_framework import serializers

from kernel.serializers import (
    MAX_SEQ,
    FiniteFloatField,
    StrictBooleanField,
    StrictSerializer,
    SubjectField,
    TimeTextField,
    WholeNumberField,
    optional,
)

MAX_RATE = 1e9  # messages per second: far beyond any bus, short of float trouble

EVERYTHING_OR_FILTER = ("give a filter, or \"all\": true to mean every one "
                        "(an empty or missing filter is refused)")

EVERYTHING_AND_FILTER = "\"all\": true means every one: give it without filters"



class PurgeSerializer(StrictSerializer):
    """``POST /api/v1/streams/<name>/purge/``: a subject, keep N, below a sequence, or
    ``{"all": true}``; an empty body purges nothing."""

    subject = optional(SubjectField, allow_blank=True,
                        help_text="only messages on this subject (wildcards allowed)")
    keep = optional(WholeNumberField, min_value=0, max_value=MAX_SEQ,
                     help_text="keep the newest N messages")
    seq = optional(WholeNumberField, min_value=1, max_value=MAX_SEQ,
                    help_text="remove the messages below this sequence")
    all = optional(StrictBooleanField, help_text="purge every message of the stream")
    confirm_own = optional(StrictBooleanField,
                           help_text="needed to purge one of the console's own streams")

    def validate(self, data: dict) -> dict:
        if "keep" in data and "seq" in data:
            raise serializers.ValidationError("give either keep or seq, not both")
        narrowed = any(k in data for k in ("subject", "keep", "seq"))
        if data.get("all") and narrowed:
            raise serializers.ValidationError({"all": [EVERYTHING_AND_FILTER]})
        if not data.get("all") and not narrowed:
            raise serializers.ValidationError({"all": [
                "give subject, keep or seq, or \"all\": true to purge every message "
                "(an empty body is refused)"]})
        return data



class StreamReplaySerializer(StrictSerializer):
    """``POST /api/v1/streams/<name>/replay/``: a range of the stream to ``target``."""

    target = SubjectField(publish=True, replay=True, help_text="the subject to replay to")
    start_seq = optional(WholeNumberField, min_value=1, max_value=MAX_SEQ)
    end_seq = optional(WholeNumberField, min_value=1, max_value=MAX_SEQ)
    start_time = optional(TimeTextField, allow_blank=True, max_length=64)
    subject = optional(SubjectField, allow_blank=True,
                        help_text="only messages on this subject (wildcards allowed)")
    rate = optional(FiniteFloatField, above=0, max_value=MAX_RATE,
                     help_text="messages per second; unset: as fast as the bus acks")
    dry_run = optional(StrictBooleanField)

    def validate(self, data: dict) -> dict:
        if "start_seq" in data and "end_seq" in data and data["end_seq"] < data["start_seq"]:
            raise serializers.ValidationError({"end_seq": ["must not be below start_seq"]})
        return data



class PurgeResult(serializers.Serializer):
    purged = serializers.IntegerField()
    stream = serializers.CharField()



class DeleteResult(serializers.Serializer):
    deleted = serializers.IntegerField()
    stream = serializers.CharField()



class StreamRow(serializers.Serializer):
    name = serializers.CharField()
    subjects = serializers.ListField(child=serializers.CharField())
    retention = serializers.CharField()
    storage = serializers.CharField()
    replicas = serializers.IntegerField()
    messages = serializers.IntegerField()
    bytes = serializers.IntegerField()
    first_seq = serializers.IntegerField()
    last_seq = serializers.IntegerField()
    consumer_count = serializers.IntegerField()



class ConsumerRow(serializers.Serializer):
    name = serializers.CharField()
    stream = serializers.CharField()
    num_pending = serializers.IntegerField()
    num_ack_pending = serializers.IntegerField()
    num_redelivered = serializers.IntegerField()
    num_waiting = serializers.IntegerField()
    delivered_stream_seq = serializers.IntegerField()
    ack_floor_stream_seq = serializers.IntegerField()
    max_deliver = serializers.IntegerField()



class StreamDetail(StreamRow):
    consumers = ConsumerRow(many=True)
    cluster = serializers.JSONField(allow_null=True)



class StreamPage(serializers.Serializer):
    count = serializers.IntegerField()
    next = serializers.CharField(allow_null=True)
    previous = serializers.CharField(allow_null=True)
    results = StreamRow(many=True)
