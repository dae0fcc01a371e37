"""What the JSON API shares: paging, the error format, the audit list, the schema hook."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.decorators import api_view
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from .actions import ActionError
from .models import AuditRecord
from .serializers import ErrorSerializer


class Page(LimitOffsetPagination):
    default_limit = 100
    max_limit = 1000


def exception_handler(exc, context):
    """ActionError anywhere in a view: ``{"error", "fields"?}`` with its status. DRF's own
    errors (not authenticated, unparsable JSON, wrong method) keep their ``detail`` and
    gain the same ``error`` key, so a client reads one key whatever went wrong."""
    if isinstance(exc, ActionError):
        body = {"error": str(exc)}
        if getattr(exc, "fields", None):
            body["fields"] = exc.fields
        return Response(body, status=exc.status)
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict) and "error" not in response.data:
        detail = response.data.get("detail")
        response.data["error"] = str(detail) if detail is not None else "invalid request"
    return response


# Error answers every action may give (documented once, referenced by each view).
ERRORS = {400: ErrorSerializer, 403: ErrorSerializer, 404: ErrorSerializer}
# An edit made on what was read (a KV revision, a previewed config) that changed since.
EDIT_ERRORS = {**ERRORS, 409: ErrorSerializer}
READ_ERRORS = {403: ErrorSerializer, 503: ErrorSerializer}


class AuditRow(serializers.Serializer):
    id = serializers.IntegerField()
    user = serializers.CharField(allow_blank=True)
    action = serializers.CharField()
    target = serializers.CharField(allow_blank=True)
    parameters = serializers.JSONField()
    outcome = serializers.CharField()
    detail = serializers.CharField(allow_blank=True)
    at = serializers.CharField()


class AuditPage(serializers.Serializer):
    count = serializers.IntegerField()
    next = serializers.CharField(allow_null=True)
    previous = serializers.CharField(allow_null=True)
    results = AuditRow(many=True)


# Ids in paths are routed as text (a bad one answers 404, not a router miss); the schema
# says what a real one looks like, so clients and the fuzzer reach real records.
ID = OpenApiParameter("id", int, OpenApiParameter.PATH)
SEQ = OpenApiParameter("seq", int, OpenApiParameter.PATH)

PAGING = [OpenApiParameter("limit", int, required=False),
          OpenApiParameter("offset", int, required=False)]


@extend_schema(operation_id="audit_list", responses={200: AuditPage, 403: ErrorSerializer},
               parameters=[*PAGING, *(OpenApiParameter(f, str, required=False)
                                      for f in ("action", "outcome", "username", "target"))])
@api_view(["GET"])
def audit_list(request):
    qs = AuditRecord.objects.all()
    for field in ("action", "outcome", "username", "target"):
        if request.GET.get(field):
            qs = qs.filter(**{field: request.GET[field]})
    paginator = Page()
    page = paginator.paginate_queryset(qs, request)
    return paginator.get_paginated_response([{
        "id": r.id, "user": r.username, "action": r.action, "target": r.target,
        "parameters": r.parameters, "outcome": r.outcome, "detail": r.detail,
        "at": r.at.isoformat()} for r in page])


# ------------------------------------------------------------------ the schema of others' views

class ServiceRow(serializers.Serializer):
    service = serializers.CharField()
    instance = serializers.CharField()
    status = serializers.CharField()
    last_seen = serializers.JSONField()


class AgentRow(serializers.Serializer):
    name = serializers.CharField()
    subject = serializers.CharField()
    msgs_per_s = serializers.JSONField()
    in_flight = serializers.JSONField()
    failures = serializers.JSONField()
    last_seen = serializers.JSONField()


class Trace(serializers.Serializer):
    correlation_id = serializers.CharField()
    truncated = serializers.BooleanField()
    count = serializers.IntegerField()
    steps = serializers.ListField(child=serializers.DictField())


# What the views of others answer (keys from INTERFACES.md; values as the snapshot has them).
OTHERS = {"api_agents": AgentRow(many=True), "api_services": ServiceRow(many=True),
          "api_trace": Trace}


def _document(callback, **kwargs) -> None:
    cls = getattr(callback, "cls", None)
    if cls is not None and not getattr(cls, "_lucent_documented", False):
        extend_schema(**kwargs)(callback)
        cls._lucent_documented = True


def schema_hook(endpoints, **kwargs):
    """Describe the read-only views that carry no ``extend_schema`` of their own (agents,
    services, trace: written before the schema was strict; moving these descriptions
    next to their views is still to do). A view described by its own is left as it is."""
    for _path, _regex, method, callback in endpoints:
        cls = getattr(callback, "cls", None)
        if cls is None or getattr(getattr(cls, method.lower(), None), "kwargs", None):
            continue
        view = cls.__name__  # api_view names its class after the function
        if view in OTHERS:
            _document(callback, operation_id=view, responses={
                200: OTHERS[view], **READ_ERRORS, 400: ErrorSerializer, 404: ErrorSerializer})
    return endpoints


def strict_requests_hook(result, generator, request, public):
    """Request bodies take no field beyond those listed (StrictSerializer refuses them):
    say so in the schema, so clients and fuzzers know it."""
    for name, component in (result.get("components", {}).get("schemas") or {}).items():
        if name.endswith("Request") and component.get("type") == "object":
            component["additionalProperties"] = False
    return result
