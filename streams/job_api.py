"""JSON API for bulk jobs: progress and cancel (see ../shared/INTERFACES.md)."""

from __future__ import annotations

from rest_framework.decorators import api_view
from rest_framework.response import Response

from lucent_console.actions import ActionError, NotFound

from . import dlq
from .models import Job


def job_json(job: Job) -> dict:
    return {"id": job.pk, "kind": job.kind, "state": job.state, "total": job.total,
            "done": job.done, "failed": job.failed, "unknown": job.unknown, "error": job.error,
            "params": {k: v for k, v in job.params.items() if k not in ("audit_id", "publishing")},
            "created_at": job.created_at.isoformat(),
            "finished_at": job.finished_at.isoformat() if job.finished_at else None}


@api_view(["GET"])
def job_detail(request, pk: str):
    job = Job.objects.filter(pk=int(pk) if str(pk).isdigit() else -1).first()
    if job is None:
        exc = NotFound(f"no job {pk[:20]!r}")
        return Response({"error": str(exc)}, status=exc.status)
    return Response(job_json(job))


@api_view(["POST"])
def job_cancel(request, pk: str):
    """Operator: the job answers ``cancelling`` and ends ``cancelled`` within a second."""
    try:
        return Response(job_json(dlq.cancel_job(request.user, pk)))
    except ActionError as exc:
        return Response({"error": str(exc)}, status=exc.status)
