"""History: sampled from the collector's snapshot, rolled up, pruned, charted."""

from datetime import UTC, datetime, timedelta

import pytest

from lucent_bus import jetstream as js
from streams import history, tasks
from streams.models import Sample

from .conftest import bus, run

pytestmark = pytest.mark.django_db


def _snapshot(at: datetime, messages: int, rate: float) -> dict:
    return {"ok": True, "at": at.timestamp(), "seq": 1,
            "streams": {"S": {"name": "S", "messages": messages, "bytes": messages * 10,
                              "msgs_in_per_s": rate, "pending": 5, "ack_pending": 1}},
            "consumers": {"S/c": {"acked_per_s": 2.0, "num_pending": 5, "num_ack_pending": 1,
                                  "num_redelivered": 0}}}


def test_it_samples_rolls_up_and_prunes():
    base = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
    for i in range(12):  # two minutes of 10 s samples
        assert history.sample(_snapshot(base + timedelta(seconds=10 * i), 100 + i, float(i)))
    assert Sample.objects.filter(resolution=history.RAW, kind__in="sc").count() == 24
    totals = Sample.objects.filter(resolution=history.RAW, kind="t")
    assert totals.filter(key="in_per_s").count() == 12 and totals.filter(key="pending").count() == 12
    trend = history.trends(points=4, now=base + timedelta(minutes=2))
    assert trend["in_per_s"] == [0.0, 0.0, 0.0, 5.5] and trend["pending"][-1] == 5.0
    assert history.rollup(now=base + timedelta(minutes=2, seconds=5))
    minutes = Sample.objects.filter(kind="s", resolution=history.MINUTE).order_by("at")
    assert [(m.at.minute, m.rate, m.messages) for m in minutes] == [(0, 2.5, 105), (1, 8.5, 111)]
    assert not history.rollup(now=base + timedelta(minutes=2, seconds=5))  # done once only
    assert history.prune(now=base + timedelta(hours=3))
    assert not Sample.objects.filter(resolution=history.RAW).exists()
    assert Sample.objects.filter(resolution=history.MINUTE, kind__in="sc").count() == 4


def test_it_keeps_nothing_from_a_failed_sweep():
    assert history.sample({"ok": False, "at": 0, "streams": {}, "consumers": {}}) is False
    assert history.sample(None) is False


def test_series_reads_the_right_resolution_for_the_range():
    now = datetime.now(UTC)
    history.sample(_snapshot(now - timedelta(minutes=5), 1, 3.0))
    history.sample(_snapshot(now - timedelta(minutes=90), 1, 9.0))
    assert history.series("s", "S", "15m", now)["rate"] == [3.0]
    assert history.series("s", "S", "1h", now)["rate"] == [3.0]
    assert history.series("s", "S", "24h", now)["rate"] == []  # minutes not rolled up yet


def test_the_beat_task_samples_the_collectors_snapshot(collector):
    async def setup(url):
        nc = await bus(url)
        await js.add_stream(nc, {"name": "HIST", "subjects": ["hist.>"], "storage": "memory"})
        await nc.close()

    run(setup(collector.url))
    collector.wait_for(lambda s: "HIST" in s["streams"])
    assert tasks.sample_history() is True
    assert Sample.objects.filter(kind="s", key="HIST", resolution=history.RAW).count() == 1
