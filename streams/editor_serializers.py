"""Request bodies of the stream editor: a stream config with NATS JSON names.

The API (``POST /api/v1/streams/``, ``PUT``/``DELETE /api/v1/streams/<s>/``), the
pages and ``manage.py stream`` validate with these, so a value is refused the same
way wherever it comes from. Durations are nanoseconds, as in the NATS JSON API.
Fields the console does not edit (mirror, sources, placement, republish, ...) are
unknown here: refused on create, and kept as they are on an edit.
"""

from __future__ import annotations

import re

from rest_framework import serializers

from kernel.serializers import (
    MAX_SEQ,
    StrictBooleanField,
    StrictSerializer,
    SubjectField,
    TextField,
    WholeNumberField,
    optional,
)

MAX_NAME = 255  # what nats-server accepts for a stream name
NAME = re.compile(r"^[^\s.*>/\\\x00-\x1f\x7f]+$")
MAX_SUBJECTS = 1000
INT32 = 2**31 - 1


class StreamNameField(TextField):
    """A stream name: printable, no whitespace, ``.``, ``*``, ``>`` or path separators."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("max_length", MAX_NAME)
        super().__init__(**kwargs)

    def to_internal_value(self, data) -> str:
        value = super().to_internal_value(data)
        if value and not NAME.match(value):
            raise serializers.ValidationError(
                f"{value[:80]!r} is not a stream name (no spaces, '.', '*', '>', '/' or '\\')")
        return value


def limit(minimum: int = -1, maximum: int = MAX_SEQ, **kwargs) -> serializers.Field:
    return optional(WholeNumberField, min_value=minimum, max_value=maximum, **kwargs)


def flag(help_text: str = "") -> serializers.Field:
    return optional(StrictBooleanField, help_text=help_text)


class StreamConfigSerializer(StrictSerializer):
    """A stream config (create: ``name`` and ``subjects`` needed; edit: the fields to
    change, the others kept) plus the editor's controls ``dry_run`` and the
    confirmations ``confirm_lint``, ``confirm_declared``, ``confirm_own``."""

    clearable = frozenset({"description"})

    name = optional(StreamNameField)
    description = optional(TextField, allow_blank=True, max_length=4096)
    subjects = serializers.ListField(child=SubjectField(), required=False, allow_null=True,
                                     max_length=MAX_SUBJECTS)
    retention = optional(serializers.ChoiceField, choices=["limits", "interest", "workqueue"])
    storage = optional(serializers.ChoiceField, choices=["file", "memory"])
    num_replicas = optional(WholeNumberField, min_value=1, max_value=5)
    max_consumers = limit()
    max_msgs = limit()
    max_bytes = limit()
    max_msgs_per_subject = limit()
    max_msg_size = limit(maximum=INT32)
    max_age = limit(minimum=0, help_text="nanoseconds; 0: no limit")
    duplicate_window = limit(minimum=0, help_text="nanoseconds")
    discard = optional(serializers.ChoiceField, choices=["old", "new"])
    discard_new_per_subject = flag()
    no_ack = flag("the stream does not answer publishes (request/reply subjects)")
    allow_direct = flag()
    allow_rollup_hdrs = flag()
    deny_delete = flag()
    deny_purge = flag()
    compression = optional(serializers.ChoiceField, choices=["none", "s2"])
    allow_msg_ttl = flag("per-message TTL (nats-server 2.11+)")
    subject_delete_marker_ttl = limit(minimum=0, help_text="nanoseconds (nats-server 2.11+)")
    allow_msg_counter = flag("counters (nats-server 2.12+)")
    allow_msg_schedules = flag("message schedules (nats-server 2.12+)")
    dry_run = flag("return the lint findings and the diff, apply nothing")
    confirm_lint = flag("apply although the lint found errors")
    confirm_declared = flag("apply although it moves a declared stream from its declaration")
    confirm_own = flag("apply to one of the console's own streams")
    based_on = optional(TextField, max_length=64, help_text=(
        "edit: the dry run's based_on (a digest of the config it was planned on): applied "
        "only if the stream's config is still that one, else 409 (nothing changed)"))

    def validate(self, data: dict) -> dict:
        if self.context.get("create"):
            missing = [k for k in ("name", "subjects") if not data.get(k)]
            if missing:
                raise serializers.ValidationError({k: ["needed to create a stream"]
                                                   for k in missing})
        elif "name" in data and data["name"] != self.context.get("name"):
            raise serializers.ValidationError({"name": [
                "a stream cannot be renamed: the name must be the stream's own or left out"]})
        if "subjects" in data and len(set(data["subjects"])) != len(data["subjects"]):
            raise serializers.ValidationError({"subjects": ["a subject is listed twice"]})
        return data


CONTROLS = ("dry_run", "confirm_lint", "confirm_declared", "confirm_own", "based_on")


class StreamDeleteSerializer(StrictSerializer):
    """``DELETE /api/v1/streams/<s>/``: ``{}``, or the confirmations a declared or the
    console's own stream needs; ``dry_run`` says what would be deleted."""

    dry_run = flag()
    confirm_declared = flag()
    confirm_own = flag()


class OwnConfirmSerializer(StrictSerializer):
    """``DELETE /api/v1/streams/<s>/messages/<seq>/``: ``{}``, or ``{"confirm_own": true}``
    on one of the console's own streams."""

    confirm_own = flag()


class PlanResult(serializers.Serializer):
    stream = serializers.CharField()
    action = serializers.CharField()
    applied = serializers.BooleanField()
    config = serializers.JSONField()
    diff = serializers.ListField(child=serializers.JSONField())
    findings = serializers.ListField(child=serializers.JSONField())
    declared = serializers.BooleanField()
    own = serializers.CharField(allow_null=True)
    needs = serializers.ListField(child=serializers.CharField())
    based_on = serializers.CharField(allow_null=True, required=False, help_text=(
        "an edit's: the digest of the live config it was planned on (send it back to apply)"))
