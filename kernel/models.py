from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

ROLES = ("viewer", "operator", "admin")


class Heartbeat(models.Model):
    """Last sign of life of a background component (collector, Celery beat/worker).

    /healthz reads these so that one web process can tell whether the rest of
    the tree is alive, whatever process or machine it runs on.
    """

    component = models.CharField(max_length=64, unique=True)
    at = models.DateTimeField(default=timezone.now)
    detail = models.JSONField(default=dict, blank=True)

    def __str__(self) -> str:
        return f"{self.component} at {self.at:%H:%M:%S}"

    @classmethod
    def beat(cls, component: str, **detail) -> None:
        cls.objects.update_or_create(
            component=component, defaults={"at": timezone.now(), "detail": detail}
        )

    def age_seconds(self) -> float:
        return (timezone.now() - self.at).total_seconds()


class AuditRecord(models.Model):
    """Who did what to which target, with which parameters, and how it ended.

    Written by the service layer for every action, refused and failed ones
    included (outcome ``refused`` / ``failed``): a refused action changes
    nothing but the audit trail. ``unknown``: a write the bus did not confirm in time
    (it may still be stored; the detail says how to find out).
    """

    OUTCOMES = [("ok", "ok"), ("refused", "refused"), ("failed", "failed"),
                ("unknown", "unknown: the bus did not confirm in time")]

    at = models.DateTimeField(default=timezone.now, db_index=True)
    user = models.ForeignKey("auth.User", null=True, blank=True, on_delete=models.SET_NULL)
    username = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=64)
    target = models.CharField(max_length=512)
    parameters = models.JSONField(default=dict, blank=True)
    outcome = models.CharField(max_length=16, choices=OUTCOMES)
    detail = models.TextField(blank=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.username} {self.action} {self.target}: {self.outcome}"


class Lease(models.Model):
    """A lease in the database: one holder at a time among processes on any machines.

    Leadership lives on the bus (``bus.lease``); this one is for work that must go on
    when the bus cannot be reached, such as judging the bus-unreachable alert. Taken
    by a conditional update, so of several claimants at once exactly one succeeds.
    """

    name = models.CharField(max_length=64, unique=True)
    owner = models.CharField(max_length=200, blank=True)
    until = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.name}: {self.owner or 'free'} until {self.until:%H:%M:%S}"

    @classmethod
    def claim(cls, name: str, owner: str, ttl: float) -> bool:
        """Take or renew the lease for ``ttl`` seconds; False while another holds it."""
        now = timezone.now()
        cls.objects.get_or_create(name=name, defaults={"until": now})
        free_or_ours = Q(until__lt=now) | Q(owner=owner)
        return cls.objects.filter(free_or_ours, name=name).update(
            owner=owner, until=now + timedelta(seconds=ttl)) == 1

    @classmethod
    def release(cls, name: str, owner: str) -> None:
        cls.objects.filter(name=name, owner=owner).update(owner="", until=timezone.now())


