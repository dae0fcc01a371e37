"""Key-value pages. Short views: they call the service layer (kv/buckets.py)."""

from __future__ import annotations

from django.http import Http404, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from kernel.actions import ActionError, Conflict

from . import buckets

PER_PAGE = 50


def _page_number(params) -> int:
    try:
        return max(1, int(params.get("page", 1)))
    except ValueError:
        return 1


@require_GET
def bucket_list(request):
    try:
        rows, error = buckets.buckets(), None
    except ActionError as exc:
        rows, error = [], str(exc)
    return render(request, "kv/list.html", {"rows": rows, "error": error, "page": "kv"})


@require_GET
def bucket_detail(request, bucket: str):
    number = _page_number(request.GET)
    ctx = {"bucket": bucket, "page": "kv", "number": number,
           "filter": request.GET.get("filter", "")}
    try:
        ctx["watch"] = buckets.changes(bucket)
        ctx["b"] = ctx["watch"]["bucket"]
    except ActionError as exc:
        if exc.status == 404:
            raise Http404(str(exc)) from None
        return render(request, "kv/bucket.html", {**ctx, "failed": str(exc)}, status=exc.status)
    try:
        listing = buckets.keys_page(bucket, ctx["filter"], (number - 1) * PER_PAGE, PER_PAGE)
        ctx.update(listing=listing, pages=max(1, -(-listing["count"] // PER_PAGE)))
    except ActionError as exc:
        ctx["error"] = str(exc)
    return render(request, "kv/bucket.html", ctx)


@require_GET
def bucket_changes(request, bucket: str):
    """The live watch, polled every second: 204 (nothing to swap) while the bucket's last
    revision is the one the page shows, else the panel again."""
    try:
        after = int(request.GET.get("after", "0"))
    except ValueError:
        after = 0
    try:
        row = buckets.get_bucket(bucket)
        if row["last_seq"] == after:
            return HttpResponse(status=204)
        watch = buckets.changes(bucket)
    except ActionError as exc:
        # 200: htmx 2 swaps no 4xx, and this error panel (no poll) stops the polling.
        return render(request, "kv/changes.html", {"error": str(exc), "bucket": bucket})
    return render(request, "kv/changes.html", {"watch": watch, "b": watch["bucket"]})


@require_GET
def key_detail(request, bucket: str, key: str):
    try:
        found = buckets.entry(bucket, key)
    except ActionError as exc:
        if exc.status == 404:
            raise Http404(str(exc)) from None
        return render(request, "kv/key.html", {"error": str(exc), "bucket": bucket, "key": key,
                                               "page": "kv"}, status=exc.status)
    return render(request, "kv/key.html", {"e": found, "bucket": bucket, "key": key, "page": "kv"})


@require_POST
def put(request, bucket: str):
    data = request.POST
    try:
        revision = _revision(data.get("revision"))
        done = buckets.put(request.user, bucket, data.get("key", ""), data.get("value", ""),
                           data.get("encoding") or None, data.get("confirm_own") == "1", revision)
    except Conflict as exc:  # the edit form's key moved on: offer it as it is now
        return _result(request, error=str(exc), link_text="Show the latest revision",
                       link=reverse("kv:key", args=[bucket, data.get("key", "")]))
    except ActionError as exc:
        return _result(request, error=str(exc))
    return _result(request, message=f"Stored {done['key']} as revision {done['revision']}.")


def _revision(text: str | None) -> int | None:
    """The edit form's revision (the one the value was read at); none from the put form."""
    if not text:
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        raise ActionError("revision must be a whole number")
    return int(text)


@require_POST
def delete(request, bucket: str):
    data = request.POST
    try:
        done = buckets.delete(request.user, bucket, data.get("key", ""),
                              data.get("confirm_own") == "1", data.get("purge") == "1")
    except ActionError as exc:
        return _result(request, error=str(exc))
    did = "Purged" if done["operation"] == "PURGE" else "Deleted"
    return _result(request, message=f"{did} {done['key']} (revision {done['revision']}).")


def _result(request, **ctx) -> HttpResponse:
    # 200 even for a refusal: htmx 2 swaps no 4xx answer, and the form must show why
    # (the API answers the real status; the audit has the attempt either way).
    return render(request, "fragments/action_result.html", ctx)
