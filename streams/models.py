

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