class Job(models.Model):
    """A bulk replay or purge, run by Celery, with progress the page and API show.

    A job is run by one runner at a time, ever: ``claim`` takes it with a conditional
    update and a lease (``lease_owner``, ``lease_until``) that the runner renews while it
    works; every write of progress is fenced by the lease (``advance``), so a runner that
    lost its lease (it froze for longer than the lease) changes nothing. A runner that
    died leaves its lease to run out, and the next ``claim`` (``jobs.resume_stale``,
    every few seconds from beat) resumes the job from its checkpoint.
    """

    PENDING, RUNNING, CANCELLING = "pending", "running", "cancelling"
    DONE, FAILED, CANCELLED = "done", "failed", "cancelled"
    STATES = [(s, s) for s in (PENDING, RUNNING, CANCELLING, DONE, FAILED, CANCELLED)]
    ACTIVE = (PENDING, RUNNING, CANCELLING)
    FINAL = (DONE, FAILED, CANCELLED)

    kind = models.CharField(max_length=16)  # replay | purge | stream_replay
    state = models.CharField(max_length=16, choices=STATES, default=PENDING)
    params = models.JSONField(default=dict)
    total = models.IntegerField(default=0)
    done = models.IntegerField(default=0)
    failed = models.IntegerField(default=0)
    last_id = models.BigIntegerField(default=0)  # checkpoint: dead letters up to here are handled
    error = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    # The runner's lease: a runner renews it while it works; a job whose lease ran out
    # (runner killed) is taken over by another (``Job.claim``), never run by two at once.
    lease_owner = models.CharField(max_length=128, blank=True)
    lease_until = models.DateTimeField(null=True)
    unknown = models.IntegerField(default=0)  # letters whose outcome an operator must decide
    created_by = models.ForeignKey("auth.User", null=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True)

    class Meta:
        db_table = "streams_job"  # created by the streams app, before jobs were the kernel's

    @property
    def percent(self) -> int:
        handled = self.done + self.failed + self.unknown
        return min(100, int(100 * handled / self.total)) if self.total else 100

    @property
    def active(self) -> bool:
        return self.state in self.ACTIVE

    @staticmethod
    def lease_seconds() -> float:
        return float(getattr(settings, "LUCENT_JOB_LEASE_S", 10))

    def _mine(self, owner: str):
        return Job.objects.filter(pk=self.pk, lease_owner=owner, state__in=self.ACTIVE)

    def claim(self, owner: str) -> bool:
        """Take the job for ``owner`` if nobody holds a live lease on it (one runner, ever)."""
        now = timezone.now()
        taken = (Job.objects.filter(pk=self.pk, state__in=self.ACTIVE)
                 .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now) | Q(lease_owner=owner))
                 .update(lease_owner=owner, lease_until=now + timedelta(seconds=self.lease_seconds())))
        if taken != 1:
            return False  # another runner holds it, or it ended
        Job.objects.filter(pk=self.pk, state=self.PENDING).update(state=self.RUNNING)
        self.refresh_from_db()
        return True

    def renew(self, owner: str) -> bool:
        until = timezone.now() + timedelta(seconds=self.lease_seconds())
        return self._mine(owner).update(lease_until=until) == 1

    def advance(self, owner: str, **fields) -> bool:
        """Write progress (counts, checkpoint, params) if ``owner`` still holds the lease."""
        if self._mine(owner).update(**fields) != 1:
            return False
        for name, value in fields.items():
            setattr(self, name, value)
        return True

    def finish(self, owner: str, state: str) -> bool:
        """End the job (done or cancelled) and complete its audit record."""
        if not self._mine(owner).update(state=state, finished_at=timezone.now(), lease_until=None):
            return False
        self.refresh_from_db()
        audit_id = self.params.get("audit_id")
        if audit_id:
            AuditRecord.objects.filter(pk=audit_id).update(
                detail=f"job {self.pk} {state}: {self.total} matched, {self.done} succeeded, "
                       f"{self.failed} failed" + (f", {self.unknown} outcome unknown"
                                                   if self.unknown else ""))
        return True

    def fail(self, error: str, owner: str | None = None) -> None:
        rows = self._mine(owner) if owner else Job.objects.filter(pk=self.pk, state__in=self.ACTIVE)
        rows.update(state=self.FAILED, error=error[:2000], finished_at=timezone.now(),
                    lease_until=None)

    def request_cancel(self) -> None:
        """Cancel: a job nobody runs yet ends at once; a running one is told through its
        row (its runner looks every 0.25 s) and shows ``cancelling`` until it stops."""
        now = timezone.now()
        if Job.objects.filter(pk=self.pk, state=self.PENDING, lease_owner="").update(
                state=self.CANCELLED, cancel_requested=True, finished_at=now):
            self.refresh_from_db()
            return
        Job.objects.filter(pk=self.pk, state__in=(self.PENDING, self.RUNNING)).update(
            state=self.CANCELLING, cancel_requested=True)
        self.refresh_from_db()



class Quarantined(models.Model):
    """A message a pipeline could not store even with its bad fields emptied: set aside
    with the reason, counted on /metrics and noted on its page, so the pipeline moves on
    and nothing is dropped silently."""

    pipeline = models.CharField(max_length=32)  # deadletter-index | trace-index | ...
    stream = models.CharField(max_length=256)
    generation = models.CharField(max_length=64, blank=True)
    seq = models.BigIntegerField(null=True)
    subject = models.CharField(max_length=512, blank=True)
    reason = models.TextField()
    headers = models.JSONField(default=dict, blank=True)
    payload_size = models.IntegerField(default=0)
    at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        db_table = "streams_quarantined"  # created by the streams app
        constraints = [models.UniqueConstraint(fields=["pipeline", "stream", "generation", "seq"],
                                               name="quarantined_once")]

