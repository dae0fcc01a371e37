"""Dead-letter pages. Short views over the service layer (``dlq``)."""

from __future__ import annotations

from django.core.paginator import Paginator
from django.http import Http404
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from kernel.actions import ActionError
from kernel.models import Job, Quarantined
from lucent_bus import deadletters as dl
from streams.operations import current_snapshot

from . import plans, replay, search
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
    from django.db.models import Count

    return dict(Quarantined.objects.order_by().values_list("pipeline").annotate(n=Count("id")))


def listing(params) -> dict:
    """The page's data for a set of filters (also used by the websocket)."""
    try:
        filters = search.clean_filters(params)
        error = ""
    except ActionError as exc:
        filters, error = {}, str(exc)
    qs = search.filtered(filters)
    page = Paginator(qs, PER_PAGE).get_page(params.get("page"))
    page.object_list = list(page.object_list)
    current = current_generation()
    for letter in page.object_list:
        letter.earlier = earlier_generation(letter, current)
    counts = quarantined()
    return {"filters": filters, "error": error, "letters": page, "groups": search.groups(qs),
            "total": page.paginator.count, "quarantined": sum(counts.values()),
            "quarantined_by": sorted(counts.items())}


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
    return render(request, "deadletters/detail.html", {
        "d": letter, "stored": search.load(letter), "page": "deadletters",
        "replays": letter.replays.order_by("-at")[:50]})


def _result(request, letter_id, message="", error: ActionError | None = None):
    letter = DeadLetter.objects.filter(pk=letter_id).first()
    return render(request, "fragments/dl_action.html",
                  {"d": letter, "message": message, "error": str(error) if error else ""},
                  status=error.status if error else 200)


@require_POST
def dl_replay(request, pk: int):
    try:
        result = replay.replay(request.user, pk, request.POST.get("subject"),
                            request.POST.get("remove_original") == "1")
    except ActionError as exc:
        return _result(request, pk, error=exc)
    dup = " (already there: deduplicated)" if result["duplicate"] else ""
    return _result(request, pk, f"Replayed to {result['subject']}: {result['stream']} "
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
        if data.get("confirm") != "1":
            preview = plans.dry_run(filters, target)
            return render(request, "fragments/dl_dryrun.html", {
                "kind": kind, "preview": preview, "post": data.items()})
        started = plans.start_job(request.user, kind, data, target, data.get("rate"),
                                data.get("remove_original") == "1", data.get("plan"))
    except ActionError as exc:
        return render(request, "fragments/action_result.html", {"error": str(exc)}, status=exc.status)
    return render(request, "fragments/job.html", {"job": Job.objects.get(pk=started["job"])})


@require_GET
def job_detail(request, pk: int):
    job = Job.objects.filter(pk=pk).first()
    if job is None:
        raise Http404("no such job")
    return render(request, "fragments/job.html", {"job": job})


@require_POST
def job_cancel(request, pk: int):
    try:
        plans.cancel_job(request.user, pk)
    except ActionError as exc:
        return render(request, "fragments/action_result.html", {"error": str(exc)}, status=exc.status)
    return render(request, "fragments/job.html", {"job": Job.objects.get(pk=pk)})


def detail_url(letter: DeadLetter) -> str:
    return reverse("deadletters:detail", args=[letter.pk])
