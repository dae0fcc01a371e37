"""Request and response bodies of the stream, dead-letter and job API.

The request serializers are the ones ``manage.py deadletters`` validates its options
with, so the API and the CLI refuse the same values with the same messages.
"""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from lucent_console.serializers import (
    MAX_SEQ,
    FiniteFloatField,
    StrictBooleanField,
    StrictSerializer,
    SubjectField,
    TextField,
    TimeTextField,
    WholeNumberField,
)

from .models import DeadLetter

MAX_RATE = 1e9  # messages per second: far beyond any bus, short of float trouble
MAX_FILTER_TEXT = 512
MAX_PLAN = 20_000  # a signed, compressed dry-run plan (filters + target + upper id)

EVERYTHING_OR_FILTER = ("give a filter, or \"all\": true to mean every one "
                        "(an empty or missing filter is refused)")
EVERYTHING_AND_FILTER = "\"all\": true means every one: give it without filters"


def _optional(field: type[serializers.Field], **kwargs: Any) -> serializers.Field:
    """An optional field that also takes null ("not given")."""
    return field(required=False, allow_null=True, **kwargs)


def _text(**kwargs: Any) -> serializers.Field:
    return _optional(TextField, allow_blank=True, max_length=MAX_FILTER_TEXT, **kwargs)


# ------------------------------------------------------------------ streams

class PurgeSerializer(StrictSerializer):
    """``POST /api/v1/streams/<name>/purge/``: a subject, keep N, below a sequence, or
    ``{"all": true}``; an empty body purges nothing."""

    subject = _optional(SubjectField, allow_blank=True,
                        help_text="only messages on this subject (wildcards allowed)")
    keep = _optional(WholeNumberField, min_value=0, max_value=MAX_SEQ,
                     help_text="keep the newest N messages")
    seq = _optional(WholeNumberField, min_value=1, max_value=MAX_SEQ,
                    help_text="remove the messages below this sequence")
    all = _optional(StrictBooleanField, help_text="purge every message of the stream")

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
    start_seq = _optional(WholeNumberField, min_value=1, max_value=MAX_SEQ)
    end_seq = _optional(WholeNumberField, min_value=1, max_value=MAX_SEQ)
    start_time = _optional(TimeTextField, allow_blank=True, max_length=64)
    subject = _optional(SubjectField, allow_blank=True,
                        help_text="only messages on this subject (wildcards allowed)")
    rate = _optional(FiniteFloatField, above=0, max_value=MAX_RATE,
                     help_text="messages per second; unset: as fast as the bus acks")
    dry_run = _optional(StrictBooleanField)

    def validate(self, data: dict) -> dict:
        if "start_seq" in data and "end_seq" in data and data["end_seq"] < data["start_seq"]:
            raise serializers.ValidationError({"end_seq": ["must not be below start_seq"]})
        return data


# ------------------------------------------------------------------ dead letters

class DeadLetterFilterSerializer(StrictSerializer):
    """The filters of the dead-letter list, bulk replay and bulk purge (dlq.FILTERS)."""

    stream = _text()
    consumer = _text()
    subject_filter = _optional(SubjectField, allow_blank=True,
                               help_text="the original subject (wildcards allowed)")
    message_type = _text()
    correlation_id = _text()
    reason = _text()
    status = _optional(serializers.ChoiceField, choices=[s for s, _ in DeadLetter.STATUSES],
                       allow_blank=True)
    since = _optional(TimeTextField, allow_blank=True, max_length=64)
    until = _optional(TimeTextField, allow_blank=True, max_length=64)
    q = _text(help_text="text search")
    all = _optional(StrictBooleanField, help_text="every dead letter (instead of filters)")
    dry_run = _optional(StrictBooleanField, help_text="count, change nothing; returns a plan")
    plan = _optional(TextField, max_length=MAX_PLAN,
                     help_text="the plan of a dry run: act on exactly what it counted")

    FILTER_KEYS = ("stream", "consumer", "subject_filter", "message_type", "correlation_id",
                   "reason", "status", "since", "until", "q")

    def validate(self, data: dict) -> dict:
        filtered = any(k in data for k in self.FILTER_KEYS)
        if data.get("all") and filtered:
            raise serializers.ValidationError({"all": [EVERYTHING_AND_FILTER]})
        if not data.get("all") and not filtered:
            raise serializers.ValidationError({"all": [EVERYTHING_OR_FILTER]})
        return data

    @classmethod
    def filters(cls, data: dict) -> dict:
        """The validated filters under dlq.FILTERS' names (``subject`` is the filter)."""
        out = {k: v for k, v in data.items() if k in cls.FILTER_KEYS}
        if "subject_filter" in out:
            out["subject"] = out.pop("subject_filter")
        return out


