"""Publish-to-browser latency of the live streams panel, with a raw NATS baseline.

Starts its own nats-server and `manage.py up` on it (no --demo), logs in as admin, opens
/ws/live/?panel=streams, then repeatedly changes the bus and times how long the change
takes to reach the websocket:

* publish: one JetStream message to A_BENCH; from the publish ack until a frame carries
  A_BENCH's row with the new message count;
* create: a new stream A_NEW_nn; from the STREAM.CREATE reply until a frame carries its row.

The bench also listens to the collector's deltas (lucent.console.live.delta) to split each
latency into ack -> delta (waiting for the next sweep + the sweep) and delta -> websocket
(relay, render, send). Samples run one at a time; after each, a random pause of
U(0, sweep interval) puts the next change at a uniformly random phase of the sweep, so
the expected latency is about interval/2 + sweep time, and the worst about interval + sweep.

Run: .venv/bin/python bench/live_latency.py   (LUCENT_SWEEP_INTERVAL=1.0 by default)
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
from lucent_bus import live  # noqa: E402

PUBLISHES = 60
CREATE_EVERY = 5  # a stream-creation sample after every 5th publish sample (12 in all)
TIMEOUT = 10.0  # a change not on the websocket after this long counts as lost
BASELINE_ROUND_TRIPS = 300


async def nats_baseline(url: str) -> list[float]:
    """Core NATS: publish on one connection, receive on another, one at a time."""
    pub, sub = await nats.connect(url), await nats.connect(url)
    got: asyncio.Future | None = None

    async def on_msg(msg):
        if got and not got.done():
            got.set_result(time.monotonic())

    await sub.subscribe("bench.rtt", cb=on_msg)
    await sub.flush()
    out = []
    for _ in range(BASELINE_ROUND_TRIPS):
        got = asyncio.get_running_loop().create_future()
        t0 = time.monotonic()
        await pub.publish("bench.rtt", b"x" * 64)
        out.append(await asyncio.wait_for(got, 5) - t0)
    await pub.close()
    await sub.close()
    return out


async def bench(server, console) -> None:
    interval = float(os.environ["LUCENT_SWEEP_INTERVAL"])
    base = console.url
    session = await asyncio.to_thread(_live.login, base)
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    await js.add_stream(name="A_BENCH", subjects=["a_bench.>"], storage="memory")

    # First time (monotonic) each (stream, count) was seen: on the websocket, in a delta.
    on_ws: dict[tuple, float] = {}
    in_delta: dict[tuple, float] = {}
    changed = asyncio.Event()
    sweep_ms: list[float] = []  # the collector's own sweep time, as its deltas report it

    async def on_delta(delta):
        now = time.monotonic()
        if delta.get("sweep_ms") is not None:
            sweep_ms.append(delta["sweep_ms"] / 1000)
        for name, s in delta.get("streams", {}).items():
            in_delta.setdefault((name, s["messages"]), now)

    await live.subscribe_deltas(nc, on_delta)

    async def read(ws):
        async for frame in ws:
            now = time.monotonic()
            for key in _live.rows(frame).items():
                on_ws.setdefault(key, now)
            changed.set()

    async def wait_seen(key) -> float | None:
        deadline = time.monotonic() + TIMEOUT
        while True:
            changed.clear()  # before the check: a frame arriving after it sets the event again
            if key in on_ws or time.monotonic() >= deadline:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), deadline - time.monotonic())
        return on_ws.get(key)

    uri = f"ws://127.0.0.1:{console.port}/ws/live/?panel=streams"
    async with websockets.connect(uri, origin=websockets.Origin(base),
                                  additional_headers={"Cookie": f"sessionid={session}"}) as ws:
        reader = asyncio.create_task(read(ws))
        if await wait_seen(("A_BENCH", 0)) is None:
            raise RuntimeError("A_BENCH never appeared on the websocket")

        results = {"publish": [], "create": []}
        split = {"publish": ([], []), "create": ([], [])}  # (ack -> delta, delta -> ws)
        ack_rtt, lost = [], []
        count = created = 0
        started = time.monotonic()
        for i in range(PUBLISHES + PUBLISHES // CREATE_EVERY):
            await asyncio.sleep(random.uniform(0, interval))  # random phase vs the sweep
            if i % (CREATE_EVERY + 1) == CREATE_EVERY:
                created += 1
                kind, key = "create", (f"A_NEW_{created:02d}", 0)
                await js.add_stream(name=key[0], subjects=[f"a_new_{created}.>"], storage="memory")
                t0 = time.monotonic()
            else:
                count += 1
                kind, key = "publish", ("A_BENCH", count)
                t_pub = time.monotonic()
                await js.publish("a_bench.x", b"tick")
                t0 = time.monotonic()
                ack_rtt.append(t0 - t_pub)
            seen = await wait_seen(key)
            if seen is None:
                lost.append(key)
                continue
            results[kind].append(seen - t0)
            if key in in_delta:
                split[kind][0].append(in_delta[key] - t0)
                split[kind][1].append(seen - in_delta[key])
        wall = time.monotonic() - started
        reader.cancel()

    print(f"\n{count} publish + {created} create samples in {wall:.0f}s, lost (not on the "
          f"websocket within {TIMEOUT:.0f}s): {len(lost)} {lost or ''}")
    for kind in ("publish", "create"):
        xs = results[kind]
        target = ""
        if kind == "publish":
            target = f"  [p99 < 1500 ms: {'met' if xs and _live.pct(xs, 99) < 1.5 else 'MISSED'}]"
        print(f"{kind:8s} -> websocket row: {_live.summary(xs)}{target}")
        print(f"{'':8s}    ack -> delta:    {_live.summary(split[kind][0])}")
        print(f"{'':8s}    delta -> ws:     {_live.summary(split[kind][1])}")
    all_xs = results["publish"] + results["create"]
    print(f"all      -> websocket row: {_live.summary(all_xs)}")
    print(f"collector sweep time (from its deltas): {_live.summary(sweep_ms)}")
    print(f"baseline JetStream publish -> ack: {_live.summary(ack_rtt)}")
    rtt = await nats_baseline(server.url)
    print(f"baseline core NATS publish -> subscriber: {_live.summary(rtt, 1e6, 'us')}")
    await nc.close()


def main() -> None:
    _live.header("live_latency")
    with _live.console_on_own_bus() as (server, console):
        asyncio.run(bench(server, console))


if __name__ == "__main__":
    main()
