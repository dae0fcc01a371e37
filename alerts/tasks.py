from celery import shared_task

from . import notify


@shared_task(name="alerts.tasks.deliver_notification", bind=True,
             max_retries=notify.MAX_ATTEMPTS + 2, acks_late=True)
def deliver_notification(self, pk: int) -> None:
    """One attempt; the next after a backoff (also when the database was busy)."""
    try:
        done = notify.deliver(pk)
    except Exception as exc:
        raise self.retry(exc=exc, countdown=notify.backoff(self.request.retries)) from exc
    if not done:
        raise self.retry(countdown=notify.backoff(self.request.retries))


@shared_task(name="alerts.tasks.resume_notifications")
def resume_notifications() -> int:
    return notify.resume_pending()
