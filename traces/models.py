from django.db import models


class EnvelopeRecord(models.Model):
    """Where one message went and what it says it belongs to: the trace index.

    Filled by ``traces.indexer`` from the Lucent streams; the message itself stays
    in its stream. ``seq`` is empty for streams read live (HIERARCHY, DOMAIN_EVENTS:
    see ``lucent_bus.tail``); for a dead letter ``stream`` is DEAD_LETTERS,
    ``seq`` its DEAD_LETTERS sequence and ``origin_*`` where the original was.
    Rows older than ``LUCENT_TRACE_DAYS`` (by ``indexed_at``) are pruned.
    """

    stream = models.CharField(max_length=64)
    seq = models.BigIntegerField(null=True)
    subject = models.CharField(max_length=512)
    message_id = models.CharField(max_length=256, blank=True)
    correlation_id = models.CharField(max_length=256, blank=True)
    causation_id = models.CharField(max_length=256, blank=True)
    message_type = models.CharField(max_length=256, blank=True)
    sender = models.CharField(max_length=256, blank=True)  # the envelope's sender.serviceId
    at = models.DateTimeField()  # stream time; receive time for streams read live
    indexed_at = models.DateTimeField()
    origin_stream = models.CharField(max_length=64, blank=True)
    origin_seq = models.BigIntegerField(null=True)

    class Meta:
        indexes = [models.Index(fields=["correlation_id", "at"], name="trace_corr_at"),
                   models.Index(fields=["message_id"], name="trace_msg_id")]

    def __str__(self) -> str:
        return f"{self.stream}#{self.seq} {self.subject}"


class Cursor(models.Model):
    """How far the index has read a stream: rows up to ``last_seq`` are stored.

    Written in the same transaction as those rows, so a restart resumes at
    ``last_seq + 1`` with nothing lost and nothing twice. ``generation`` is the
    stream's ``created`` time: a stream deleted and declared again (or another bus,
    a restored backup) counts from 1 again, so a cursor of another generation
    restarts at the stream's first sequence ("" for cursors from before this field:
    judged by the stream's length, as they were).
    """

    stream = models.CharField(max_length=64, unique=True)
    last_seq = models.BigIntegerField(default=0)
    generation = models.CharField(max_length=80, default="", blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.stream} @ {self.last_seq}"
