"""JSON API for dead letters and jobs (see ../shared/INTERFACES.md)."""

from __future__ import annotations

import base64

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.decorators import api_view
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param

from kernel.actions import NotFound, audited
from kernel.api import ERRORS, ID, PAGING, READ_ERRORS, Page
from kernel.models import Job
from kernel.serializers import EmptySerializer, JobOrDryRun, JobRow, check_request

from . import plans, replay, search
from .serializers import (
    BulkPurgeSerializer,
    BulkReplaySerializer,
    DeadLetterDetail,
    DeadLetterFilterSerializer,
    DeadLetterPage,
    DeadLetterReplaySerializer,
    Purged,
    Replayed,
)
from .views import current_generation, earlier_generation

KEYS = ("id", "stream", "stream_seq", "subject", "consumer", "deliveries", "reason", "error",
        "captured_at", "failed_at", "message_id", "correlation_id", "causation_id",
        "message_type", "status", "payload_available", "payload_size", "dl_seq", "generation")


def letter_row(letter, current: str | None | bool = False) -> dict:
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


LIST_FILTERS = [OpenApiParameter(name, str, required=False) for name in search.FILTERS]


@extend_schema(operation_id="deadletters_list", parameters=[*PAGING, *LIST_FILTERS],
               responses={200: DeadLetterPage, 400: ERRORS[400], **READ_ERRORS})
@api_view(["GET"])
def dl_list(request):
    filters = search.clean_filters(request.GET)
    paginator = CappedPage(filters)
    page = paginator.paginate_queryset(search.filtered(filters), request)
    return paginator.get_paginated_response([letter_row(x) for x in page])


class CappedPage(Page):
    """The list's paging with the page's capped count (``search.count``): over 1 M dead
    letters an exact count of a broad filter costs more than the page. ``count_capped``
    says the count stopped at the cap; ``next`` keeps going past it while pages are full."""

    def __init__(self, filters: dict) -> None:
        self.filters, self.count_capped, self.more = filters, False, False

    def get_count(self, queryset) -> int:
        n, self.count_capped = search.count(queryset, self.filters)
        return n

    def paginate_queryset(self, queryset, request, view=None):
        self.request, self.limit = request, self.get_limit(request)
        self.count, self.offset = self.get_count(queryset), self.get_offset(request)
        if self.count == 0 or (self.offset > self.count and not self.count_capped):
            return []
        page = list(queryset[self.offset:self.offset + self.limit])
        self.more = (self.count_capped and len(page) == self.limit
                     and self.offset + self.limit >= self.count)
        return page

    def get_next_link(self):
        if not self.more:
            return super().get_next_link()
        url = replace_query_param(self.request.build_absolute_uri(), self.limit_query_param,
                                  self.limit)
        return replace_query_param(url, self.offset_query_param, self.offset + self.limit)

    def get_paginated_response(self, data):
        response = super().get_paginated_response(data)
        response.data["count_capped"] = self.count_capped
        return response


@extend_schema(operation_id="deadletter_detail", methods=["GET"], parameters=[ID],
               responses={200: DeadLetterDetail, **ERRORS})
@extend_schema(operation_id="deadletter_delete", methods=["DELETE"], request=None,
               parameters=[ID], responses={200: Purged, **ERRORS})
@api_view(["GET", "DELETE"])
def dl_detail(request, pk: str):
    if request.method == "DELETE":
        check_request(request, EmptySerializer, action="deadletter.purge", target=str(pk)[:64],
                      role="operator")
        return Response(plans.purge_one(request.user, pk))
    if not (pk.isascii() and pk.isdigit() and len(pk) < 19):
        # Beyond 64 bits the database cannot even look (OverflowError): no such letter.
        raise NotFound(f"no dead letter {pk[:20]!r}")
    letter = search.get(pk)
    stored = search.load(letter)
    out = {**letter_row(letter), "headers": stored.get("headers", letter.headers)}
    data = stored.get("data") if stored.get("available") else None
    if data is None:
        out.update(payload=None, payload_encoding=None, payload_note=stored.get("why", ""))
    else:
        try:
            out.update(payload=data.decode("utf-8"), payload_encoding="text")
        except UnicodeDecodeError:
            out.update(payload=base64.b64encode(data).decode(), payload_encoding="base64")
    return Response(out)


