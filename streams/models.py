from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from lucent_console.models import AuditRecord


class Sample(models.Model):
    """Figures of one stream or consumer at one time, at one resolution.

    ``resolution`` is in seconds: 10 (sampled from the snapshot), 60 and 3600
    (rolled up from the finer ones). Consumers are keyed ``STREAM/consumer``.
    """

    STREAM, CONSUMER, TOTAL = "s", "c", "t"
    kind = models.CharField(max_length=1, choices=[(STREAM, "stream"), (CONSUMER, "consumer"),
                                                   (TOTAL, "bus-wide figure")])
    key = models.CharField(max_length=300)
    resolution = models.PositiveIntegerField()
    at = models.DateTimeField()
    messages = models.BigIntegerField(null=True)
    bytes = models.BigIntegerField(null=True)
    rate = models.FloatField(null=True)  # stream: messages in/s; consumer: acked/s
    pending = models.BigIntegerField(null=True)
    ack_pending = models.BigIntegerField(null=True)
    redelivered = models.BigIntegerField(null=True)

    class Meta:
        indexes = [models.Index(fields=["kind", "key", "resolution", "at"]),
                   models.Index(fields=["resolution", "at"])]


class DeadLetter(models.Model):
    """The index of one dead letter. The durable copy is the DEAD_LETTERS stream
    (``dl_seq``); ``manage.py deadletters reindex`` rebuilds this table from it."""

    NEW, REPLAYED, PURGED, UNKNOWN = "new", "replayed", "purged", "unknown"
    # UNKNOWN: a job's runner died while publishing it to a stream that cannot be checked
    # (no_ack, work queue, interest): whether it arrived is for an operator to decide.
    STATUSES = [(NEW, "new"), (REPLAYED, "replayed"), (PURGED, "purged"),
                (UNKNOWN, "outcome unknown")]

    dl_seq = models.BigIntegerField()
    # Which DEAD_LETTERS this row came from (the stream's ``created`` time): a stream
    # deleted and declared again, another bus or a restored backup counts from 1 again,
    # so (generation, dl_seq) is the key, never dl_seq alone.
    generation = models.CharField(max_length=64, default="", blank=True)
    digest = models.CharField(max_length=40, blank=True)  # of subject+headers+payload: a conflict check
    malformed = models.CharField(max_length=256, blank=True)  # header fields that could not be read
    dl_subject = models.CharField(max_length=512)
    stream = models.CharField(max_length=256, db_index=True)
    stream_seq = models.BigIntegerField(null=True)
    subject = models.CharField(max_length=512, db_index=True)  # the original subject
    consumer = models.CharField(max_length=256, db_index=True)
    deliveries = models.IntegerField(null=True)
    reason = models.CharField(max_length=64, db_index=True)
    error = models.TextField(blank=True)
    failed_at = models.DateTimeField(null=True)
    captured_at = models.DateTimeField(db_index=True)
    message_id = models.CharField(max_length=256, blank=True, db_index=True)
    correlation_id = models.CharField(max_length=256, blank=True, db_index=True)
    causation_id = models.CharField(max_length=256, blank=True)
    message_type = models.CharField(max_length=256, blank=True, db_index=True)
    payload_available = models.BooleanField(default=True)
    payload_size = models.IntegerField(default=0)
    payload_kind = models.CharField(max_length=16, blank=True)
    search_text = models.TextField(blank=True)  # decoded text (first 8 KiB) for free-text search
    headers = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=STATUSES, default=NEW, db_index=True)

    class Meta:
        ordering = ["-captured_at", "-dl_seq"]
        # Each filter's index also serves the page's order, so a page of 50 does not
        # sort every match first (bench/deadletter_search.py).
        constraints = [models.UniqueConstraint(fields=["generation", "dl_seq"],
                                               name="deadletter_generation_seq")]
        indexes = [models.Index(fields=["stream", "consumer", "-captured_at", "-dl_seq"]),
                   models.Index(fields=["correlation_id", "-captured_at", "-dl_seq"]),
                   models.Index(fields=["status", "captured_at"])]

    def __str__(self) -> str:
        return f"{self.stream}#{self.stream_seq} via {self.consumer} ({self.reason})"


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


class Replay(models.Model):
    """One dead letter sent back: where, under which dedup id, and the PubAck."""

    dead_letter = models.ForeignKey(DeadLetter, on_delete=models.CASCADE, related_name="replays")
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL)
    username = models.CharField(max_length=150, blank=True)
    subject = models.CharField(max_length=512)
    msg_id = models.CharField(max_length=256)
    stream = models.CharField(max_length=256)
    seq = models.BigIntegerField(null=True)  # the PubAck's; null while publishing / unknown
    duplicate = models.BooleanField(default=False)
    at = models.DateTimeField(auto_now_add=True)
    # A job's letter is recorded PUBLISHING (with the target stream's last sequence before
    # the publish) before it is sent, so a resumed job can look for it in the target stream
    # instead of trusting the duplicate window; UNKNOWN when the target cannot be checked.
    PUBLISHING, PUBLISHED, UNKNOWN = "publishing", "published", "unknown"
    state = models.CharField(max_length=16, default=PUBLISHED,
                             choices=[(s, s) for s in (PUBLISHING, PUBLISHED, UNKNOWN)])
    target_seq_before = models.BigIntegerField(null=True)
    generation = models.CharField(max_length=64, blank=True)  # the dead letter's DEAD_LETTERS

    class Meta:
        indexes = [models.Index(fields=["job", "state"])]


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
        constraints = [models.UniqueConstraint(fields=["pipeline", "stream", "generation", "seq"],
                                               name="quarantined_once")]
