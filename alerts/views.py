"""/alerts/ and its actions; GET /api/v1/alerts/."""

from __future__ import annotations

from django.http import Http404
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_POST
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.decorators import api_view
from rest_framework.response import Response

from kernel.actions import ActionError
from kernel.api import ERRORS, ID, PAGING, Page
from kernel.roles import has_role
from kernel.serializers import EmptySerializer, ErrorSerializer, check_request

from . import actions
from .models import Alert
from .serializers import AlertActionSerializer, AlertPage, AlertRow, SilenceSerializer


@require_GET
def alert_list(request):
    request.live_panel = {"panel": "alerts"}
    return render(request, "alerts/list.html", {
        **actions.panel(), **actions.details(), "page": "alerts",
        "can_act": has_role(request.user, "operator")})


ACTIONS = ("ack", "silence")


@require_POST
def alert_action(request, pk: str, action: str):
    if action not in ACTIONS:
        raise Http404(f"No action {action!r} on alerts.")
    try:
        if action == "ack":
            actions.acknowledge(request.user, pk)
        else:
            actions.silence(request.user, pk, request.POST.get("minutes", 60))
    except ActionError as exc:
        return render(request, "fragments/action_result.html", {"error": str(exc)}, status=exc.status)
    return render(request, "fragments/alerts_panel.html", {**actions.panel(), "can_act": True})


def _row(a: Alert, silences: dict | None = None) -> dict:
    silenced = (silences or {}).get(a.key) if silences is not None else a.silenced_until
    return {"id": a.pk, "rule": a.rule.name, "kind": a.rule.kind, "severity": a.severity,
            "state": a.state, "subject": a.subject, "message": a.message, "value": a.value,
            "link": a.link, "started_at": a.started_at.isoformat(),
            "resolved_at": a.resolved_at.isoformat() if a.resolved_at else None,
            "acknowledged_by": a.acknowledged_by.get_username() if a.acknowledged_by else None,
            "silenced_until": silenced.isoformat() if silenced else None}


@extend_schema(operation_id="alerts_list", responses={200: AlertPage, 403: ErrorSerializer},
               parameters=[*PAGING, OpenApiParameter("state", str, required=False)])
@api_view(["GET"])
def api_alerts(request):
    qs = Alert.objects.select_related("rule", "acknowledged_by")
    if request.GET.get("state"):
        qs = qs.filter(state=request.GET["state"])
    paginator = Page()
    page = paginator.paginate_queryset(qs, request)
    silences = actions.active_silences()
    return paginator.get_paginated_response([_row(a, silences) for a in page])


@extend_schema(operation_id="alert_action", request=AlertActionSerializer,
               responses={200: AlertRow, **ERRORS},
               parameters=[ID, OpenApiParameter("action", str, OpenApiParameter.PATH,
                                                enum=list(ACTIONS))])
@api_view(["POST"])
def api_alert_action(request, pk: str, action: str):
    """Operator: ``ack`` (body ``{}``) or ``silence`` (``{"minutes"}``)."""
    if action not in ACTIONS:
        return Response({"error": f"no action {action[:40]!r}; use ack or silence"}, status=404)
    if action == "ack":
        check_request(request, EmptySerializer, action="alert.acknowledge",
                      target=f"alert {pk[:40]}", role="operator")
        alert = actions.acknowledge(request.user, pk)
    else:
        data = check_request(request, SilenceSerializer, action="alert.silence",
                             target=f"alert {pk[:40]}", role="operator")
        actions.silence(request.user, pk, data.get("minutes", 60))
        alert = actions._alert(pk)
    return Response(_row(alert))
