"""Dead-letter pages. Short views over the service layer (search, replay, plans)."""

from __future__ import annotations

import base64
from urllib.parse import urlencode

from django.db.models import Count, Q
from django.http import Http404
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from kernel.actions import ActionError
from kernel.models import Job, Quarantined
from lucent_bus import deadletters as dl
from streams.operations import current_snapshot

from . import edits, plans, replay, search
from .models import DeadLetter

PER_PAGE = 50


def current_generation() -> str | None:
    """The DEAD_LETTERS generation in this process's copy of the snapshot (None when
    unknown: no snapshot yet, or no DEAD_LETTERS)."""

    stream = ((current_snapshot() or {}).get("streams") or {}).get(dl.STREAM)
    return dl.generation(stream) if stream and stream.get("created") else None


def earlier_generation(letter: DeadLetter, current: str | None) -> bool:
    """Whether ``letter`` was indexed from an earlier DEAD_LETTERS (declared again since,
    another bus): its ``dl_seq`` now names another message, or none. Rows indexed before
    generations were recorded ("") count as earlier; a row stored under
    ``<generation>#r...`` (a different message at a known sequence, after a restore) is
    of the generation it names."""
    if current is None:
        return False
    return letter.generation.split("#", 1)[0] != current


def quarantined() -> dict[str, int]:
    """pipeline -> messages it set aside (``Quarantined``)."""

    return dict(Quarantined.objects.order_by().values_list("pipeline").annotate(n=Count("id")))


def listing(params) -> dict:
    """The page's data for a set of filters (also used by the websocket)."""
    try:
        filters = search.clean_filters(params)
        error = ""
    except ActionError as exc:
        filters, error = {}, str(exc)
    qs = search.filtered(filters)
    # The count stops at search.COUNT_CAP: "10,000+" rather than a count of every row.
    page = search.CappedPaginator(qs, PER_PAGE, filters).get_page(params.get("page"))
    page.object_list = list(page.object_list)
    current = current_generation()
    for letter in page.object_list:
        letter.earlier = earlier_generation(letter, current)
    counts = quarantined()
    return {"filters": filters, "error": error, "letters": page, "groups": chips(filters, qs),
            "total": page.paginator.shown, "total_capped": page.paginator.capped,
            "quarantined": sum(counts.values()),
            "quarantined_by": sorted(counts.items()), "filter_pairs": pairs(filters)}


GROUP_KEYS = ("message_type", "consumer", "reason")


def pairs(filters: dict) -> list[tuple[str, str]]:
    """The filters as form fields: a list (``ids``) becomes one field per value."""
    out = []
    for key, value in filters.items():
        if isinstance(value, list):
            out.extend((key, str(v)) for v in value)
        else:
            out.append((key, value))
    return out


def chips(filters: dict, qs) -> list[dict]:
    """The groups, each a link that sets its type, consumer and reason as filters (the
    other filters kept), so a flood is one click from its rows; the chip of the filters
    in force links back to the list without them."""
    out = []
    for group in search.groups(qs):
        wanted = {k: group[k] for k in GROUP_KEYS if group[k]}
        active = all(filters.get(k) == group[k] for k in GROUP_KEYS if group[k]) and bool(wanted)
        others = {k: v for k, v in filters.items() if k not in GROUP_KEYS}
        query = others if active else {**others, **wanted}
        out.append({**group, "active": active, "href": "?" + urlencode(pairs(query))})
    return out


def neighbours(letter: DeadLetter) -> tuple[DeadLetter | None, DeadLetter | None]:
    """The letters before and after ``letter`` in the list's default order (newest first:
    captured_at, then dl_seq, both descending; purged ones are not listed)."""
    qs = search.filtered({})
    at, seq = letter.captured_at, letter.dl_seq
    newer = (qs.filter(Q(captured_at__gt=at) | Q(captured_at=at, dl_seq__gt=seq))
             .order_by("captured_at", "dl_seq").first())
    older = (qs.filter(Q(captured_at__lt=at) | Q(captured_at=at, dl_seq__lt=seq))
             .order_by("-captured_at", "-dl_seq").first())
    return newer, older