@extend_schema(operation_id="deadletter_replay", request=DeadLetterReplaySerializer,
               parameters=[ID], responses={200: Replayed, **ERRORS})
@api_view(["POST"])
def dl_replay(request, pk: str):
    data = check_request(request, DeadLetterReplaySerializer, action="deadletter.replay",
                         target=str(pk)[:64], role="operator")
    return Response(replay.replay(request.user, pk, data.get("subject"),
                                  bool(data.get("remove_original")), data.get("edit")))


def _bulk(request, kind: str, serializer: type[DeadLetterFilterSerializer]):
    """Replay: ``subject`` is the target, ``subject_filter`` filters; purge: ``subject``
    filters. Every one, only with ``"all": true``."""
    action = f"deadletter.{kind}_bulk"
    data = check_request(request, serializer, action=action, target="DEAD_LETTERS",
                         role="operator")
    filters = serializer.filters(data)
    target = data.get("subject") if kind == "replay" else None
    if data.get("dry_run"):
        with audited(request.user, f"{action}.dry_run", "DEAD_LETTERS", data, "operator") as outcome:
            preview = plans.dry_run(search.clean_filters(filters), target)
            outcome.detail = f"dry run: {preview['matched']} matched"
        return Response({"dry_run": True, **preview})
    return Response(plans.start_job(request.user, kind, filters, target, data.get("rate"),
                                  bool(data.get("remove_original")), data.get("plan"),
                                  everything=bool(data.get("all"))))


@extend_schema(operation_id="deadletters_replay", request=BulkReplaySerializer,
               responses={200: JobOrDryRun, **ERRORS})
@api_view(["POST"])
def dl_replay_bulk(request):
    return _bulk(request, "replay", BulkReplaySerializer)


@extend_schema(operation_id="deadletters_purge", request=BulkPurgeSerializer,
               responses={200: JobOrDryRun, **ERRORS})
@api_view(["POST"])
def dl_purge_bulk(request):
    return _bulk(request, "purge", BulkPurgeSerializer)


# ------------------------------------------------------------------ jobs

def job_json(job: Job) -> dict:
    return {"id": job.pk, "kind": job.kind, "state": job.state, "total": job.total,
            "done": job.done, "failed": job.failed, "unknown": job.unknown, "error": job.error,
            "params": {k: v for k, v in job.params.items() if k not in ("audit_id", "publishing")},
            "created_at": job.created_at.isoformat(),
            "finished_at": job.finished_at.isoformat() if job.finished_at else None}


@extend_schema(operation_id="job_detail", parameters=[ID], responses={200: JobRow, **ERRORS})
@api_view(["GET"])
def job_detail(request, pk: str):
    # isdigit() is true for "²" and other digits int() refuses; only ASCII digits are ids.
    job = Job.objects.filter(pk=int(pk) if pk.isascii() and pk.isdigit() and len(pk) < 19
                             else -1).first()
    if job is None:
        raise NotFound(f"no job {pk[:20]!r}")
    return Response(job_json(job))


@extend_schema(operation_id="job_cancel", request=EmptySerializer, parameters=[ID],
               responses={200: JobRow, **ERRORS})
@api_view(["POST"])
def job_cancel(request, pk: str):
    """Operator: the job answers ``cancelling`` and ends ``cancelled`` within a second."""
    check_request(request, EmptySerializer, action="job.cancel", target=pk[:64], role="operator")
    return Response(job_json(plans.cancel_job(request.user, pk)))
