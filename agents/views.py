"""Services page and API: instances from the snapshot, events from the database."""

from __future__ import annotations

import re

from django.http import Http404
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_http_methods
from drf_spectacular.utils import extend_schema
from rest_framework.decorators import api_view
from rest_framework.response import Response

from kernel.actions import ActionError
from kernel.api import ERRORS
from kernel.serializers import check_request
from streams import history
from streams import operations as stream_ops

from . import probe as probing
from . import registry
from .activity import STREAM, failure_series
from .hierarchy import LEVELS, Hierarchy
from .models import ServiceEvent
from .serializers import ProbeResult, ProbeSerializer

COUNTS = registry.SERVICE_STATES


def instances(snapshot: dict | None) -> list[dict]:
    return list(registry.instances_of((snapshot or {}).get("services")).values())


def panel(snapshot: dict | None) -> dict:
    rows = instances(snapshot)
    order = {"down": 0, "stale": 1, "degraded": 2, "up": 3}
    rows.sort(key=lambda r: (order.get(r.get("state", r["status"]), 4), r["service"], r["instance"]))
    # Counted by what the rows show (a degraded instance is not one more "up").
    return {"instances": rows, "counts": {s: sum(r.get("state", r["status"]) == s for r in rows)
                                          for s in COUNTS},
            "untracked": registry.untracked_of((snapshot or {}).get("services"))}


def recent_events(limit: int = 50) -> list[ServiceEvent]:
    # Read well past `limit`: repeats fold into one line (registry.collapse).
    return registry.collapse(ServiceEvent.objects.all()[:limit * 10], limit)


@require_GET
def service_list(request):
    request.live_panel = {"panel": "services"}
    return render(request, "agents/services.html", {
        **panel(stream_ops.current_snapshot()), "events": recent_events(), "page": "services"})


@api_view(["GET"])
def api_services(request):
    snapshot = stream_ops.current_snapshot()
    if snapshot is None:
        return Response({"error": stream_ops.live_status()["error"]}, status=503)
    return Response([{
        "service": r["service"], "instance": r["instance"], "status": r["status"],
        "last_seen": r["last_seen"], "version": r["version"], "node": r["node"],
        "reported": r["reported"], "interval_s": r["interval_s"], "details": r["details"],
    } for r in panel(snapshot)["instances"]])


@extend_schema(operation_id="probe", request=ProbeSerializer,
               responses={200: ProbeResult, **ERRORS})
@api_view(["POST"])
def api_probe(request):
    """Operator: time N requests to a command subject (never one of the bus's own)."""
    data = check_request(request, ProbeSerializer, action="probe", target="probe",
                         role="operator")
    # Errors (ActionError) answer through the API's exception handler: {"error"}, status.
    result = probing.probe(request.user, data["subject"], data.get("payload"), data.get("count") or 1,
                   data.get("timeout") or 2.0)
    result["replies"] = [{"rtt_ms": r["rtt_ms"], **r["decoded"].as_dict(),
                          "text": r["decoded"].text} for r in result["replies"]]
    return Response(result)


@require_http_methods(["GET", "POST"])
def probe_form(request):
    """GET: the form, set to ping a service. POST (htmx) in two steps: first the
    confirmation, naming subject x count and the streams that would store the requests;
    then, posted again with that confirmation, the run and its result. (The API needs no
    confirmation: a script has said what it sends.)"""
    subject = request.POST.get("subject") or request.GET.get("subject") or probing.DEFAULT_SUBJECT
    if request.method == "GET":
        services = sorted({r["service"] for r in instances(stream_ops.current_snapshot())})
        return render(request, "fragments/probe.html", {
            "subject": subject,
            "pings": [probing.ping_subject(s) for s in services] or [probing.DEFAULT_SUBJECT]})
    payload, count, timeout = (request.POST.get("payload"), request.POST.get("count", 1),
                               request.POST.get("timeout", 2.0))
    try:
        subject, body, count, timeout = probing.review(request.user, subject, payload, count, timeout)
        asked = probing.confirmation(subject, count)
        if request.POST.get("confirm") != asked:
            # Also when the fields changed since: what was confirmed is what is sent.
            return render(request, "fragments/probe_confirm.html", {
                "subject": subject, "count": count, "timeout": timeout, "asked": asked,
                "payload": payload or "", "typed": bool(payload), "bytes": len(body),
                "ping": probing.is_ping(subject),
                "stored_by": probing.stored_by(subject, stream_ops.current_snapshot())})
        result = probing.probe(request.user, subject, payload, count, timeout)
    except ActionError as exc:
        return render(request, "fragments/action_result.html", {"error": str(exc)}, status=exc.status)
    return render(request, "fragments/probe_result.html", {"r": result})