def duration(seconds: float | None) -> str:
    """An ETA a person reads at a glance: seconds, minutes or hours, rounded up."""
    if seconds is None:
        return ""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def parse_rate(value) -> float | None:
    """The form's rate (messages per second), checked as the job will check it, so the
    confirmation never names a rate the start would refuse."""
    if value in (None, ""):
        return None
    try:
        rate = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ActionError(f"rate must be a number of messages per second, not {str(value)[:40]!r}") from None
    if not 0 < rate < 1e9:
        raise ActionError("rate must be above 0 and finite (leave it empty for as fast as the bus acks)")
    return rate


def job_context(job: Job) -> dict:
    """Progress per letter, the rate it has run at and the time left (from its start)."""
    handled = job.done + job.failed + job.unknown
    end = job.finished_at or timezone.now()
    elapsed = max(0.0, (end - job.created_at).total_seconds())
    rate = handled / elapsed if handled and elapsed > 0 else None
    left = max(0, job.total - handled)
    eta = duration(left / rate) if rate and left and job.active else ""
    return {"job": job, "handled": handled, "left": left, "rate": rate, "eta": eta,
            "limit": (job.params or {}).get("rate")}


def job_response(request, job: Job):
    response = render(request, "fragments/job.html", job_context(job))
    if not job.active:
        # Every count on the page (header, chips, rows, the bar) changed: the list page
        # listens for this event and fetches its counts again.
        response["HX-Trigger"] = "dl-changed"
    return response


@require_GET
def dl_list(request):
    data = listing(request.GET)
    request.live_panel = {"panel": "deadletters", **data["filters"]}
    return render(request, "deadletters/list.html", {**data, "page": "deadletters",
                                                     "query": request.GET.urlencode()})


@require_GET
def dl_detail(request, pk: int):
    try:
        letter = search.get(pk)
    except ActionError as exc:
        raise Http404(str(exc)) from None
    letter.earlier = earlier_generation(letter, current_generation())
    newer, older = neighbours(letter)
    stored = search.load(letter)
    return render(request, "deadletters/detail.html", {
        "d": letter, "stored": stored, "page": "deadletters", "edit": edit_form(letter, stored),
        "replays": letter.replays.order_by("-at")[:50], "newer": newer, "older": older})


def _result(request, letter_id, message="", error: ActionError | None = None):
    letter = DeadLetter.objects.filter(pk=letter_id).first()
    return render(request, "fragments/dl_action.html",
                  {"d": letter, "message": message, "error": str(error) if error else ""},
                  status=error.status if error else 200)


def edit_form(letter: DeadLetter, stored: dict) -> dict:
    """What the edit form starts from: the stored payload as text (or base64 when it is
    not UTF-8) and the headers a replay would carry, one "Name: value" a line."""
    data = stored.get("data") or b""
    try:
        payload, encoding = data.decode("utf-8"), "text"
    except UnicodeDecodeError:
        payload, encoding = base64.b64encode(data).decode(), "base64"
    headers = edits.visible(stored.get("headers") or {})
    return {"payload": payload if stored.get("available") else "", "encoding": encoding,
            "headers": "\n".join(f"{k}: {v}" for k, v in headers.items())}


def _edit_asked(request) -> edits.Edit | None:
    """The edit the form posted (ActionError when it is not valid), or None."""
    if request.POST.get("edit") != "1":
        return None
    return edits.parse(request.POST.get("payload", ""), request.POST.get("encoding") or "text",
                       edits.parse_header_lines(request.POST.get("headers", "")))


