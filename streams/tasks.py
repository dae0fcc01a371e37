from celery import shared_task

from lucent_bus import live
from lucent_bus.runner import run_with_bus

from . import history


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
