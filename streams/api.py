"""JSON API for streams (see ../shared/INTERFACES.md). Reads come from the snapshot."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.decorators import api_view
from rest_framework.exceptions import ParseError, UnsupportedMediaType
from rest_framework.response import Response

from kernel.actions import ActionError
from kernel.api import EDIT_ERRORS, ERRORS, PAGING, READ_ERRORS, SEQ, Page
from kernel.serializers import JobOrDryRun, check_request

from . import editor, operations
from .editor_serializers import (
    OwnConfirmSerializer,
    PlanResult,
    StreamConfigSerializer,
    StreamDeleteSerializer,
)
from .replay import start_stream_replay
from .serializers import (
    ConsumerRow,
    DeleteResult,
    PurgeResult,
    PurgeSerializer,
    StreamDetail,
    StreamPage,
    StreamReplaySerializer,
)

STREAM_KEYS = ("name", "subjects", "retention", "storage", "replicas", "messages", "bytes",
               "first_seq", "last_seq", "consumer_count", "num_subjects", "num_deleted",
               "first_ts", "last_ts", "max_msgs", "max_bytes", "max_age_s", "no_ack",
               "msgs_in_per_s", "usage_pct", "pending", "ack_pending", "replicas_ok")
CONSUMER_KEYS = ("name", "stream", "num_pending", "num_ack_pending", "num_redelivered",
                 "num_waiting", "delivered_stream_seq", "ack_floor_stream_seq", "max_deliver",
                 "filter_subjects", "ack_policy", "ack_wait_s", "backoff_s", "max_ack_pending",
                 "delivered_consumer_seq", "ack_floor_consumer_seq", "last_active",
                 "delivered_per_s", "acked_per_s", "drain_s", "stalled", "floor_stuck", "durable",
                 "paused", "pause_until", "own")


def _pick(record: dict, keys) -> dict:
    return {k: record.get(k) for k in keys}


def _error(exc: ActionError) -> Response:
    return Response({"error": str(exc)}, status=exc.status)


def _body_name(request) -> str:
    """The ``name`` a create body gives, for the audit of a body that does not validate."""
    try:
        data = request.data
    except (ParseError, UnsupportedMediaType):  # not JSON: check_request records why
        return ""
    name = data.get("name") if hasattr(data, "get") else None
    return name[:255] if isinstance(name, str) else ""


def _snapshot_or_503():
    snapshot = operations.current_snapshot()
    if snapshot is None:
        return None, Response({"error": operations.live_status()["error"]},
                              status=status.HTTP_503_SERVICE_UNAVAILABLE)
    return snapshot, None


@extend_schema(operation_id="streams_list", parameters=PAGING,
               responses={200: StreamPage, **READ_ERRORS}, methods=["GET"])
@extend_schema(operation_id="stream_create", request=StreamConfigSerializer,
               responses={201: PlanResult, 200: PlanResult, **ERRORS}, methods=["POST"])
@api_view(["GET", "POST"])
def stream_list(request):
    """GET: every stream. POST (admin): create a stream from a config with NATS JSON
    names; ``dry_run`` answers the lint findings and the diff without creating it."""
    if request.method == "POST":
        data = check_request(request, StreamConfigSerializer, action="stream.create",
                             target=_body_name(request), role="admin",
                             context={"create": True})
        result = editor.create(request.user, data)
        return Response(result, status=status.HTTP_201_CREATED if result["applied"] else 200)
    snapshot, error = _snapshot_or_503()
    if error:
        return error
    rows = sorted(snapshot["streams"].values(), key=lambda s: s["name"])
    paginator = Page()
    page = paginator.paginate_queryset([_pick(s, STREAM_KEYS) for s in rows], request)
    return paginator.get_paginated_response(page)


@extend_schema(operation_id="stream_detail",
               responses={200: StreamDetail, 404: ERRORS[404], **READ_ERRORS}, methods=["GET"])
@extend_schema(operation_id="stream_edit", request=StreamConfigSerializer,
               responses={200: PlanResult, **EDIT_ERRORS}, methods=["PUT"])
@extend_schema(operation_id="stream_delete", request=StreamDeleteSerializer,
               responses={200: PlanResult, **ERRORS}, methods=["DELETE"])
@api_view(["GET", "PUT", "DELETE"])
def stream_detail(request, name: str):
    """GET: the stream's figures. PUT (admin): change the given config fields, the
    others kept. DELETE (admin): delete the stream. Both take ``dry_run``."""
    if request.method == "PUT":
        data = check_request(request, StreamConfigSerializer, action="stream.edit",
                             target=name, role="admin", context={"name": name})
        return Response(editor.edit(request.user, name, data))
    if request.method == "DELETE":
        data = check_request(request, StreamDeleteSerializer, action="stream.delete",
                             target=name, role="admin")
        return Response(editor.delete(request.user, name, data))
    snapshot, error = _snapshot_or_503()
    if error:
        return error
    try:
        stream = operations.get_stream(snapshot, name)
    except ActionError as exc:
        return _error(exc)
    return Response({**_pick(stream, STREAM_KEYS), "cluster": stream["cluster"],
                     "consumers": [_pick(c, CONSUMER_KEYS)
                                   for c in operations.consumers_of(snapshot, name)],
                     "snapshot_at": snapshot.get("at"), "ok": snapshot.get("ok")})


@extend_schema(operation_id="consumers_list",
               responses={200: ConsumerRow(many=True), 404: ERRORS[404], **READ_ERRORS})
@api_view(["GET"])
def consumer_list(request, name: str):
    snapshot, error = _snapshot_or_503()
    if error:
        return error
    try:
        operations.get_stream(snapshot, name)
    except ActionError as exc:
        return _error(exc)
    return Response([_pick(c, CONSUMER_KEYS) for c in operations.consumers_of(snapshot, name)])


@extend_schema(operation_id="stream_purge", request=PurgeSerializer,
               responses={200: PurgeResult, **ERRORS})
@api_view(["POST"])
def purge(request, name: str):
    """Admin: purge by subject, keep N, below a sequence, or everything with {"all": true}."""
    data = check_request(request, PurgeSerializer, action="stream.purge", target=name,
                         role="admin")
    purged = operations.purge(request.user, name, data.get("subject"), data.get("keep"),
                            data.get("seq"), everything=bool(data.get("all")),
                            confirm_own=bool(data.get("confirm_own")))
    return Response({"purged": purged, "stream": name})


@extend_schema(operation_id="stream_delete_message", request=OwnConfirmSerializer,
               parameters=[SEQ], responses={200: DeleteResult, **ERRORS})
@api_view(["DELETE"])
def delete_message(request, name: str, seq: str):
    data = check_request(request, OwnConfirmSerializer, action="stream.delete_message",
                         target=name, role="admin")
    operations.delete_message(request.user, name, seq, confirm_own=bool(data.get("confirm_own")))
    return Response({"deleted": int(seq), "stream": name})


@extend_schema(operation_id="stream_replay", request=StreamReplaySerializer,
               responses={200: JobOrDryRun, **ERRORS})
@api_view(["POST"])
def replay(request, name: str):
    """Replay a range of any stream to a subject: {"target", "start_seq"?, "end_seq"?,
    "start_time"?, "subject"? (filter), "rate"?, "dry_run"?} -> {"job", "matched"}."""

    data = check_request(request, StreamReplaySerializer, action="stream.replay", target=name,
                         role="operator")
    return Response(start_stream_replay(
        request.user, name, data["target"], data.get("start_seq"), data.get("end_seq"),
        data.get("start_time"), data.get("subject"), data.get("rate"),
        bool(data.get("dry_run"))))
