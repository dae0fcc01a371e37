"""Publish and request: the page (two steps: review, then send) and the API."""

from __future__ import annotations

import uuid

from django.shortcuts import render
from django.views.decorators.http import require_GET, require_http_methods
from drf_spectacular.utils import extend_schema
from rest_framework.decorators import api_view
from rest_framework.response import Response

from kernel.actions import ActionError
from kernel.api import ERRORS
from kernel.headers import parse_header_lines
from kernel.roles import has_role
from kernel.serializers import check_request

from . import sending
from .serializers import PublishSerializer, Sent


@extend_schema(operation_id="publish", request=PublishSerializer, responses={200: Sent, **ERRORS})
@api_view(["POST"])
def api_publish(request):
    """Operator: publish a message, or send a request and get its reply and time."""
    data = check_request(request, PublishSerializer, action="bus.publish", target="publish",
                         role="operator")
    result = sending.send_message(
        request.user, data["subject"], data.get("payload", ""), encoding=data.get("payload_encoding"),
        headers=data.get("headers"), request=bool(data.get("request")),
        timeout_ms=data.get("timeout_ms"), confirm_own=bool(data.get("confirm_own")))
    if "reply" in result:
        result["reply"].pop("decoded")  # the page's rendering; the API gives the payload
    return Response(result)


def _form(post) -> dict:
    timeout = (post.get("timeout_ms") or "").strip()
    return {"subject": post.get("subject", ""), "payload": post.get("payload", ""),
            "encoding": post.get("encoding") or "text", "headers_text": post.get("headers", ""),
            "request": post.get("request") == "1",
            "timeout_ms": int(timeout) if timeout.isdigit() and len(timeout) < 7 else timeout}


@require_http_methods(["GET", "POST"])
def publish_page(request):
    """GET: the form. POST: first a confirmation naming the subject, what stores it and
    the size; posted again with ``confirm``, the send and its result."""
    if request.method == "GET":
        return render(request, "publish/form.html", {
            "page": "publish", "f": {"subject": request.GET.get("subject", ""),
                                     "timeout_ms": sending.DEFAULT_TIMEOUT_MS},
            "can_send": has_role(request.user, "operator")})
    f = _form(request.POST)
    try:
        if not has_role(request.user, "operator"):
            raise ActionError("publishing needs the operator role")
        headers = parse_header_lines(f["headers_text"], sending.RESERVED_HEADERS)
        # A confirmed publish carries a Nats-Msg-Id made at the review (unless one was
        # typed): a double click or a retry after a timeout is one message in the stream.
        msg_id = (request.POST.get("msg_id") or "")[:100] or f"console-{uuid.uuid4()}"
        if not request.POST.get("request") and "Nats-Msg-Id" not in headers:
            headers["Nats-Msg-Id"] = msg_id
        subject, data, headers, _ = sending.check(f["subject"], f["payload"], f["encoding"],
                                                  headers, f["timeout_ms"] or None)
        if request.POST.get("confirm") != "1":
            return render(request, "publish/confirm.html", {
                "f": f, "subject": subject, "bytes": len(data), "sha256": sending.digest(data),
                "headers": headers, "msg_id": msg_id, "stored_by": sending.stored_by(subject),
                "own": sending.own_target(subject)})
        result = sending.send_message(request.user, subject, f["payload"], encoding=f["encoding"],
                                      headers=headers, request=f["request"],
                                      timeout_ms=f["timeout_ms"] or None,
                                      confirm_own=request.POST.get("confirm_own") == "1")
    except ActionError as exc:
        return render(request, "fragments/action_result.html", {"error": str(exc)},
                      status=exc.status)
    return render(request, "publish/result.html", {"r": result})


@require_GET
def envelope_template(request):
    """The payload box filled with an ADR envelope (new message id, correlation, time)."""
    return render(request, "publish/payload_box.html", {"payload": sending.template(
        request.GET.get("message_type", ""), request.GET.get("subject", ""))})
