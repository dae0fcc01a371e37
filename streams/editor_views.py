"""Stream editor pages: new, edit and delete, each previewed (config JSON, diff, lint
findings, what must be confirmed) before it is applied. Short views: the form is
turned into a body with NATS JSON names, checked by the API's serializer and handed
to ``streams.editor``."""

from __future__ import annotations

import json

from django.http import Http404
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from kernel.actions import ActionError, audited
from kernel.roles import has_role
from kernel.serializers import check

from . import editor
from .editor_serializers import StreamConfigSerializer, StreamDeleteSerializer

TEXT, LIST, INT, SECONDS, FLAG = "text", "list", "int", "seconds", "flag"
# (field, label, kind): the form's fields; the others of a live config are kept.
FORM = (
    ("subjects", "Subjects (space separated)", LIST), ("description", "Description", TEXT),
    ("retention", "Retention", TEXT), ("storage", "Storage", TEXT),
    ("num_replicas", "Replicas", INT), ("discard", "Discard", TEXT),
    ("max_msgs", "Max messages (-1: none)", INT), ("max_bytes", "Max bytes (-1: none)", INT),
    ("max_age", "Max age, seconds (0: none)", SECONDS),
    ("max_msgs_per_subject", "Max per subject (-1: none)", INT),
    ("duplicate_window", "Duplicate window, seconds", SECONDS),
    ("no_ack", "No ack (request/reply subjects)", FLAG), ("allow_direct", "Direct get", FLAG),
    ("allow_rollup_hdrs", "Allow roll-ups", FLAG), ("deny_delete", "Deny delete", FLAG),
    ("deny_purge", "Deny purge", FLAG),
    ("allow_msg_ttl", "Per-message TTL (2.11+)", FLAG),
    ("subject_delete_marker_ttl", "Subject delete marker TTL, seconds (2.11+)", SECONDS),
    ("allow_msg_counter", "Counters (2.12+, create only)", FLAG),
    ("allow_msg_schedules", "Message schedules (2.12+)", FLAG),
)
CLEARABLE = StreamConfigSerializer.clearable
CHOICES = {"retention": ("limits", "interest", "workqueue"), "storage": ("file", "memory"),
           "discard": ("old", "new")}


def form_body(post, editing: bool = False) -> dict:
    """The form as a body with NATS JSON names (seconds -> nanoseconds); empty fields
    are left out (kept on an edit, the server's default on a create), except a text
    field emptied on an edit form, which clears it."""
    body: dict = {}
    if post.get("name"):
        body["name"] = post["name"].strip()
    for key, label, kind in FORM:
        raw = (post.get(key) or "").strip()
        if kind == FLAG:
            body[key] = post.get(key) == "on"
        elif not raw:
            if editing and kind == TEXT and key in post and key in CLEARABLE:
                body[key] = ""
            continue
        elif kind == LIST:
            body[key] = raw.replace(",", " ").split()
        elif kind == SECONDS:
            try:
                body[key] = round(float(raw) * 1e9)
            except (ValueError, OverflowError):
                raise ActionError(f"{label}: {raw[:40]!r} is not a number of seconds") from None
        else:
            body[key] = raw
    return body


def form_values(config: dict) -> dict:
    """A live config in the form's units."""
    values = {}
    for key, _label, kind in FORM:
        value = config.get(key)
        if kind == LIST:
            value = " ".join(value or [])
        elif kind == SECONDS:
            value = f"{value / 1e9:g}" if value else ""
        values[key] = value
    return values


def _fields(values: dict) -> list[dict]:
    return [{"key": k, "label": label, "kind": kind, "value": values.get(k),
             "choices": CHOICES.get(k)} for k, label, kind in FORM]


def _checked(request, body: dict, create: bool, name: str = "") -> dict:
    context = {"create": True} if create else {"name": name}
    return check(StreamConfigSerializer, body, user=request.user, context=context, role="admin",
                 action="stream.create" if create else "stream.edit", target=name or
                 str(body.get("name", ""))[:255])