class BulkReplaySerializer(DeadLetterFilterSerializer):
    """``POST /api/v1/deadletters/replay/``: filters (or all) and where to, how fast."""

    subject = _optional(SubjectField, publish=True, replay=True, allow_blank=True,
                        help_text="replay to this subject (unset: each letter's own)")
    rate = _optional(FiniteFloatField, above=0, max_value=MAX_RATE,
                     help_text="messages per second; unset: as fast as the bus acks")
    remove_original = _optional(StrictBooleanField)


class BulkPurgeSerializer(DeadLetterFilterSerializer):
    """``POST /api/v1/deadletters/purge/``: filters (or all). Here ``subject`` filters
    too (as ``subject_filter`` does)."""

    subject = _optional(SubjectField, allow_blank=True,
                        help_text="the original subject (wildcards allowed)")

    def validate(self, data: dict) -> dict:
        if "subject" in data:
            if "subject_filter" in data:
                raise serializers.ValidationError(
                    {"subject": ["give subject or subject_filter, not both"]})
            data["subject_filter"] = data.pop("subject")
        return super().validate(data)


class DeadLetterReplaySerializer(StrictSerializer):
    """``POST /api/v1/deadletters/<id>/replay/``."""

    subject = _optional(SubjectField, publish=True, replay=True, allow_blank=True,
                        help_text="replay to this subject (unset: the original subject)")
    remove_original = _optional(StrictBooleanField)


# ------------------------------------------------------------------ responses (the schema)

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


class JobStarted(serializers.Serializer):
    job = serializers.IntegerField()
    matched = serializers.IntegerField()


class JobOrDryRun(serializers.Serializer):
    """A job started ({"job", "matched"}), or with ``dry_run`` what it would do."""

    job = serializers.IntegerField(required=False)
    matched = serializers.IntegerField()
    dry_run = serializers.BooleanField(required=False)
    targets = serializers.ListField(child=serializers.JSONField(), required=False)
    plan = serializers.CharField(required=False)


class DeadLetterRow(serializers.Serializer):
    id = serializers.IntegerField()
    stream = serializers.CharField()
    stream_seq = serializers.IntegerField(allow_null=True)
    subject = serializers.CharField()
    consumer = serializers.CharField()
    deliveries = serializers.IntegerField(allow_null=True)
    reason = serializers.CharField()
    captured_at = serializers.CharField(allow_null=True)
    message_id = serializers.CharField(allow_null=True)
    correlation_id = serializers.CharField(allow_null=True)
    message_type = serializers.CharField(allow_null=True)
    status = serializers.CharField()


class DeadLetterPage(serializers.Serializer):
    count = serializers.IntegerField()
    next = serializers.CharField(allow_null=True)
    previous = serializers.CharField(allow_null=True)
    results = DeadLetterRow(many=True)


class DeadLetterDetail(DeadLetterRow):
    headers = serializers.JSONField()
    payload = serializers.CharField(allow_null=True)
    payload_encoding = serializers.CharField(allow_null=True)


class Replayed(serializers.Serializer):
    status = serializers.CharField()
    id = serializers.IntegerField()
    subject = serializers.CharField()
    stream = serializers.CharField()
    seq = serializers.IntegerField()
    duplicate = serializers.BooleanField()


class Purged(serializers.Serializer):
    status = serializers.CharField()
    id = serializers.IntegerField()


class JobRow(serializers.Serializer):
    id = serializers.IntegerField()
    kind = serializers.CharField()
    state = serializers.CharField()
    total = serializers.IntegerField()
    done = serializers.IntegerField()
    failed = serializers.IntegerField()
