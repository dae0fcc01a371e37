"""What every request body shares: strict serializers, field types, the audited check.

A body must be a JSON object of the documented fields. Anything else (a list, a
string, a wrong type, a non-finite or out-of-range number, a key nobody declared)
answers 400 naming the field, changes nothing, and is audited like any other attempt:
the API views, the pages that share a serializer and ``manage.py deadletters`` all
call ``check`` with the same serializer, so a value is refused the same way
wherever it comes from.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from django.http.request import RawPostDataException
from rest_framework import serializers
from rest_framework.exceptions import ErrorDetail, ParseError, UnsupportedMediaType
from rest_framework.settings import api_settings

from lucent_bus import subjects

from .actions import ActionError, audited

RAW_BODY_CHARS = 500  # what the audit keeps of a body that did not validate
MAX_SUBJECT = 1024  # longer than any subject the topology declares, short enough to log
MAX_SEQ = 2**63 - 1  # JetStream sequences are uint64; the JSON API takes int64 safely


class InvalidRequest(ActionError):
    """A body that did not validate: 400 with the messages by field."""

    def __init__(self, fields: dict[str, list[str]]) -> None:
        self.fields = fields
        super().__init__("invalid request: " + "; ".join(
            (f"{name}: " if name != api_settings.NON_FIELD_ERRORS_KEY else "") + " ".join(msgs)
            for name, msgs in fields.items()))


def _messages(detail: Any) -> list[str]:
    """DRF's nested error structure, flattened to plain messages."""
    if isinstance(detail, (str, ErrorDetail)):
        return [str(detail)]
    if isinstance(detail, Mapping):
        return [f"{key}: {msg}" for key, value in detail.items() for msg in _messages(value)]
    if isinstance(detail, (list, tuple)):
        return [msg for item in detail for msg in _messages(item)]
    return [str(detail)]


def field_errors(errors: Any) -> dict[str, list[str]]:
    if isinstance(errors, Mapping):
        return {str(name): _messages(value) for name, value in errors.items()}
    return {api_settings.NON_FIELD_ERRORS_KEY: _messages(errors)}


# ------------------------------------------------------------------ field types

def _finite(value: float) -> None:
    # DRF's FloatField refuses inf/nan itself today; the check is kept here because a
    # non-finite number reaching the service (rate, timeout) or the audit's JSON field
    # is exactly the failure this module exists to prevent.
    if not math.isfinite(value):
        raise serializers.ValidationError("must be a finite number")


class FiniteFloatField(serializers.FloatField):
    default_error_messages = {
        "invalid": "must be a number",
        "max_value": "must be at most {max_value}",
        "min_value": "must be at least {min_value}",
    }

    def __init__(self, *, above: float | None = None, **kwargs: Any) -> None:
        """``above``: an exclusive lower bound (a rate or a timeout of 0 means nothing)."""
        self.above = above
        super().__init__(**kwargs)
        self.validators.append(_finite)
        if above is not None:
            self.validators.append(self._above)

    def to_internal_value(self, data: Any) -> float:
        if isinstance(data, bool):  # float(True) is 1.0: a boolean is not a number here
            self.fail("invalid")
        return super().to_internal_value(data)

    def _above(self, value: float) -> None:
        if not value > self.above:
            raise serializers.ValidationError(f"must be above {self.above:g}")


class WholeNumberField(serializers.IntegerField):
    default_error_messages = {
        "invalid": "must be a whole number",
        "max_value": "must be at most {max_value}",
        "min_value": "must be at least {min_value}",
        "max_string_length": "must be a whole number (too long)",
    }

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool):
            self.fail("invalid")
        if isinstance(data, float) and not math.isfinite(data):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """true/false (and the form spellings DRF knows); never a list, a dict or 2."""

    default_error_messages = {"invalid": "must be true or false"}


class TextField(serializers.CharField):
    """A string, never a number or a structure coerced into one."""

    default_error_messages = {"invalid": "must be a string"}

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class SubjectField(TextField):
    """A NATS subject: a filter (wildcards allowed) or a subject one publishes to
    (``publish=True``: no wildcards, and none of the bus's own subjects)."""

    def __init__(self, *, publish: bool = False, replay: bool = False, **kwargs: Any) -> None:
        self.publish, self.replay = publish, replay
        kwargs.setdefault("max_length", MAX_SUBJECT)
        kwargs.setdefault("trim_whitespace", True)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        value = super().to_internal_value(data)
        if value == "":
            return value
        if not subjects.is_valid(value, wildcards=not self.publish):
            raise serializers.ValidationError(
                f"{value[:80]!r} is not a subject one can publish to" if self.publish
                else f"{value[:80]!r} is not a valid subject")
        if self.publish:
            reason = subjects.reserved(value, replay=self.replay)
            if reason:
                raise serializers.ValidationError(reason)
        return value


class TimeTextField(TextField):
    """An ISO time, kept as the text given (job parameters are JSON), checked here."""

    def to_internal_value(self, data: Any) -> str:
        value = super().to_internal_value(data)
        if value:
            try:
                datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise serializers.ValidationError(
                    f"{value[:40]!r} is not a time (use 2026-11-26T10:30)") from None
        return value


# ------------------------------------------------------------------ serializers

