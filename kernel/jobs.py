"""Bulk jobs (dead-letter replay and purge, stream replay): run once, to the end.

One runner, ever: ``run_job`` claims the job with a lease (``Job.claim``) that a
``LeaseKeeper`` thread renews while the job runs; it also reads the job's row every
0.25 s, so a cancel takes effect within a second at any rate. A runner killed
(worker gone, kill -9) stops renewing; when the lease has run out, ``resume_stale``
(every few seconds from beat) queues the job again and the next runner resumes it
from its checkpoint. Every write of progress is fenced by the lease.

What a job does is its kind's handler, registered by the app that owns the kind
(``register`` in its ``AppConfig.ready``): this module knows no app.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.utils import timezone

from lucent_bus import jetstream as js
from lucent_bus import sync as bus_sync
from lucent_bus.client import web_client

from .actions import ActionError
from .models import Job

log = logging.getLogger("lucent.jobs")
WATCH_S = 0.25  # how often a runner reads its job's row (cancel) and may renew its lease
PENDING_GRACE_S = 30  # a job queued this long with no runner is queued again
BUS_RETRY_S = 120

# kind -> handler(job, owner, keeper) returning the end state (DONE, CANCELLED) or None
# when the lease was lost (another runner has the job).
Handler = Callable[[Job, str, "LeaseKeeper"], str | None]
HANDLERS: dict[str, Handler] = {}


def register(kind: str, handler: Handler) -> None:
    HANDLERS[kind] = handler


def owner_name() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeaseKeeper(threading.Thread):
    """Renews the runner's lease and watches for a cancel, beside the runner."""

    def __init__(self, job: Job, owner: str) -> None:
        super().__init__(name=f"lucent-job-{job.pk}", daemon=True)
        self.job, self.owner = job, owner
        self.cancelled = threading.Event()
        self.lost = threading.Event()
        self._done = threading.Event()

    def run(self) -> None:
        renew_every = max(WATCH_S, Job.lease_seconds() / 3)
        renewed = time.monotonic()
        try:
            while not self._done.wait(WATCH_S):
                row = Job.objects.filter(pk=self.job.pk).values(
                    "cancel_requested", "lease_owner", "state").first()
                if row is None or row["lease_owner"] != self.owner or row["state"] in Job.FINAL:
                    self.lost.set()
                    return
                if row["cancel_requested"]:
                    self.cancelled.set()
                if time.monotonic() - renewed >= renew_every:
                    if not self.job.renew(self.owner):
                        self.lost.set()
                        return
                    renewed = time.monotonic()
        except Exception:  # database away: the runner stops at its next check
            log.exception("job %s: lease keeper failed", self.job.pk)
            self.lost.set()
        finally:
            connection.close()

    def should_stop(self) -> bool:
        return self.cancelled.is_set() or self.lost.is_set()

    def stop(self) -> None:
        self._done.set()
        self.join(5)


def run_job(job_id: int, owner: str | None = None) -> bool:
    """Claim the job and run it (or resume it) to its end. Returns whether it did work:
    False when the job ended already or another runner holds it."""
    job = Job.objects.filter(pk=job_id).first()
    if job is None or job.state in Job.FINAL:
        return False
    handler = HANDLERS.get(job.kind)
    if handler is None:
        job.fail(f"no handler for jobs of kind {job.kind!r}")
        return False
    owner = owner or owner_name()
    if not job.claim(owner):
        return False
    keeper = LeaseKeeper(job, owner)
    keeper.start()
    try:
        state = handler(job, owner, keeper)
        if state is not None:
            job.finish(owner, state)
    except Exception as exc:
        job.fail(f"{type(exc).__name__}: {exc}", owner)
        raise
    finally:
        keeper.stop()
    return True


def end_state(keeper: LeaseKeeper) -> str | None:
    """CANCELLED after a cancel, None when the lease was lost (another runner has it)."""
    if keeper.lost.is_set():
        return None
    return Job.CANCELLED if keeper.cancelled.is_set() else Job.DONE


def enqueue(job_id: int) -> None:
    """Hand a job to Celery (or run it here, with LUCENT_JOBS_INLINE, as tests do)."""
    if settings.LUCENT_JOBS_INLINE:
        run_job(job_id)
    else:
        from . import tasks  # the Celery app's tasks import this module

        tasks.run_job.delay(job_id)


def resume_stale() -> bool:
    """Queue again every job whose runner is gone (lease run out) or that no runner took
    (queued long ago, never claimed). Safe to run anywhere, any number of times: only one
    runner can claim a job. Returns whether it queued anything."""
    now = timezone.now()
    stale = list(Job.objects.filter(state__in=(Job.RUNNING, Job.CANCELLING), lease_until__lt=now)
                 .values_list("pk", flat=True))
    stale += list(Job.objects.filter(state=Job.PENDING, lease_owner="",
                                     created_at__lt=now - timedelta(seconds=PENDING_GRACE_S))
                  .values_list("pk", flat=True))
    for pk in stale:
        log.warning("job %s: no live runner; queued again", pk)
        enqueue(pk)
    return bool(stale)


# ------------------------------------------------------------------ for handlers

class RateLimit:
    def __init__(self, rate: float | None) -> None:
        self.interval = 1 / rate if rate else 0.0
        self.next = time.monotonic()

    async def wait(self) -> None:
        """Take the next free slot (before sleeping, so concurrent callers queue up)."""
        if not self.interval:
            return
        now = time.monotonic()
        slot = max(self.next, now)
        self.next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)

    def wait_sync(self, stop, step: float = 0.05) -> bool:
        """Sleep until the next free slot without taking it; False if ``stop()`` came first."""
        while True:
            if stop():
                return False
            left = self.next - time.monotonic()
            if left <= 0:
                return True
            time.sleep(min(step, left))


def retrying(go):
    """Run ``go(nc)``; while the bus is away, wait and run it again (up to BUS_RETRY_S).
    Callers make ``go`` safe to repeat: its publishes carry deterministic ids."""
    deadline = time.monotonic() + BUS_RETRY_S
    while True:
        try:
            if not bus_sync.run(_connected):
                raise ConnectionError("bus unreachable")
            return bus_sync.with_client(go)
        except (ConnectionError, OSError, js.JetStreamError) as exc:
            if time.monotonic() > deadline:
                raise ActionError(f"bus unavailable for {BUS_RETRY_S}s: {exc}") from exc
            time.sleep(1)


async def _connected() -> bool:
    try:
        nc = await web_client.get()
    except Exception:
        return False
    return nc.is_connected
