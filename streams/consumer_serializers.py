"""Request and response bodies of the consumer actions (API, pages and ``manage.py consumer``
validate with these same classes, so a value is refused the same way everywhere).

A consumer config is written with nats-server's JSON names and units (durations in
nanoseconds), exactly as it is sent; see ``lucent_bus/consumers.py`` for the sources.
"""

from __future__ import annotations

from rest_framework import serializers

from kernel.serializers import (
    MAX_SEQ,
    StrictBooleanField,
    StrictSerializer,
    SubjectField,
    TextField,
    TimeTextField,
    WholeNumberField,
    optional,
)

from .serializers import ConsumerRow

MAX_PAUSE_S = 366 * 86400  # a year: longer is a typo, or a delete in disguise
MAX_NS = 2**63 - 1
NAME_FORBIDDEN = set(" .*>\t\r\n/\\")
OWN_HELP = ("the console's own consumers: only an admin who confirms what breaks may "
            "change them")


def valid_name(value: str) -> str:
    if not value or len(value) > 255 or any(c in NAME_FORBIDDEN for c in value) \
            or not value.isprintable():
        raise serializers.ValidationError(
            "a consumer name is 1-255 printable characters without spaces, '.', '*', '>', "
            "'/' or '\\'")
    return value


class NameField(TextField):
    def to_internal_value(self, data) -> str:
        return valid_name(super().to_internal_value(data))


def _ns(**kwargs) -> serializers.Field:
    return optional(WholeNumberField, min_value=0, max_value=MAX_NS, **kwargs)


class PauseSerializer(StrictSerializer):
    """``POST .../pause/``: ``{"until": ISO time}`` or ``{"seconds": N}``."""

    until = optional(TimeTextField, allow_blank=True, max_length=64,
                     help_text="pause until this time (ISO; without a zone: UTC)")
    seconds = optional(WholeNumberField, min_value=1, max_value=MAX_PAUSE_S,
                       help_text="pause for this many seconds")
    confirm_own = optional(StrictBooleanField, help_text=OWN_HELP)

    def validate(self, data: dict) -> dict:
        if ("until" in data) == ("seconds" in data):
            raise serializers.ValidationError("give either until or seconds (one of them)")
        return data


class OwnOnlySerializer(StrictSerializer):
    """``POST .../resume/`` and ``DELETE``: ``{}``, or ``{"confirm_own": true}``."""

    confirm_own = optional(StrictBooleanField, help_text=OWN_HELP)


class ResetSerializer(StrictSerializer):
    """``POST .../reset/``: ``{"seq": N}`` or ``{"time": ISO}``; ``"recreate": true``
    deletes and recreates the durable at that point instead (servers before 2.14)."""

    seq = optional(WholeNumberField, min_value=1, max_value=MAX_SEQ,
                   help_text="the next stream sequence to deliver")
    time = optional(TimeTextField, allow_blank=True, max_length=64,
                    help_text="deliver again from the first message stored at or after this")
    recreate = optional(StrictBooleanField,
                        help_text="delete and recreate the durable there: loses its ack state")
    confirm_own = optional(StrictBooleanField, help_text=OWN_HELP)

    def validate(self, data: dict) -> dict:
        if ("seq" in data) == ("time" in data):
            raise serializers.ValidationError("give either seq or time (one of them)")
        return data


DELIVER = ("all", "last", "new", "by_start_sequence", "by_start_time", "last_per_subject")


