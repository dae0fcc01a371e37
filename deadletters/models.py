"""The dead-letter index and the record of every replay."""



from django.db import models


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
    stream = models.CharField(max_length=256)
    stream_seq = models.BigIntegerField(null=True)
    subject = models.CharField(max_length=512)  # the original subject
    consumer = models.CharField(max_length=256)
    deliveries = models.IntegerField(null=True)
    reason = models.CharField(max_length=64)
    error = models.TextField(blank=True)
    failed_at = models.DateTimeField(null=True)
    captured_at = models.DateTimeField(db_index=True)
    message_id = models.CharField(max_length=256, blank=True, db_index=True)
    correlation_id = models.CharField(max_length=256, blank=True)
    causation_id = models.CharField(max_length=256, blank=True)
    message_type = models.CharField(max_length=256, blank=True)
    payload_available = models.BooleanField(default=True)
    payload_size = models.IntegerField(default=0)
    payload_kind = models.CharField(max_length=16, blank=True)
    search_text = models.TextField(blank=True)  # decoded text (first 8 KiB) for free-text search
    headers = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=STATUSES, default=NEW, db_index=True)

    class Meta:
        db_table = "streams_deadletter"  # created by the streams app, before dead letters had theirs
        ordering = ["-captured_at", "-dl_seq"]
        # Each filter's index also serves the page's order, so a page of 50 does not
        # sort every match first, and ends with status, so that a count (which leaves
        # purged letters out) reads the index alone (bench/deadletter_search.py).
        # PostgreSQL has one more, on subject COLLATE "C", for wildcard subjects
        # (migration 0003; search.py).
        constraints = [models.UniqueConstraint(fields=["generation", "dl_seq"],
                                               name="deadletter_generation_seq")]
        indexes = [models.Index(fields=["stream", "consumer", "-captured_at", "-dl_seq", "status"],
                                name="dl_stream_consumer_at"),
                   models.Index(fields=["consumer", "-captured_at", "-dl_seq", "status"],
                                name="dl_consumer_at"),
                   models.Index(fields=["subject", "-captured_at", "-dl_seq", "status"],
                                name="dl_subject_at"),
                   models.Index(fields=["reason", "-captured_at", "-dl_seq", "status"],
                                name="dl_reason_at"),
                   models.Index(fields=["message_type", "-captured_at", "-dl_seq", "status"],
                                name="dl_type_at"),
                   models.Index(fields=["correlation_id", "-captured_at", "-dl_seq", "status"],
                                name="dl_correlation_at"),
                   models.Index(fields=["status", "captured_at"])]

    def __str__(self) -> str:
        return f"{self.stream}#{self.stream_seq} via {self.consumer} ({self.reason})"



class Replay(models.Model):
    """One dead letter sent back: where, under which dedup id, and the PubAck."""

    dead_letter = models.ForeignKey(DeadLetter, on_delete=models.CASCADE, related_name="replays")
    job = models.ForeignKey("lucent_console.Job", null=True, blank=True, on_delete=models.SET_NULL)
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
    # An edited replay's message whole (payload, its encoding, headers, sha256); null when
    # the letter was sent as stored (the original stays in DEAD_LETTERS either way).
    edit = models.JSONField(null=True, blank=True)
    generation = models.CharField(max_length=64, blank=True)  # the dead letter's DEAD_LETTERS

    class Meta:
        db_table = "streams_replay"  # created by the streams app
        indexes = [models.Index(fields=["job", "state"])]

