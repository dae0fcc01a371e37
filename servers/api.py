"""JSON API: the servers and their connections, from the monitoring data (live, not
the snapshot). 404 with what is needed when no monitoring source is configured, 503
when no server answers; 400 for an unknown or malformed query parameter."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.decorators import api_view
from rest_framework.response import Response

from kernel.api import READ_ERRORS
from kernel.serializers import ErrorSerializer, InvalidRequest, field_errors

from . import connections as conns
from . import overview
from .serializers import ConnectionPage, ConnectionQuery, ServerQuery, ServerRow


def query(serializer_class, request) -> dict:
    serializer = serializer_class(data=request.GET.dict())
    if not serializer.is_valid():
        raise InvalidRequest(field_errors(serializer.errors))
    return dict(serializer.validated_data)


@extend_schema(operation_id="servers_list",
               responses={200: ServerRow(many=True), 400: ErrorSerializer, 404: ErrorSerializer,
                          **READ_ERRORS})
@api_view(["GET"])
def server_list(request):
    query(ServerQuery, request)
    return Response(overview.servers())


@extend_schema(operation_id="connections_list", parameters=[
    OpenApiParameter("q", str, required=False), OpenApiParameter("sort", str, required=False,
                                                                 enum=sorted(conns.SORTS)),
    OpenApiParameter("desc", bool, required=False), OpenApiParameter("limit", int, required=False),
    OpenApiParameter("offset", int, required=False)],
    responses={200: ConnectionPage, 400: ErrorSerializer, 404: ErrorSerializer, **READ_ERRORS})
@api_view(["GET"])
def connection_list(request):
    """Paged (offset, limit up to 1,000), filtered (``q``), sorted server-side by connz
    where it can (cid, subscriptions, pending_bytes, in/out msgs and bytes, rtt, uptime)."""
    args = query(ConnectionQuery, request)
    page = conns.connections(args.get("q", ""), args.get("sort", "cid"), args.get("desc"),
                             args.get("offset", 0), args.get("limit", 100))
    return Response({"count": page["total"], "offset": page["offset"], "limit": page["limit"],
                     "sort": page["sort"], "desc": page["desc"], "errors": page["errors"],
                     "truncated": page["truncated"], "results": page["rows"]})
