from celery import shared_task

from .models import Heartbeat


def record_beat_heartbeat() -> bool:
    """Prove that beat schedules and a worker runs tasks (read by /healthz)."""
    Heartbeat.beat("celery")
    return True


@shared_task
def beat_heartbeat() -> bool:
    return record_beat_heartbeat()
