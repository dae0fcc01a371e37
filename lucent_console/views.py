from django.contrib.auth.decorators import login_not_required
from django.core.cache import cache
from django.core.paginator import Paginator
from django.http import JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from alerts import actions as alerts
from kernel.models import AuditRecord
from streams import history
from streams import operations as stream_ops

from .status import health


@require_GET
@login_not_required
async def healthz(request):
    ok, body = await health()
    return JsonResponse(body, status=200 if ok else 503)


@require_GET
def overview(request):
    snapshot = stream_ops.current_snapshot()
    request.live_panel = {"panel": "overview"}

    return render(request, "overview.html", {
        "ov": stream_ops.overview(snapshot), **alerts.panel(history=0),
        "trends": cache.get_or_set("overview-trends", history.trends, 60),
        "findings": stream_ops.lint_findings(snapshot), "page": "overview"})


@require_GET
def audit(request):
    page = Paginator(AuditRecord.objects.select_related("user"), 50).get_page(request.GET.get("page"))
    return render(request, "audit.html", {"records": page, "page": "audit"})
