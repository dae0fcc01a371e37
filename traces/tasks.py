from celery import shared_task

from . import indexer


@shared_task
def prune_traces() -> bool:
    return indexer.prune() > 0
