"""Trace pages and API: short views over ``traces.trace``."""

from __future__ import annotations

from django.conf import settings
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET
from rest_framework.decorators import api_view
from rest_framework.response import Response

from kernel.actions import ActionError

from . import trace as traces
from .models import EnvelopeRecord


def recent_ids(limit: int = 20) -> list[str]:
    """Correlation ids of the latest indexed messages (newest first, each once)."""
    latest = (EnvelopeRecord.objects.exclude(correlation_id="").order_by("-id")
              .values_list("correlation_id", flat=True)[:limit * 20])
    return list(dict.fromkeys(latest))[:limit]


@require_GET
def search(request):
    wanted = request.GET.get("correlation_id")
    error = ""
    if wanted is not None:
        try:
            return redirect("traces:detail", traces.clean_id(wanted))
        except ActionError as exc:
            error = str(exc)
    return render(request, "traces/search.html", {
        "page": "trace", "error": error, "wanted": wanted or "", "recent": recent_ids()},
        status=400 if error else 200)


@require_GET
def detail(request, correlation_id: str):
    try:
        result = traces.trace(correlation_id, request.GET.get("limit", 500))
    except ActionError as exc:
        return render(request, "traces/search.html", {
            "page": "trace", "error": str(exc), "wanted": correlation_id[:300],
            "recent": recent_ids()}, status=exc.status)
    return render(request, "traces/detail.html", {
        "page": "trace", "t": result, "days": settings.LUCENT_TRACE_DAYS})


STEP_KEYS = ("index", "stream", "seq", "subject", "message_type", "sender", "message_id",
             "causation_id", "origin_stream", "origin_seq", "parent", "link", "depth",
             "cause_missing", "cause_elsewhere", "since_previous_s", "since_first_s")


@api_view(["GET"])
def api_trace(request, correlation_id: str):
    try:
        result = traces.trace(correlation_id, request.GET.get("limit", 500))
    except ActionError as exc:
        return Response({"error": str(exc)}, status=exc.status)
    return Response({
        "correlation_id": result["correlation_id"], "truncated": result["truncated"],
        "count": len(result["steps"]),
        "steps": [{**{k: s[k] for k in STEP_KEYS}, "at": s["at"].isoformat()}
                  for s in result["steps"]]})