def _edit_summary(letter: DeadLetter, edit: edits.Edit) -> dict:
    """The confirmation's account of an edit: what changed against the stored copy."""
    stored = search.load(letter)
    old_headers = edits.visible(stored.get("headers") or {})
    data, headers = edit.apply(stored.get("data") or b"", old_headers)
    return {"payload_changed": data != (stored.get("data") or b""), "bytes": len(data),
            "sha256": edits.digest(data, headers),
            "added": sorted(set(headers) - set(old_headers)),
            "removed": sorted(set(old_headers) - set(headers)),
            "changed": sorted(k for k in headers if k in old_headers
                              and headers[k] != old_headers[k])}


@require_POST
def dl_replay(request, pk: int):
    """A replay names what it will do and waits for a second click, as purge does."""
    if request.POST.get("confirm") != "1":
        try:
            plans.require_operator(request.user)
            letter = search.get(pk)
            edit = _edit_asked(request)
        except ActionError as exc:
            return _result(request, pk, error=exc)
        return render(request, "deadletters/replay_confirm.html", {
            "d": letter, "subject": (request.POST.get("subject") or "").strip() or letter.subject,
            "remove_original": request.POST.get("remove_original") == "1",
            "edit": _edit_summary(letter, edit) if edit else None, "form": request.POST})
    try:
        edit = _edit_asked(request)
        result = replay.replay(request.user, pk, request.POST.get("subject"),
                               request.POST.get("remove_original") == "1", edit)
    except ActionError as exc:
        return _result(request, pk, error=exc)
    dup = " (already there: deduplicated)" if result["duplicate"] else ""
    what = "Edited letter replayed" if edit else "Replayed"
    return _result(request, pk, f"{what} to {result['subject']}: {result['stream']} "
                                f"#{result['seq']}{dup}.")


@require_POST
def dl_purge(request, pk: int):
    try:
        plans.purge_one(request.user, pk)
    except ActionError as exc:
        return _result(request, pk, error=exc)
    return _result(request, pk, "Purged from DEAD_LETTERS.")


@require_POST
def dl_bulk(request):
    """Dry run first (counts, targets), then a job on confirmation."""
    data = request.POST
    kind = data.get("action")
    try:
        plans.require_operator(request.user)
        if kind not in ("replay", "purge"):
            raise ActionError("action must be replay or purge")
        target = data.get("target") or None if kind == "replay" else None
        filters = search.clean_filters(data)
        # An empty selection would otherwise mean "no filter": every dead letter.
        if data.get("scope") == "selected" and not filters.get("ids"):
            raise ActionError("select the dead letters first (the boxes in the table)")
        if data.get("confirm") != "1":
            preview = plans.dry_run(filters, target)
            rate = parse_rate(data.get("rate")) if kind == "replay" else None
            work = preview["matched"] - (preview["unavailable"] if kind == "replay" else 0)
            # Every value posted goes back with the confirmation, a list field value by
            # value; remove_original is asked again there, in sight.
            post = [(k, v) for k, values in data.lists() for v in values
                    if k not in ("csrfmiddlewaretoken", "confirm", "plan", "remove_original")]
            return render(request, "fragments/dl_dryrun.html", {
                "kind": kind, "preview": preview, "post": post, "rate": rate,
                "eta": duration(work / rate) if rate and work else "",
                "selected": data.get("scope") == "selected",
                "remove_original": data.get("remove_original") == "1"})
        started = plans.start_job(request.user, kind, data, target, data.get("rate"),
                                data.get("remove_original") == "1", data.get("plan"))
    except ActionError as exc:
        return render(request, "fragments/action_result.html", {"error": str(exc)}, status=exc.status)
    return job_response(request, Job.objects.get(pk=started["job"]))


@require_GET
def job_detail(request, pk: int):
    job = Job.objects.filter(pk=pk).first()
    if job is None:
        raise Http404("no such job")
    return job_response(request, job)


@require_POST
def job_cancel(request, pk: int):
    try:
        plans.cancel_job(request.user, pk)
    except ActionError as exc:
        return render(request, "fragments/action_result.html", {"error": str(exc)}, status=exc.status)
    return job_response(request, Job.objects.get(pk=pk))


def detail_url(letter: DeadLetter) -> str:
    return reverse("deadletters:detail", args=[letter.pk])
