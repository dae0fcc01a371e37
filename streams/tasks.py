from celery import shared_task

from lucent_console.bus import live
from lucent_console.bus.runner import run_with_bus

from . import history, jobs


def fetch_snapshot() -> dict | None:
    try:
        return run_with_bus("history", lambda nc: live.fetch_full(nc, timeout=5))
    except Exception:
        return None


@shared_task(name="streams.tasks.sample_history")
def sample_history() -> bool:
    return history.sample(fetch_snapshot())


@shared_task(name="streams.tasks.rollup_history")
def rollup_history() -> bool:
    return history.rollup() | history.prune()


@shared_task(name="streams.tasks.run_job")
def run_job(job_id: int) -> bool:
    # A failure is recorded on the job by the runner (fenced by its lease) and raised
    # so that the worker logs it.
    return jobs.run_job(job_id)


@shared_task(name="streams.tasks.resume_jobs")
def resume_jobs() -> bool:
    return jobs.resume_stale()