def hierarchy_panel(snapshot: dict | None) -> dict:
    records = (snapshot or {}).get("hierarchy") or {}

    def natural(r: dict) -> list:
        # In name order, numbers by value (node-2 before node-10): arrival order moved
        # nodes around on every update.
        # Bus ids: ASCII digits only, and few enough for int() (it refuses 4,300+).
        return [(0, int(p), "") if p[0] in "0123456789" and len(p) < 40 else (1, 0, p)
                for p in re.split(r"([0-9]+)", str(r.get("id", "")).lower()) if p]

    levels = [{"level": level, "items": sorted(
        (r for r in records.values() if r["level"] == level), key=natural)} for level in LEVELS]
    return {"levels": levels, "silent": Hierarchy().silent_levels(records)}


@require_GET
def hierarchy(request):
    request.live_panel = {"panel": "hierarchy"}
    return render(request, "agents/hierarchy.html", {
        **hierarchy_panel(stream_ops.current_snapshot()), "page": "agents"})


# ------------------------------------------------------------------ agents

def agents_panel(snapshot: dict | None, feed: bool = False) -> dict:
    agents = list(((snapshot or {}).get("agents") or {}).values())
    counts = {s: sum(a["status"] == s for a in agents) for s in registry.AGENT_STATES}
    out = {"agents": agents, "counts": counts}
    if feed:
        out["feed"] = sorted(((snapshot or {}).get("agent_feed") or {}).values(),
                             key=lambda e: e["seq"], reverse=True)
    return out


def agent_panel(snapshot: dict | None, name: str) -> dict:
    agent = ((snapshot or {}).get("agents") or {}).get(name)
    consumers = [c for key, c in ((snapshot or {}).get("consumers") or {}).items()
                 if agent and c["stream"] == STREAM and c["name"] in agent["consumers"]]
    feed = [e for e in agents_panel(snapshot, feed=True)["feed"] if e["kind"] == name]
    return {"agent": agent, "name": name, "consumers": consumers, "feed": feed,
            "acked_per_s": agent["acked_per_s"] if agent else 0.0}


@require_GET
def agent_list(request):
    request.live_panel = {"panel": "agents"}
    return render(request, "agents/list.html", {
        **agents_panel(stream_ops.current_snapshot(), feed=True), "page": "agents"})


@require_GET
def agent_detail(request, name: str):
    data = agent_panel(stream_ops.current_snapshot(), name)
    if data["agent"] is None:
        raise Http404(f"No agent {name!r} on the bus (agents come from lucent.agents.<kind>.<task>).")
    range_ = request.GET.get("range", "1h")
    range_ = range_ if range_ in history.RANGES else "1h"
    series = history.series("c", [f"{STREAM}/{c}" for c in data["agent"]["consumers"]], range_)
    series.update(failure_series(name, range_))
    request.live_panel = {"panel": "agent", "name": name}
    return render(request, "agents/detail.html", {
        **data, "page": "agents", "ranges": list(history.RANGES), "range": range_,
        "live_chart": range_ in ("15m", "1h"), "chart": history.chart(series, AGENT_CHARTS)})


AGENT_CHARTS = [
    {"id": "chart-rate", "title": "Throughput", "traces": [["rate", "jobs acked/s"]]},
    {"id": "chart-pending", "title": "Jobs", "traces": [["ack_pending", "in flight"],
                                                        ["pending", "waiting"]]},
    {"id": "chart-failures", "title": "Failures (dead letters)", "bar": True, "x": "failures_t",
     "traces": [["failures", "dead letters"]]},
]
API_AGENT_KEYS = ("name", "subject", "status", "msgs_per_s", "out_per_s", "acked_per_s",
                  "in_flight", "waiting", "redeliveries", "failures", "mean_ms", "p95_ms",
                  "last_seen", "consumers", "instances", "workers", "tasks")


@api_view(["GET"])
def api_agents(request):
    snapshot = stream_ops.current_snapshot()
    if snapshot is None:
        return Response({"error": stream_ops.live_status()["error"]}, status=503)
    return Response([{k: a[k] for k in API_AGENT_KEYS} for a in agents_panel(snapshot)["agents"]])
