"""History of the snapshot in the database: sample, roll up, prune, read.

Steps are small functions that return whether they did work; the Celery tasks
in ``tasks.py`` are one-line wrappers, so tests call these directly.
Retention: 10 s samples for 2 h, 1 min for 2 days, 1 h for 30 days.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.db.models import Avg, Max
from django.db.models.functions import TruncHour, TruncMinute
from django.utils import timezone

from .models import Sample
from .operations import totals

RAW, MINUTE, HOUR = 10, 60, 3600
RETENTION = {RAW: timedelta(hours=2), MINUTE: timedelta(days=2), HOUR: timedelta(days=30)}
RANGES = {  # chart range -> (resolution, span)
    "15m": (RAW, timedelta(minutes=15)),
    "1h": (RAW, timedelta(hours=1)),
    "24h": (MINUTE, timedelta(hours=24)),
    "7d": (HOUR, timedelta(days=7)),
}


def sample(snapshot: dict | None) -> bool:
    """Store one 10 s sample of every stream and consumer of a good snapshot."""
    if not snapshot or not snapshot.get("ok"):
        return False
    at = datetime.fromtimestamp(snapshot["at"], UTC)
    rows = [Sample(kind=Sample.STREAM, key=s["name"], resolution=RAW, at=at, messages=s["messages"],
                   bytes=s["bytes"], rate=s["msgs_in_per_s"], pending=s["pending"],
                   ack_pending=s["ack_pending"])
            for s in snapshot["streams"].values()]
    rows += [Sample(kind=Sample.CONSUMER, key=key, resolution=RAW, at=at, rate=c["acked_per_s"],
                    pending=c["num_pending"], ack_pending=c["num_ack_pending"],
                    redelivered=c["num_redelivered"])
             for key, c in snapshot["consumers"].items()]

    figures = totals(snapshot)
    rows += [Sample(kind=Sample.TOTAL, key=key, resolution=RAW, at=at, rate=figures[key])
             for key in TREND_KEYS if figures.get(key) is not None]
    Sample.objects.bulk_create(rows, batch_size=1000)
    return bool(rows)


# The bus-wide figures the overview shows with a 24 h sparkline.
TREND_KEYS = ("in_per_s", "pending", "deadletters_1h", "agents_working", "agents_failing",
              "services_up", "services_down")


def trends(points: int = 96, now: datetime | None = None) -> dict[str, list[float]]:
    """The last 24 h of each bus-wide figure, averaged into ``points`` buckets."""
    now = now or timezone.now()
    span = timedelta(hours=24)
    step = span / points
    out = {key: [0.0] * points for key in TREND_KEYS}
    seen = {key: [0] * points for key in TREND_KEYS}
    rows = (Sample.objects.filter(kind=Sample.TOTAL, resolution__in=(RAW, MINUTE), at__gte=now - span)
            .values_list("key", "at", "rate"))
    for key, at, value in rows:
        if key in out and value is not None:
            i = min(points - 1, int((at - (now - span)) / step))
            out[key][i] += value
            seen[key][i] += 1
    return {key: [v / n if n else 0.0 for v, n in zip(out[key], seen[key], strict=True)]
            for key in TREND_KEYS}


def _rollup(source: int, target: int, trunc, now: datetime) -> int:
    """Aggregate complete ``target``-second buckets of ``source`` samples not yet rolled up."""
    last = Sample.objects.filter(resolution=target).aggregate(m=Max("at"))["m"]
    start = last + timedelta(seconds=target) if last else None
    end = now.replace(second=0, microsecond=0)
    if target == HOUR:
        end = end.replace(minute=0)
    qs = Sample.objects.filter(resolution=source, at__lt=end)
    if start is not None:
        qs = qs.filter(at__gte=start)
    groups = (qs.annotate(bucket=trunc("at")).values("kind", "key", "bucket")
              .annotate(messages=Max("messages"), bytes=Max("bytes"), rate=Avg("rate"),
                        pending=Avg("pending"), ack_pending=Avg("ack_pending"),
                        redelivered=Max("redelivered")))
    rows = [Sample(kind=g["kind"], key=g["key"], resolution=target, at=g["bucket"],
                   messages=g["messages"], bytes=g["bytes"], rate=g["rate"],
                   pending=round(g["pending"]) if g["pending"] is not None else None,
                   ack_pending=round(g["ack_pending"]) if g["ack_pending"] is not None else None,
                   redelivered=g["redelivered"]) for g in groups]
    Sample.objects.bulk_create(rows, batch_size=1000)
    return len(rows)


def rollup(now: datetime | None = None) -> bool:
    now = now or timezone.now()
    made = _rollup(RAW, MINUTE, TruncMinute, now)
    made += _rollup(MINUTE, HOUR, TruncHour, now)
    return made > 0


def prune(now: datetime | None = None) -> bool:
    now = now or timezone.now()
    removed = 0
    for resolution, keep in RETENTION.items():
        removed += Sample.objects.filter(resolution=resolution, at__lt=now - keep).delete()[0]
    return removed > 0


def series(kind: str, keys: str | list[str], range_: str, now: datetime | None = None) -> dict:
    """Chart data of one stream or consumer over a range; with several keys, their sum
    at each time (consumers are sampled together)."""
    resolution, span = RANGES.get(range_, RANGES["1h"])
    now = now or timezone.now()
    keys = [keys] if isinstance(keys, str) else keys
    rows = (Sample.objects.filter(kind=kind, key__in=keys, resolution=resolution, at__gte=now - span)
            .order_by("at").values_list("at", "rate", "pending", "ack_pending"))
    sums: dict = {}
    for at, *values in rows:
        old = sums.setdefault(at, [None, None, None])
        sums[at] = [v if o is None else o + (v or 0) for o, v in zip(old, values, strict=True)]
    out = {"t": [at.isoformat() for at in sums], "rate": [], "pending": [], "ack_pending": []}
    for rate, pending, ack_pending in sums.values():
        out["rate"].append(rate)
        out["pending"].append(pending)
        out["ack_pending"].append(ack_pending)
    return out


def chart(data: dict, charts: list[dict]) -> dict:
    """What charts.js draws: times, the series by key, and which charts show which."""
    return {"t": data["t"], "series": {k: v for k, v in data.items() if k != "t"}, "charts": charts}


STREAM_CHARTS = [
    {"id": "chart-rate", "title": "Message rate", "traces": [["rate", "messages in/s"]]},
    {"id": "chart-pending", "title": "Pending",
     "traces": [["pending", "pending"], ["ack_pending", "ack pending"]]},
]