class ConsumerConfigSerializer(StrictSerializer):
    """A durable consumer's config, nats-server's JSON names and units (ns durations).

    Create (``POST .../consumers/``): ``durable_name`` required. Edit (``PUT``): the fields
    to change, merged onto the current config. ``dry_run``: only the preview."""

    clearable = frozenset({"description", "filter_subject"})

    durable_name = optional(NameField)
    name = optional(NameField, help_text="if given, the same as durable_name")
    description = optional(TextField, allow_blank=True, max_length=4096)
    deliver_policy = optional(serializers.ChoiceField, choices=DELIVER)
    opt_start_seq = optional(WholeNumberField, min_value=1, max_value=MAX_SEQ)
    opt_start_time = optional(TimeTextField, max_length=64)
    ack_policy = optional(serializers.ChoiceField, choices=("none", "all", "explicit"))
    ack_wait = _ns(help_text="ns")
    max_deliver = optional(WholeNumberField, min_value=-1, max_value=2**31 - 1)
    backoff = optional(serializers.ListField, child=WholeNumberField(min_value=1, max_value=MAX_NS),
                       max_length=100, help_text="ns each")
    filter_subject = optional(SubjectField, allow_blank=True)
    filter_subjects = optional(serializers.ListField, child=SubjectField(), max_length=300)
    replay_policy = optional(serializers.ChoiceField, choices=("instant", "original"))
    rate_limit_bps = optional(WholeNumberField, min_value=0, max_value=MAX_NS)
    sample_freq = optional(TextField, allow_blank=True, max_length=8)
    max_waiting = optional(WholeNumberField, min_value=0, max_value=2**31 - 1)
    max_ack_pending = optional(WholeNumberField, min_value=-1, max_value=2**31 - 1)
    flow_control = optional(StrictBooleanField)
    headers_only = optional(StrictBooleanField)
    max_batch = optional(WholeNumberField, min_value=0, max_value=2**31 - 1)
    max_expires = _ns(help_text="ns")
    max_bytes = optional(WholeNumberField, min_value=0, max_value=2**31 - 1)
    deliver_subject = optional(SubjectField, publish=True, allow_blank=True)
    deliver_group = optional(NameField)
    idle_heartbeat = _ns(help_text="ns")
    inactive_threshold = _ns(help_text="ns")
    num_replicas = optional(WholeNumberField, min_value=0, max_value=5)
    mem_storage = optional(StrictBooleanField)
    metadata = optional(serializers.DictField, child=TextField(max_length=1024, allow_blank=True))
    priority_groups = optional(serializers.ListField, child=NameField(), max_length=16)
    priority_policy = optional(serializers.ChoiceField,
                               choices=("none", "overflow", "pinned_client", "prioritized"))
    priority_timeout = _ns(help_text="ns")
    confirm_own = optional(StrictBooleanField, help_text=OWN_HELP)
    dry_run = optional(StrictBooleanField, help_text="only answer the preview")
    based_on = optional(TextField, max_length=64, help_text=(
        "edit: the preview's based_on (a digest of the config it was made on): applied only "
        "if the consumer's config is still that one, else 409 (nothing changed)"))

    def validate(self, data: dict) -> dict:
        if data.get("name") and data.get("durable_name") and data["name"] != data["durable_name"]:
            raise serializers.ValidationError({"name": ["must be the same as durable_name"]})
        if data.get("filter_subject") and data.get("filter_subjects"):
            raise serializers.ValidationError(
                {"filter_subjects": ["give filter_subject or filter_subjects, not both"]})
        return data


OWN_FIELDS = ("confirm_own", "dry_run")


class ConsumerPauseResult(serializers.Serializer):
    stream = serializers.CharField()
    name = serializers.CharField()
    paused = serializers.BooleanField()
    pause_until = serializers.CharField(allow_null=True)


class ConsumerResetResult(serializers.Serializer):
    stream = serializers.CharField()
    name = serializers.CharField()
    seq = serializers.IntegerField()
    recreated = serializers.BooleanField()


class ConsumerPreview(serializers.Serializer):
    stream = serializers.CharField()
    name = serializers.CharField()
    config = serializers.JSONField(help_text="the config that is (or would be) sent")
    diff = serializers.ListField(child=serializers.JSONField(), required=False,
                                 help_text="for edits: [{field, from, to}]")
    applied = serializers.BooleanField()
    based_on = serializers.CharField(required=False, help_text=(
        "for edits: the digest of the config the preview was made on (send it back to apply)"))


class ConsumerDeleted(serializers.Serializer):
    stream = serializers.CharField()
    name = serializers.CharField()
    deleted = serializers.BooleanField()


class ConsumerRowPaused(ConsumerRow):
    paused = serializers.BooleanField()
    pause_until = serializers.CharField(allow_null=True)
