"""Situation on the bus -> webhook receives the alert, through the whole console.

Run: .venv/bin/python bench/alert_latency.py   (about 1 minute; target p99 < 3 s)

Starts its own nats-server and `manage.py up` on it (no --demo: collector, Celery
worker and beat, web), registers a webhook pointing at a receiver started here
(in the console's database), then 30 times, at a random phase of the sweep:
a new service instance reports ``status: down`` on lucent.services.bench.health;
the collector's next sweep fires ``service-down`` (default rule, for_s 0), records
the notification, and the Celery worker posts it. Timed from the heartbeat's flush
to the receiver's request. Baseline in the same run: the time a bare HTTP POST
to the same receiver takes from this process.
"""

import asyncio
import os
import random
import sys
import time
import urllib.request
from pathlib import Path

import nats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _live  # noqa: E402
from lucent_bus import envelope  # noqa: E402
from tests.support import WebhookReceiver  # noqa: E402

SAMPLES, TIMEOUT = 30, 15.0


def register(var_dir: Path, url: str) -> None:
    """The webhook, written to the console's own database."""
    os.environ["LUCENT_VAR_DIR"] = str(var_dir)
    os.environ["DJANGO_SETTINGS_MODULE"] = "lucent_console.settings"
    import django

    django.setup()
    from alerts.models import Webhook

    Webhook.objects.create(name="bench", url=url)


def arrived(receiver, key: str) -> float | None:
    return next((t for t, body in receiver.received
                 if f"{body.get('rule')}:{body.get('subject')}" == key), None)


async def bench(server, console, receiver) -> None:
    interval = float(os.environ["LUCENT_SWEEP_INTERVAL"])
    nc = await nats.connect(server.url)
    results, lost = [], []
    for i in range(SAMPLES):
        await asyncio.sleep(random.uniform(0, interval))
        instance = f"b-{i}"
        await nc.publish("lucent.services.bench.health", envelope.encode(envelope.make(
            "HealthCheck", "lucent.services.bench.health", {"status": "down"},
            sender={"serviceId": "bench", "instanceId": instance})))
        await nc.flush()
        t0 = time.monotonic()
        key = f"service-down:bench/{instance}"
        while (seen := arrived(receiver, key)) is None and time.monotonic() - t0 < TIMEOUT:
            await asyncio.sleep(0.01)
        if seen is None:
            lost.append(key)
        else:
            results.append(seen - t0)
    await nc.close()
    met = "met" if results and _live.pct(results, 99) < 3 else "MISSED"
    print(f"heartbeat 'down' -> webhook received: {_live.summary(results)}  [p99 < 3 s: {met}]")
    print(f"lost (no webhook within {TIMEOUT:.0f} s): {len(lost)}")
    posts = []
    for _ in range(50):
        t0 = time.monotonic()
        urllib.request.urlopen(urllib.request.Request(receiver.url, b'{"rule": "x"}', method="POST"),
                               timeout=5).read()
        posts.append(time.monotonic() - t0)
    print(f"baseline, a bare HTTP POST to the receiver: {_live.summary(posts)}")


def main() -> None:
    _live.header("alert_latency")
    receiver = WebhookReceiver()
    with _live.console_on_own_bus() as (server, console):
        register(console.var_dir, receiver.url)
        asyncio.run(bench(server, console, receiver))


if __name__ == "__main__":
    main()
