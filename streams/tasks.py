from celery import shared_task

from lucent_bus import live
from lucent_bus import sync as bus_sync

from . import history


def fetch_snapshot() -> dict | None:
    try:
        return bus_sync.with_own_client("history", live.fetch_full, 5)
    except Exception:
        return None


@shared_task(name="streams.tasks.sample_history")
def sample_history() -> bool:
    return history.sample(fetch_snapshot())


@shared_task(name="streams.tasks.rollup_history")
def rollup_history() -> bool:
    return history.rollup() | history.prune()
