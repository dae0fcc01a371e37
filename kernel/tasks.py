from celery import shared_task

from . import jobs
from .models import Heartbeat


def record_beat_heartbeat() -> bool:
    """Prove that beat schedules and a worker runs tasks (read by /healthz)."""
    Heartbeat.beat("celery")
    return True


@shared_task(name="kernel.tasks.beat_heartbeat")
def beat_heartbeat() -> bool:
    return record_beat_heartbeat()


@shared_task(name="lucent.jobs.run")
def run_job(job_id: int) -> bool:
    # A failure is recorded on the job by the runner (fenced by its lease) and raised
    # so that the worker logs it.
    return jobs.run_job(job_id)


@shared_task(name="lucent.jobs.resume")
def resume_jobs() -> bool:
    return jobs.resume_stale()
