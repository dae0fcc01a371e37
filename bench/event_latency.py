"""Event-driven latency: an agent job or a service heartbeat published -> its fragment
received over the websocket, with a core NATS baseline measured in the same run.

Starts its own nats-server and `manage.py up` on it (no --demo), logs in as admin and opens
/ws/live/?panel=agents and /ws/live/?panel=services. Then, one sample at a time at a random
phase of the collector's sweep (U(0, interval) pause), either publishes an agent job on
lucent.agents.bench.job (JetStream, timed from its PubAck) until a frame carries its feed
row (id="job-<seq>"), or publishes a heartbeat from a new instance on
lucent.services.bench.health (core, timed after flush) until a frame names that instance.
These do not wait for a sweep: the collector pushes event deltas within 50 ms.

Run: .venv/bin/python bench/event_latency.py   (target p99 < 250 ms)
"""

import asyncio
import contextlib
import os
import random
import sys
import time
from pathlib import Path

import nats
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _live  # noqa: E402
from bench.live_latency import nats_baseline  # noqa: E402
from lucent_bus import envelope  # noqa: E402

SAMPLES = 100  # half jobs, half heartbeats
TIMEOUT = 10.0
TARGET_S = 0.25


async def bench(server, console) -> None:
    interval = float(os.environ["LUCENT_SWEEP_INTERVAL"])
    session = await asyncio.to_thread(_live.login, console.url)
    nc = await nats.connect(server.url)
    seen: dict[str, float] = {}
    wanted: dict[str, asyncio.Event] = {}

    async def read(ws):
        async for frame in ws:
            now = time.monotonic()
            for marker, event in list(wanted.items()):
                if marker in frame and marker not in seen:
                    seen[marker] = now
                    event.set()

    async def wait(marker: str) -> float | None:
        event = wanted.setdefault(marker, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), TIMEOUT)
        return seen.get(marker)

    def connect(panel: str):
        return websockets.connect(f"ws://127.0.0.1:{console.port}/ws/live/?panel={panel}",
                                  origin=websockets.Origin(console.url),
                                  additional_headers={"Cookie": f"sessionid={session}"})

    results = {"agent job": [], "heartbeat": []}
    lost = []
    async with connect("agents") as agents_ws, connect("services") as services_ws:
        readers = [asyncio.create_task(read(agents_ws)), asyncio.create_task(read(services_ws))]
        await asyncio.sleep(2 * interval)
        for i in range(SAMPLES):
            await asyncio.sleep(random.uniform(0, interval))
            if i % 2 == 0:
                kind = "agent job"
                env = envelope.make("BenchJob", "lucent.agents.bench.job", {"i": i},
                                    sender={"serviceId": "bench"})
                ack = await nc.jetstream().publish("lucent.agents.bench.job", envelope.encode(env))
                t0 = time.monotonic()
                marker = f'id="job-{ack.seq}"'
            else:
                kind = "heartbeat"
                instance = f"bench-instance-{i}"
                await nc.publish("lucent.services.bench.health", envelope.encode(envelope.make(
                    "HealthCheck", "lucent.services.bench.health", {"status": "ok"},
                    sender={"serviceId": "bench", "instanceId": instance})))
                await nc.flush()
                t0 = time.monotonic()
                marker = f"<code>{instance}</code>"
            at = await wait(marker)
            if at is None:
                lost.append(marker)
            else:
                results[kind].append(at - t0)
        for r in readers:
            r.cancel()

    for kind, xs in results.items():
        met = "met" if xs and _live.pct(xs, 99) < TARGET_S else "MISSED"
        print(f"{kind:10s} -> websocket fragment: {_live.summary(xs)}  [p99 < 250 ms: {met}]")
    print(f"lost (not on the websocket within {TIMEOUT:.0f}s): {len(lost)}")
    rtt = await nats_baseline(server.url)
    print(f"baseline core NATS publish -> subscriber: {_live.summary(rtt, 1e6, 'us')}")
    await nc.close()


def main() -> None:
    _live.header("event_latency")
    with _live.console_on_own_bus() as (server, console):
        asyncio.run(bench(server, console))


if __name__ == "__main__":
    main()
