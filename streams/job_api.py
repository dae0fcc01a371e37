"""JSON API for bulk jobs: progress and cancel (see ../shared/INTERFACES.md)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.decorators import api_view
from rest_framework.response import Response

from lucent_console.actions import NotFound
from lucent_console.api import ERRORS, ID
from lucent_console.serializers import EmptySerializer, check_request

from . import dlq
from .models import Job
from .serializers import JobRow


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
    return Response(job_json(dlq.cancel_job(request.user, pk)))
