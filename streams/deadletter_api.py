"""JSON API for dead letters and jobs (see ../shared/INTERFACES.md)."""

from __future__ import annotations

import base64

from rest_framework.decorators import api_view
from rest_framework.response import Response

from lucent_console.actions import ActionError
from lucent_console.api import Page

from . import dlq
from .deadletter_views import current_generation, earlier_generation

KEYS = ("id", "stream", "stream_seq", "subject", "consumer", "deliveries", "reason", "error",
        "captured_at", "failed_at", "message_id", "correlation_id", "causation_id",
        "message_type", "status", "payload_available", "payload_size", "dl_seq", "generation")


def _row(letter, current: str | None | bool = False) -> dict:
    """One dead letter; ``earlier_generation`` when it was indexed from an earlier
    DEAD_LETTERS (``current``: the stream's generation now, None when unknown, read from
    the snapshot when not given), and ``malformed``: the header fields that could not be
    read (stored empty)."""
    if current is False:
        current = current_generation()
    out = {k: getattr(letter, k) for k in KEYS}
    for key in ("captured_at", "failed_at"):
        out[key] = out[key].isoformat() if out[key] else None
    out["earlier_generation"] = earlier_generation(letter, current)
    out["malformed"] = [m for m in letter.malformed.split(",") if m]
    return out


def _error(exc: ActionError) -> Response:
    return Response({"error": str(exc)}, status=exc.status)


def _body(request) -> dict:
    return request.data if hasattr(request.data, "get") else {}


@api_view(["GET"])
def dl_list(request):
    try:
        qs = dlq.filtered(dlq.clean_filters(request.GET))
    except ActionError as exc:
        return _error(exc)
    paginator = Page()
    page = paginator.paginate_queryset(qs, request)
    return paginator.get_paginated_response([_row(x) for x in page])


@api_view(["GET", "DELETE"])
def dl_detail(request, pk: str):
    if request.method == "DELETE":
        try:
            return Response(dlq.purge_one(request.user, pk))
        except ActionError as exc:
            return _error(exc)
    try:
        letter = dlq.get(pk)
    except ActionError as exc:
        return _error(exc)
    stored = dlq.load(letter)
    out = {**_row(letter), "headers": stored.get("headers", letter.headers)}
    data = stored.get("data") if stored.get("available") else None
    if data is None:
        out.update(payload=None, payload_encoding=None, payload_note=stored.get("why", ""))
    else:
        try:
            out.update(payload=data.decode("utf-8"), payload_encoding="text")
        except UnicodeDecodeError:
            out.update(payload=base64.b64encode(data).decode(), payload_encoding="base64")
    return Response(out)


@api_view(["POST"])
def dl_replay(request, pk: str):
    body = _body(request)
    try:
        return Response(dlq.replay(request.user, pk, body.get("subject"),
                                   bool(body.get("remove_original"))))
    except ActionError as exc:
        return _error(exc)


def _bulk(request, kind: str):
    """Replay: ``subject`` is the target, ``subject_filter`` filters; purge: ``subject`` filters."""
    body = dict(_body(request).items())
    target = body.pop("subject", None) if kind == "replay" else None
    try:
        dlq.require_operator(request.user)
        if body.get("dry_run") in (True, "true", "1", 1):
            preview = dlq.dry_run(dlq.clean_filters(body), target or None)
            return Response({"dry_run": True, **preview})
        return Response(dlq.start_job(request.user, kind, body, target, body.get("rate"),
                                      bool(body.get("remove_original")), body.get("plan")))
    except ActionError as exc:
        return _error(exc)


@api_view(["POST"])
def dl_replay_bulk(request):
    return _bulk(request, "replay")


@api_view(["POST"])
def dl_purge_bulk(request):
    return _bulk(request, "purge")
