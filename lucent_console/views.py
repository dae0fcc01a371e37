from asgiref.sync import async_to_sync
from django.contrib.auth.decorators import login_not_required
from django.http import JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from streams import services as stream_services

from .status import bus_status, health


@require_GET
@login_not_required
async def healthz(request):
    ok, body = await health()
    return JsonResponse(body, status=200 if ok else 503)


@require_GET
def overview(request):
    bus = async_to_sync(bus_status)()
    summary = async_to_sync(stream_services.bus_summary)() if bus["ok"] else None
    return render(request, "overview.html", {"bus": bus, "summary": summary, "page": "overview"})


@require_GET
def coming(request, page: str, title: str, issue: int):
    return render(request, "coming.html", {"page": page, "title": title, "issue": issue})
