"""Services page and API: instances from the snapshot, events from the database."""

from __future__ import annotations

from django.shortcuts import render
from django.views.decorators.http import require_GET
from rest_framework.decorators import api_view
from rest_framework.response import Response

from streams import services as stream_services

from .models import ServiceEvent

COUNTS = ("up", "stale", "down")


def instances(snapshot: dict | None) -> list[dict]:
    return list(((snapshot or {}).get("services") or {}).values())


def panel(snapshot: dict | None) -> dict:
    rows = instances(snapshot)
    order = {"down": 0, "stale": 1, "up": 2}
    rows.sort(key=lambda r: (order.get(r["status"], 3), r["service"], r["instance"]))
    return {"instances": rows, "counts": {s: sum(r["status"] == s for r in rows) for s in COUNTS}}


def recent_events(limit: int = 50) -> list[ServiceEvent]:
    return list(ServiceEvent.objects.all()[:limit])


@require_GET
def service_list(request):
    request.live_panel = {"panel": "services"}
    return render(request, "agents/services.html", {
        **panel(stream_services.current_snapshot()), "events": recent_events(), "page": "services"})


@api_view(["GET"])
def api_services(request):
    snapshot = stream_services.current_snapshot()
    if snapshot is None:
        return Response({"error": stream_services.live_status()["error"]}, status=503)
    return Response([{
        "service": r["service"], "instance": r["instance"], "status": r["status"],
        "last_seen": r["last_seen"], "version": r["version"], "node": r["node"],
        "reported": r["reported"], "interval_s": r["interval_s"], "details": r["details"],
    } for r in panel(snapshot)["instances"]])
