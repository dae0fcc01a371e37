"""JSON API for consumers (../shared/INTERFACES.md): list and create, edit and delete,
pause, resume and reset. Short views: a strict serializer, then the service layer."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.decorators import api_view
from rest_framework.response import Response

from kernel.api import EDIT_ERRORS, ERRORS, READ_ERRORS
from kernel.serializers import check_request

from . import api as stream_api
from . import consumer_ops as ops
from . import operations
from .consumer_serializers import (
    ConsumerConfigSerializer,
    ConsumerDeleted,
    ConsumerPauseResult,
    ConsumerPreview,
    ConsumerResetResult,
    ConsumerRowPaused,
    OwnOnlySerializer,
    PauseSerializer,
    ResetSerializer,
)

ROW_KEYS = stream_api.CONSUMER_KEYS + ops.ROW_EXTRA


def row(record: dict) -> dict:
    """A consumer as the API lists it (the CLI prints the same)."""
    return {k: record.get(k) for k in ROW_KEYS}


@extend_schema(operation_id="consumers_list", methods=["GET"],
               responses={200: ConsumerRowPaused(many=True), 404: ERRORS[404], **READ_ERRORS})
@extend_schema(operation_id="consumer_create", methods=["POST"],
               request=ConsumerConfigSerializer, responses={200: ConsumerPreview, **ERRORS})
@api_view(["GET", "POST"])
def consumers(request, name: str):
    """GET: the stream's consumers from the snapshot (rows also carry paused, pause_until).
    POST (admin): create a durable from a config (NATS JSON names, ns durations);
    ``"dry_run": true`` answers the config that would be sent."""
    if request.method == "POST":
        data = check_request(request, ConsumerConfigSerializer, action="consumer.create",
                             target=name, role="admin")
        return Response(ops.create(request.user, name, data))
    snapshot = operations.current_snapshot()
    if snapshot is None:
        return Response({"error": operations.live_status()["error"]}, status=503)
    operations.get_stream(snapshot, name)
    return Response([row(c) for c in operations.consumers_of(snapshot, name)])


@extend_schema(operation_id="consumer_edit", methods=["PUT"], request=ConsumerConfigSerializer,
               responses={200: ConsumerPreview, **EDIT_ERRORS})
@extend_schema(operation_id="consumer_delete", methods=["DELETE"], request=OwnOnlySerializer,
               responses={200: ConsumerDeleted, **ERRORS})
@extend_schema(operation_id="consumer_info", methods=["GET"],
               responses={200: ConsumerRowPaused, 400: ERRORS[400], 404: ERRORS[404],
                          **READ_ERRORS})
@api_view(["GET", "PUT", "DELETE"])
def consumer(request, name: str, consumer: str):
    """GET: one consumer read from the bus now. PUT (admin): the fields to change, merged
    onto its config (only what the server lets change; ``dry_run`` for the preview and
    diff). DELETE (admin)."""
    target = f"{name}/{consumer}"
    if request.method == "PUT":
        data = check_request(request, ConsumerConfigSerializer, action="consumer.edit",
                             target=target, role="admin")
        return Response(ops.edit(request.user, name, consumer, data))
    if request.method == "DELETE":
        data = check_request(request, OwnOnlySerializer, action="consumer.delete",
                             target=target, role="admin")
        return Response(ops.delete(request.user, name, consumer,
                                   bool(data.get("confirm_own"))))
    rec = ops.info(name, consumer)
    return Response({**row(rec), "config": rec["config"]})


@extend_schema(operation_id="consumer_pause", request=PauseSerializer,
               responses={200: ConsumerPauseResult, **ERRORS})
@api_view(["POST"])
def pause(request, name: str, consumer: str):
    """Operator: ``{"until": ISO}`` or ``{"seconds": N}`` (nats-server 2.11+)."""
    data = check_request(request, PauseSerializer, action="consumer.pause",
                         target=f"{name}/{consumer}", role="operator")
    return Response(ops.pause(request.user, name, consumer, data.get("until"),
                              data.get("seconds"), bool(data.get("confirm_own"))))


@extend_schema(operation_id="consumer_resume", request=OwnOnlySerializer,
               responses={200: ConsumerPauseResult, **ERRORS})
@api_view(["POST"])
def resume(request, name: str, consumer: str):
    data = check_request(request, OwnOnlySerializer, action="consumer.resume",
                         target=f"{name}/{consumer}", role="operator")
    return Response(ops.resume(request.user, name, consumer, bool(data.get("confirm_own"))))


@extend_schema(operation_id="consumer_reset", request=ResetSerializer,
               responses={200: ConsumerResetResult, **ERRORS})
@api_view(["POST"])
def reset(request, name: str, consumer: str):
    """Admin: ``{"seq": N}`` or ``{"time": ISO}``; ``"recreate": true`` deletes and
    recreates the durable there instead (servers before 2.14; limits streams only)."""
    data = check_request(request, ResetSerializer, action="consumer.reset",
                         target=f"{name}/{consumer}", role="admin")
    return Response(ops.reset(request.user, name, consumer, data.get("seq"), data.get("time"),
                              bool(data.get("recreate")), bool(data.get("confirm_own"))))
