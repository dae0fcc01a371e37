"""Stream pages. Short views: read the snapshot or call the service layer."""

from __future__ import annotations

from urllib.parse import urlencode

from django.conf import settings
from django.http import Http404, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from kernel.actions import ActionError, Refused
from kernel.models import Job
from kernel.roles import has_role
from lucent_bus.own import own_stream

from . import browser, history, operations
from .models import Sample
from .replay import start_stream_replay


def _listing_args(params) -> dict:
    try:
        page = int(params.get("page", 1))
    except ValueError:
        page = 1
    return {"q": params.get("q", ""), "sort": params.get("sort", "name"),
            "desc": params.get("desc") == "1", "page": page}


@require_GET
def stream_list(request):
    args = _listing_args(request.GET)
    listing = operations.stream_page(operations.current_snapshot(), **args)
    request.live_panel = {"panel": "streams", **{k: v for k, v in args.items()}}
    return render(request, "streams/list.html", {
        "listing": listing, "page": "streams", "spark": operations.relay.history})


@require_GET
def stream_detail(request, name: str):
    snapshot = operations.current_snapshot()
    try:
        stream = operations.get_stream(snapshot, name)
    except ActionError as exc:
        raise Http404(str(exc)) from None
    range_ = request.GET.get("range", "1h")
    if range_ not in history.RANGES:
        range_ = "1h"
    request.live_panel = {"panel": "stream", "name": name}
    return render(request, "streams/detail.html", {
        "s": stream, "page": "streams", "consumers": operations.consumers_of(snapshot, name),
        "top": operations.top_subjects(stream), "ranges": list(history.RANGES), "range": range_,
        "chart": history.chart(history.series(Sample.STREAM, name, range_), history.STREAM_CHARTS),
        "live_chart": range_ in ("15m", "1h"),
    })


@require_GET
def stream_messages(request, name: str):
    """A page of the message browser (newest first; ``seq``/``time`` jump, ``before``
    pages back), with links to the newest, newer, older and oldest pages."""
    ctx: dict = {"name": name}
    try:
        stream = operations.get_stream(operations.current_snapshot(), name)
        result = browser.browse(stream, request.GET.get("seq"), request.GET.get("time"),
                                request.GET.get("subject"), request.GET.get("count", 20),
                                request.GET.get("before"))
    except ActionError as exc:
        ctx["error"] = str(exc)
        return render(request, "fragments/messages.html", ctx, status=exc.status)
    ctx.update(result, nav=_browser_nav(request, name, result))
    return render(request, "fragments/messages.html", ctx)


def _browser_nav(request, name: str, result: dict) -> dict:
    """The URLs of the pages around this one, keeping its subject and count."""
    base = reverse("streams:messages", args=[name])
    keep = {k: request.GET[k] for k in ("subject", "count") if request.GET.get(k)}

    def url(**where) -> str:
        return f"{base}?{urlencode({**keep, **where})}"

    older, newer = result["older_before"], result["newer_seq"]
    return {"newest": url() if result["jumped"] or request.GET.get("before") else None,
            "newer": url(seq=newer) if newer else None,
            "older": url(before=older) if older else None,
            "oldest": url(seq=result["first_seq"]) if older else None}


@require_GET
def stream_message(request, name: str, seq: str):
    """One stored message on a page of its own, its body shown up to
    ``LUCENT_MESSAGE_VIEW_BYTES``, with a download of the raw bytes."""

    try:
        stream = operations.get_stream(operations.current_snapshot(), name)
        m = browser.message(stream, seq)
    except ActionError as exc:
        if exc.status == 404:
            raise Http404(str(exc)) from None
        return render(request, "streams/message.html", {"error": str(exc), "name": name,
                                                        "page": "streams"}, status=exc.status)
    return render(request, "streams/message.html", {
        "m": m, "name": name, "page": "streams", "limit": settings.LUCENT_MESSAGE_VIEW_BYTES})


