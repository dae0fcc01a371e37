from celery import shared_task

from lucent_console.bus import live
from lucent_console.bus.runner import run_with_bus

from . import history


def fetch_snapshot() -> dict | None:
    try:
        return run_with_bus("history", lambda nc: live.fetch_full(nc, timeout=5))
    except Exception:
        return None


@shared_task
def sample_history() -> bool:
    return history.sample(fetch_snapshot())


@shared_task
def rollup_history() -> bool:
    return history.rollup() | history.prune()


@shared_task
def run_job(job_id: int) -> bool:
    from . import dlq

    try:
        return dlq.run_job(job_id)
    except Exception as exc:
        dlq.job_failed(job_id, f"{type(exc).__name__}: {exc}")
        raise