class StrictSerializer(serializers.Serializer):
    """A JSON object of the declared fields only: an unknown key is an error, not ignored
    (a misspelt ``subjet`` must not turn a filtered purge into a purge of everything).

    null and "" mean "not given", except for the text fields named in ``clearable``,
    where "" clears the value (an edit's description, a consumer's filter)."""

    clearable: frozenset[str] = frozenset()

    def to_internal_value(self, data: Any) -> dict:
        if not isinstance(data, Mapping):
            raise serializers.ValidationError({api_settings.NON_FIELD_ERRORS_KEY: [
                f"the body must be a JSON object, not {type(data).__name__}"]})
        # A session client's form post carries Django's CSRF token: not a field, not unknown.
        unknown = [key for key in data if key not in self.fields
                   and key != "csrfmiddlewaretoken"]
        if unknown:
            raise serializers.ValidationError(
                {str(key)[:80]: ["unknown field"] for key in unknown[:20]})
        if "csrfmiddlewaretoken" in data:
            data = {k: v for k, v in data.items() if k != "csrfmiddlewaretoken"}
        values = super().to_internal_value(data)
        # null and "" mean "not given": validate() and the services see only given values.
        return {k: v for k, v in values.items()
                if v is not None and (v != "" or k in self.clearable)}

    def create(self, validated_data):  # pragma: no cover - validation only
        raise NotImplementedError

    def update(self, instance, validated_data):  # pragma: no cover - validation only
        raise NotImplementedError


class EmptySerializer(StrictSerializer):
    """``{}`` (or no body at all)."""


class ErrorSerializer(serializers.Serializer):
    error = serializers.CharField()
    fields = serializers.DictField(child=serializers.ListField(child=serializers.CharField()),
                                   required=False)


def raw_text(data: Any) -> str:
    """A body as text for the audit, clipped."""
    if isinstance(data, (bytes, bytearray)):
        text = bytes(data[:RAW_BODY_CHARS * 4]).decode("utf-8", "replace")
    elif isinstance(data, str):
        text = data
    else:
        try:
            if hasattr(data, "lists"):  # a QueryDict (form body)
                data = {k: v if len(v) != 1 else v[0] for k, v in data.lists()}
            text = json.dumps(data, default=str)
        except (TypeError, ValueError):
            text = repr(data)
    return text[:RAW_BODY_CHARS]


def request_data(request) -> tuple[Any, str | None, str]:
    """The parsed body, why it could not be parsed (or None), and the body as text for
    the audit (as sent: ``1e400`` stays ``1e400``, not the ``inf`` it parses to)."""
    django_request = getattr(request, "_request", request)
    try:
        # Read before DRF parses it: Django keeps the bytes for the parser to re-read.
        raw = raw_text(django_request.body)
    except RawPostDataException:
        raw = None
    try:
        data = request.data
    except (ParseError, UnsupportedMediaType) as exc:
        return raw or "", str(exc.detail), raw or ""
    if raw is None:
        raw = raw_text(data)
    if hasattr(data, "dict") and not data:  # no body at all: an empty form, i.e. {}
        return {}, None, raw
    return data, None, raw


def check(serializer_class: type[serializers.Serializer], data: Any, *, user, action: str,
          target: str, role: str, parse_error: str | None = None, raw: str | None = None,
          context: dict | None = None) -> dict:
    """The validated values, or an audited refusal: a user without ``role`` is refused
    (403) whatever the body; otherwise a body that does not validate is recorded as a
    failed attempt with the body clipped as text, and raises InvalidRequest (400)."""
    if parse_error is None:
        serializer = serializer_class(data=data, context=context or {})
        if serializer.is_valid():
            return dict(serializer.validated_data)
        fields = field_errors(serializer.errors)
    else:
        fields = {api_settings.NON_FIELD_ERRORS_KEY: [f"the body is not JSON: {parse_error}"]}
    with audited(user, action, target, {"body": raw if raw is not None else raw_text(data)},
                 role):
        raise InvalidRequest(fields)
    raise AssertionError("unreachable")  # pragma: no cover


def check_request(request, serializer_class: type[serializers.Serializer], *, action: str,
                  target: str, role: str, context: dict | None = None) -> dict:
    data, parse_error, raw = request_data(request)
    return check(serializer_class, data, user=request.user, action=action, target=target,
                 role=role, parse_error=parse_error, raw=raw, context=context)


def optional(field: type[serializers.Field], **kwargs: Any) -> serializers.Field:
    """An optional field that also takes null ("not given")."""
    return field(required=False, allow_null=True, **kwargs)


def optional_text(max_length: int = 512, **kwargs: Any) -> serializers.Field:
    return optional(TextField, allow_blank=True, max_length=max_length, **kwargs)


# ------------------------------------------------------------------ jobs (responses)


class JobOrDryRun(serializers.Serializer):
    """A job started ({"job", "matched"}), or with ``dry_run`` what it would do."""

    job = serializers.IntegerField(required=False)
    matched = serializers.IntegerField()
    dry_run = serializers.BooleanField(required=False)
    targets = serializers.ListField(child=serializers.JSONField(), required=False)
    plan = serializers.CharField(required=False)


class JobRow(serializers.Serializer):
    id = serializers.IntegerField()
    kind = serializers.CharField()
    state = serializers.CharField()
    total = serializers.IntegerField()
    done = serializers.IntegerField()
    failed = serializers.IntegerField()




class JobStarted(serializers.Serializer):
    job = serializers.IntegerField()
    matched = serializers.IntegerField()


