from rest_framework.decorators import api_view
from rest_framework.pagination import LimitOffsetPagination

from .models import AuditRecord


class Page(LimitOffsetPagination):
    default_limit = 100
    max_limit = 1000


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