@require_GET
def stream_message_raw(request, name: str, seq: str):
    """The stored payload as it is, as a download (never rendered by the browser)."""
    try:
        stream = operations.get_stream(operations.current_snapshot(), name)
        msg = browser.raw_message(stream, seq)
    except ActionError as exc:
        if exc.status == 404:
            raise Http404(str(exc)) from None
        return HttpResponse(str(exc), status=exc.status, content_type="text/plain; charset=utf-8")
    response = HttpResponse(bytes(msg["data"] or b""), content_type="application/octet-stream")
    response["Content-Disposition"] = f'attachment; filename="{_filename(name)}-{msg["seq"]}.bin"'
    response["X-Content-Type-Options"] = "nosniff"
    return response


def _filename(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:100] or "message"


def _error(request, exc: ActionError) -> HttpResponse:
    return render(request, "fragments/action_result.html", {"error": str(exc)}, status=exc.status)


@require_POST
def purge_preview(request, name: str):
    data = request.POST
    try:
        if not has_role(request.user, "admin"):
            raise Refused("purging needs the admin role")
        params = operations.purge_params(data.get("subject"), data.get("keep"), data.get("seq"))
        stream = operations.get_stream(operations.current_snapshot(), name)
        preview = operations.purge_preview(stream, params)
    except ActionError as exc:
        return _error(request, exc)
    return render(request, "fragments/confirm.html", {
        "text": preview["text"], "params": params, "stream": name, "button": "Purge",
        "action": reverse("streams:purge", args=[name]), "own": own_stream(name)})


@require_POST
def purge(request, name: str):
    data = request.POST
    try:
        if data.get("confirm") != name:
            raise ActionError("not confirmed: the confirmation must name the stream")
        purged = operations.purge(request.user, name, data.get("subject"), data.get("keep"),
                                data.get("seq"), confirm_own=data.get("confirm_own") == "1")
    except ActionError as exc:
        return _error(request, exc)
    return render(request, "fragments/action_result.html",
                  {"message": f"Purged {purged:,} message{'s' if purged != 1 else ''} from {name}."})


@require_POST
def delete_preview(request, name: str):
    try:
        if not has_role(request.user, "admin"):
            raise Refused("deleting messages needs the admin role")
        seq = operations.purge_params(seq=request.POST.get("seq")).get("seq")
        if seq is None:
            raise ActionError("a sequence is required")
        operations.get_stream(operations.current_snapshot(), name)
    except ActionError as exc:
        return _error(request, exc)
    return render(request, "fragments/confirm.html", {
        "text": f"Delete message #{seq:,} from {name}", "params": {"seq": seq}, "stream": name,
        "button": "Delete", "action": reverse("streams:delete", args=[name]),
        "own": own_stream(name)})


@require_POST
def delete_message(request, name: str):
    try:
        if request.POST.get("confirm") != name:
            raise ActionError("not confirmed: the confirmation must name the stream")
        operations.delete_message(request.user, name, request.POST.get("seq"),
                                  confirm_own=request.POST.get("confirm_own") == "1")
    except ActionError as exc:
        return _error(request, exc)
    return render(request, "fragments/action_result.html",
                  {"message": f"Deleted message #{request.POST.get('seq')} from {name}."})


@require_POST
def stream_replay(request, name: str):
    """Dry run first, then the job (operator): replay a range to a subject."""

    data = request.POST
    args = (request.user, name, data.get("target"), data.get("start_seq"), data.get("end_seq"),
            data.get("start_time"), data.get("subject"), data.get("rate"))
    try:
        if data.get("confirm") != "1":
            preview = start_stream_replay(*args, dry_run=True)
            return render(request, "fragments/stream_replay_confirm.html",
                          {"preview": preview, "post": data.items(), "name": name})
        started = start_stream_replay(*args)
    except ActionError as exc:
        return _error(request, exc)
    return render(request, "fragments/job.html", {"job": Job.objects.get(pk=started["job"])})