def _preview(request, name: str, create: bool):
    try:
        if not has_role(request.user, "admin"):
            # Refused and recorded like every attempt (audited raises before the body).
            with audited(request.user, "stream.create" if create else "stream.edit",
                         name or request.POST.get("name", ""), {}, "admin"):
                raise AssertionError("unreachable: audited refuses a user without the role")
        body = form_body(request.POST, editing=not create)
        data = _checked(request, {**body, "dry_run": True}, create, name)
        plan = editor.create(request.user, data) if create else editor.edit(request.user, name, data)
    except ActionError as exc:
        return render(request, "streams/edit_preview.html", {"error": str(exc)}, status=exc.status)
    apply_url = reverse("streams:create") if create else reverse("streams:edit_apply", args=[name])
    return render(request, "streams/edit_preview.html", {
        "plan": plan, "body": json.dumps(body), "apply_url": apply_url,
        "rows": [(k, editor.shown(k, old), editor.shown(k, new)) for k, old, new in plan["diff"]],
        "drift": [(k, editor.shown(k, declared), editor.shown(k, proposed))
                  for k, declared, proposed in plan["declared_drift"]],
        "config_json": json.dumps(plan["config"], indent=2, sort_keys=True)})


def _apply(request, name: str, create: bool):
    try:
        try:
            body = json.loads(request.POST.get("body") or "")
        except ValueError:
            raise ActionError("not previewed: preview the change first") from None
        confirms = {k: request.POST.get(k) == "1"
                    for k in ("confirm_lint", "confirm_declared", "confirm_own")}
        if not create:  # applied only to the config it was previewed on
            confirms["based_on"] = request.POST.get("based_on") or None
        data = _checked(request, {**body, **confirms} if isinstance(body, dict) else body,
                        create, name)
        result = editor.create(request.user, data) if create else editor.edit(request.user, name,
                                                                             data)
    except ActionError as exc:
        return render(request, "streams/edit_preview.html", {"error": str(exc)}, status=exc.status)
    return render(request, "streams/edit_preview.html", {"done": result})


@require_POST
def create_preview(request):
    return _preview(request, "", create=True)


@require_POST
def create(request):
    return _apply(request, "", create=True)


@require_GET
def edit_page(request, name: str):
    try:
        info = editor.describe(name)
    except ActionError as exc:
        if exc.status == 404:
            raise Http404(str(exc)) from None
        return render(request, "streams/edit.html", {"error": str(exc), "name": name,
                                                     "page": "streams"}, status=exc.status)
    return render(request, "streams/edit.html", {
        "name": name, "info": info, "page": "streams",
        "fields": _fields(form_values(info["config"]))})


@require_POST
def edit_preview(request, name: str):
    return _preview(request, name, create=False)


@require_POST
def edit_apply(request, name: str):
    return _apply(request, name, create=False)


@require_GET
def config_fragment(request, name: str):
    """The stream's full config as the server reports it, for the stream page: declared
    by the topology or not, the console's own, newer features (TTL, markers ...)."""
    try:
        info = editor.describe(name)
    except ActionError as exc:
        return render(request, "streams/edit_config.html", {"error": str(exc)}, status=exc.status)
    return render(request, "streams/edit_config.html", {"info": info, "name": name})


@require_POST
def delete_stream(request, name: str):
    """Without ``confirm``: what would be deleted (a dry run) and the confirmation;
    with ``confirm`` naming the stream: delete it."""
    post = request.POST
    body = {k: post.get(k) == "1" for k in ("confirm_declared", "confirm_own")}
    confirmed = post.get("confirm") == name
    try:
        data = check(StreamDeleteSerializer, {**body, "dry_run": not confirmed},
                     user=request.user, action="stream.delete", target=name, role="admin")
        result = editor.delete(request.user, name, data)
    except ActionError as exc:
        return render(request, "streams/edit_delete.html", {"error": str(exc)}, status=exc.status)
    return render(request, "streams/edit_delete.html", {"plan": result, "name": name})


@require_GET
def new_form(request):
    """The new-stream form with its defaults (loaded into the streams list)."""
    return render(request, "streams/edit_new.html", {"fields": _fields({
        "retention": "limits", "storage": "file", "num_replicas": 1, "discard": "old",
        "duplicate_window": "120"})})
