from django.db import models


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

    NEW, REPLAYED, PURGED = "new", "replayed", "purged"
    STATUSES = [(NEW, "new"), (REPLAYED, "replayed"), (PURGED, "purged")]

    dl_seq = models.BigIntegerField(unique=True)
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
        indexes = [models.Index(fields=["stream", "consumer", "-captured_at", "-dl_seq"]),
                   models.Index(fields=["correlation_id", "-captured_at", "-dl_seq"]),
                   models.Index(fields=["status", "captured_at"])]

    def __str__(self) -> str:
        return f"{self.stream}#{self.stream_seq} via {self.consumer} ({self.reason})"


class Job(models.Model):
    """A bulk replay or purge, run by Celery, with progress the page and API show."""

    PENDING, RUNNING, DONE, FAILED, CANCELLED = "pending", "running", "done", "failed", "cancelled"
    STATES = [(s, s) for s in (PENDING, RUNNING, DONE, FAILED, CANCELLED)]

    kind = models.CharField(max_length=16)  # replay | purge
    state = models.CharField(max_length=16, choices=STATES, default=PENDING)
    params = models.JSONField(default=dict)
    total = models.IntegerField(default=0)
    done = models.IntegerField(default=0)
    failed = models.IntegerField(default=0)
    last_id = models.BigIntegerField(default=0)  # checkpoint: dead letters up to here are handled
    error = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    created_by = models.ForeignKey("auth.User", null=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True)

    @property
    def percent(self) -> int:
        return int(100 * (self.done + self.failed) / self.total) if self.total else 100


class Replay(models.Model):
    """One dead letter sent back: where, under which dedup id, and the PubAck."""

    dead_letter = models.ForeignKey(DeadLetter, on_delete=models.CASCADE, related_name="replays")
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL)
    username = models.CharField(max_length=150, blank=True)
    subject = models.CharField(max_length=512)
    msg_id = models.CharField(max_length=256)
    stream = models.CharField(max_length=256)
    seq = models.BigIntegerField()
    duplicate = models.BooleanField(default=False)
    at = models.DateTimeField(auto_now_add=True)
