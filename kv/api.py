"""JSON API for key-value buckets (see ../shared/INTERFACES.md)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.decorators import api_view
from rest_framework.response import Response

from kernel.api import EDIT_ERRORS, ERRORS, PAGING, READ_ERRORS, Page
from kernel.serializers import check_request

from . import buckets
from .serializers import BucketRow, KeyDetail, KeyPage, KvDeleteSerializer, KvPutSerializer, KvWritten

BUCKET_KEYS = ("bucket", "values", "bytes", "history", "ttl", "keys", "storage", "replicas", "own")
KEY_KEYS = ("key", "revision", "operation", "created", "revisions", "size")
REVISION_KEYS = ("revision", "value", "encoding", "operation", "created", "user", "size", "clipped")
# Routed as text (a bad one answers 400 or 404); the schema says what a real one looks like.
BUCKET = OpenApiParameter("bucket", str, OpenApiParameter.PATH, pattern=r"^[-_a-zA-Z0-9]+$")
KEY = OpenApiParameter("key", str, OpenApiParameter.PATH,
                       pattern=r"^[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*$")
FILTER = OpenApiParameter("filter", str, required=False,
                          description="a key pattern with * and > tokens, or a substring")


@extend_schema(operation_id="kv_buckets", responses={200: BucketRow(many=True), **READ_ERRORS})
@api_view(["GET"])
def bucket_list(request):
    return Response([{k: b[k] for k in BUCKET_KEYS} for b in buckets.buckets()])


@extend_schema(operation_id="kv_keys", parameters=[BUCKET, *PAGING, FILTER],
               responses={200: KeyPage, **ERRORS, **READ_ERRORS})
@api_view(["GET"])
def key_list(request, bucket: str):
    """Keys in key order, a page at a time (the bus is asked for this page only when the
    filter is a pattern or empty; a substring filter reads every key name)."""
    paginator = Page()
    paginator.request = request
    paginator.limit, paginator.offset = paginator.get_limit(request), paginator.get_offset(request)
    page = buckets.keys_page(bucket, request.GET.get("filter"), paginator.offset, paginator.limit)
    paginator.count = page["count"]  # what paginate_queryset would set, for the links
    return paginator.get_paginated_response([{k: r[k] for k in KEY_KEYS} for r in page["rows"]])


@extend_schema(operation_id="kv_key", methods=["GET"], parameters=[BUCKET, KEY],
               responses={200: KeyDetail, **ERRORS, **READ_ERRORS})
@extend_schema(operation_id="kv_put", methods=["PUT"], request=KvPutSerializer,
               parameters=[BUCKET, KEY],
               responses={200: KvWritten, **EDIT_ERRORS})
@extend_schema(operation_id="kv_delete", methods=["DELETE"], request=KvDeleteSerializer,
               parameters=[BUCKET, KEY],
               responses={200: KvWritten, **ERRORS})
@api_view(["GET", "PUT", "DELETE"])
def key_detail(request, bucket: str, key: str):
    target = f"{bucket}/{key}"[:512]
    if request.method == "PUT":
        data = check_request(request, KvPutSerializer, action="kv.put", target=target,
                             role="operator")
        return Response(buckets.put(request.user, bucket, key, data.get("value", ""),
                                    data.get("encoding"), bool(data.get("confirm_own")),
                                    data.get("revision")))
    if request.method == "DELETE":
        data = check_request(request, KvDeleteSerializer, action="kv.delete", target=target,
                             role="operator")
        return Response(buckets.delete(request.user, bucket, key, bool(data.get("confirm_own")),
                                       bool(data.get("purge"))))
    found = buckets.entry(bucket, key)
    return Response({"bucket": bucket, "key": key, **{k: found[k] for k in REVISION_KEYS},
                     "history": [{k: r[k] for k in REVISION_KEYS} for r in found["history"]]})
