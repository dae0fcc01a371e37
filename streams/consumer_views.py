"""Consumer pages: the detail page and the htmx actions (each answers a confirmation
first, then the result). Short views: the API's serializers, then the service layer."""

from __future__ import annotations

import json

from django.http import Http404
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from kernel.actions import ActionError, NotFound
from kernel.serializers import check

from . import consumer_ops as ops
from .consumer_serializers import (
    ConsumerConfigSerializer,
    OwnOnlySerializer,
    PauseSerializer,
    ResetSerializer,
)

# action -> (serializer, role, form fields it reads)
FORMS = {
    "pause": (PauseSerializer, "operator", ("until", "seconds")),
    "resume": (OwnOnlySerializer, "operator", ()),
    "reset": (ResetSerializer, "admin", ("seq", "time", "recreate")),
    "delete": (OwnOnlySerializer, "admin", ()),
}
def _error(request, exc: ActionError):
    return render(request, "fragments/action_result.html", {"error": str(exc)}, status=exc.status)


@require_GET
def consumer_detail(request, name: str, consumer: str):
    try:
        rec = ops.info(name, consumer)
    except NotFound as exc:
        raise Http404(str(exc)) from None
    except ActionError as exc:
        return render(request, "streams/consumer.html", {"error": str(exc), "name": name,
                                                         "page": "streams"}, status=exc.status)
    # Live: the socket follows this consumer, and watches its stream (read every 50 ms).
    request.live_panel = {"panel": "consumer", "name": name, "consumer": consumer}
    return render(request, "streams/consumer.html", {
        "c": rec, "name": name, "page": "streams",
        "config_json": json.dumps(rec["config"], indent=2, sort_keys=True)})


def _form_body(post, fields) -> dict:
    body = {k: post.get(k) for k in fields if post.get(k) not in (None, "")}
    if post.get("confirm_own"):
        body["confirm_own"] = post.get("confirm_own")
    return body


@require_POST
def consumer_action(request, name: str, consumer: str, action: str):
    """pause, resume, reset, delete: a confirmation naming what happens, then the action."""
    if action not in FORMS:
        raise Http404("no such action")
    serializer, role, fields = FORMS[action]
    body = _form_body(request.POST, fields)
    target = f"{name}/{consumer}"
    try:
        data = check(serializer, body, user=request.user, action=f"consumer.{action}",
                     target=target, role=role)
        if request.POST.get("confirm") != "1":
            return render(request, "fragments/consumer_confirm.html", {
                "text": _confirm_text(action, name, consumer, data), "body": body,
                "button": action.capitalize(),
                "url": reverse("streams:consumer_action", args=[name, consumer, action])})
        result = _apply(request.user, action, name, consumer, data)
    except ActionError as exc:
        return _error(request, exc)
    return render(request, "fragments/action_result.html", {"message": result})


def _confirm_text(action: str, name: str, consumer: str, data: dict) -> str:
    if action == "pause":
        when = ops.pause_until(data.get("until"), data.get("seconds"))
        return f"Pause {consumer} on {name} until {when:%Y-%m-%d %H:%M:%S} UTC?"
    if action == "resume":
        return f"Resume {consumer} on {name} now?"
    if action == "delete":
        return (f"Delete consumer {consumer} of {name}? Its ack state, pending acks and "
                "redelivery counts are lost; this cannot be undone.")
    point = f"sequence {data['seq']}" if "seq" in data else f"the first message at or after {data['time']}"
    how = ("delete the durable and create it again with its config starting at"
           if data.get("recreate") else "reset it to")
    return (f"Reset {consumer} on {name}: {how} {point}? {ops.reset_loses(name, consumer)}"
            + ("." if not data.get("recreate") else
               "; the consumer is gone for a moment (refused on interest and work-queue streams)."))


def _apply(user, action: str, name: str, consumer: str, data: dict) -> str:
    own = bool(data.get("confirm_own"))
    if action == "pause":
        r = ops.pause(user, name, consumer, data.get("until"), data.get("seconds"), own)
        return f"Paused {consumer} until {r['pause_until']}."
    if action == "resume":
        ops.resume(user, name, consumer, own)
        return f"Resumed {consumer}."
    if action == "delete":
        ops.delete(user, name, consumer, own)
        return f"Deleted consumer {consumer}."
    r = ops.reset(user, name, consumer, data.get("seq"), data.get("time"),
                  bool(data.get("recreate")), own)
    verb = "Recreated" if r["recreated"] else "Reset"
    return f"{verb} {consumer}: it delivers again from sequence {r['seq']}."


@require_POST
def consumer_config(request, name: str, consumer: str | None = None):
    """Create (no ``consumer``) or edit from a JSON config: the preview (the config that
    will be sent, and for an edit the diff), then with ``confirm`` the change."""
    action = "edit" if consumer else "create"
    try:
        try:
            body = json.loads(request.POST.get("config") or "{}")
        except ValueError as exc:
            raise ActionError(f"the config is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ActionError("the config must be a JSON object")
        body.pop("pause_until", None)  # shown by the detail page; pausing is its own action
        if request.POST.get("confirm_own"):
            body["confirm_own"] = True
        body["dry_run"] = request.POST.get("confirm") != "1"
        if consumer and not body["dry_run"]:  # applied only to the config it was previewed on
            body["based_on"] = request.POST.get("based_on") or None
        data = check(ConsumerConfigSerializer, body, user=request.user,
                     action=f"consumer.{action}", target=f"{name}/{consumer or ''}", role="admin")
        result = (ops.edit(request.user, name, consumer, data) if consumer
                  else ops.create(request.user, name, data))
    except ActionError as exc:
        return _error(request, exc)
    return render(request, "fragments/consumer_preview.html", {
        "r": result, "action": action, "config_json": json.dumps(result["config"], indent=2),
        "raw": request.POST.get("config") or "{}", "confirm_own": request.POST.get("confirm_own"),
        "url": request.path})

