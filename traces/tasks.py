from celery import shared_task

from . import indexer


@shared_task(name="traces.tasks.prune_traces")
def prune_traces() -> bool:
    return indexer.prune() > 0
