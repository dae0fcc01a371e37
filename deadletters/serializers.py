"""Request and response bodies of the dead-letter and job API, shared with ``manage.py deadletters``."""

from __future__ import annotations

from rest_framework import serializers

from kernel.actions import ActionError
from kernel.serializers import (
    FiniteFloatField,
    StrictBooleanField,
    StrictSerializer,
    SubjectField,
    TextField,
    TimeTextField,
    optional,
    optional_text,
)

from . import edits
from .models import DeadLetter
from .search import MAX_IDS

MAX_RATE = 1e9  # messages per second: far beyond any bus, short of float trouble

MAX_FILTER_TEXT = 512

MAX_PLAN = 20_000  # a signed, compressed dry-run plan (filters + target + upper id)

EVERYTHING_OR_FILTER = ("give a filter, or \"all\": true to mean every one "
                        "(an empty or missing filter is refused)")

EVERYTHING_AND_FILTER = "\"all\": true means every one: give it without filters"



class DeadLetterFilterSerializer(StrictSerializer):
    """The filters of the dead-letter list, bulk replay and bulk purge (search.FILTERS)."""

    stream = optional_text()
    consumer = optional_text()
    subject_filter = optional(SubjectField, allow_blank=True,
                               help_text="the original subject (wildcards allowed)")
    message_type = optional_text()
    correlation_id = optional_text()
    reason = optional_text()
    status = optional(serializers.ChoiceField, choices=[s for s, _ in DeadLetter.STATUSES],
                       allow_blank=True)
    since = optional(TimeTextField, allow_blank=True, max_length=64)
    until = optional(TimeTextField, allow_blank=True, max_length=64)
    q = optional_text(help_text="text search")
    ids = optional(serializers.ListField, child=serializers.IntegerField(min_value=1),
                   allow_empty=False, max_length=MAX_IDS,
                   help_text="exactly these dead letters (a selection), by id")
    all = optional(StrictBooleanField, help_text="every dead letter (instead of filters)")
    dry_run = optional(StrictBooleanField, help_text="count, change nothing; returns a plan")
    plan = optional(TextField, max_length=MAX_PLAN,
                     help_text="the plan of a dry run: act on exactly what it counted")

    FILTER_KEYS = ("stream", "consumer", "subject_filter", "message_type", "correlation_id",
                   "reason", "status", "since", "until", "q", "ids")

    def validate(self, data: dict) -> dict:
        filtered = any(k in data for k in self.FILTER_KEYS)
        if data.get("all") and filtered:
            raise serializers.ValidationError({"all": [EVERYTHING_AND_FILTER]})
        if not data.get("all") and not filtered:
            raise serializers.ValidationError({"all": [EVERYTHING_OR_FILTER]})
        return data

    @classmethod
    def filters(cls, data: dict) -> dict:
        """The validated filters under search.FILTERS' names (``subject`` is the filter)."""
        out = {k: v for k, v in data.items() if k in cls.FILTER_KEYS}
        if "subject_filter" in out:
            out["subject"] = out.pop("subject_filter")
        return out



class BulkReplaySerializer(DeadLetterFilterSerializer):
    """``POST /api/v1/deadletters/replay/``: filters (or all) and where to, how fast."""

    subject = optional(SubjectField, publish=True, replay=True, allow_blank=True,
                        help_text="replay to this subject (unset: each letter's own)")
    rate = optional(FiniteFloatField, above=0, max_value=MAX_RATE,
                     help_text="messages per second; unset: as fast as the bus acks")
    remove_original = optional(StrictBooleanField)



class BulkPurgeSerializer(DeadLetterFilterSerializer):
    """``POST /api/v1/deadletters/purge/``: filters (or all). Here ``subject`` filters
    too (as ``subject_filter`` does)."""

    subject = optional(SubjectField, allow_blank=True,
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

    subject = optional(SubjectField, publish=True, replay=True, allow_blank=True,
                        help_text="replay to this subject (unset: the original subject)")
    remove_original = optional(StrictBooleanField)
    payload = optional(TextField, allow_blank=True, trim_whitespace=False,
                       max_length=2 * 1024 * 1024,
                       help_text="edit: send this payload instead of the stored one")
    payload_encoding = optional(serializers.ChoiceField, choices=["text", "base64"],
                                help_text="of an edited payload (default text)")
    headers = optional(serializers.DictField, child=TextField(allow_blank=True,
                                                              trim_whitespace=False),
                       help_text="edit: send these headers instead of the stored ones")

    def validate(self, data):
        # The edit's own rules (sizes, header names, reserved headers) in one place,
        # shared with the page: edits.parse raises ActionError, a 400 here.
        try:
            data["edit"] = edits.parse(data.get("payload"), data.get("payload_encoding"),
                                       data.get("headers"))
        except ActionError as exc:
            raise serializers.ValidationError({"edit": [str(exc)]}) from None
        return data




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
    count = serializers.IntegerField(help_text="at most 10,000: see count_capped")
    count_capped = serializers.BooleanField(help_text="the count stopped at its cap: at least this many")
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
    edit_sha256 = serializers.CharField(
        required=False, help_text="an edited replay: the digest of the message sent")



class Purged(serializers.Serializer):
    status = serializers.CharField()
    id = serializers.IntegerField()
