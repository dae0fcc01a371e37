"""Sweep cost against bus size, against a bare nats-py loop making the same API calls.

Run: .venv/bin/python bench/sweep.py   (about two minutes)

For 10, 100 and 1,000 streams with 5 consumers each: the collector's sweep
(STREAM.LIST pages + CONSUMER.LIST per stream, 16 at a time, then building the
snapshot with rates) against the same requests made by plain nats-py with the
same concurrency and nothing but json.loads. Then the RSS of a real
`manage.py collector` process sweeping the 1,000-stream bus.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, bus, fill, header, rss_mb

from lucent_bus import embedded
from streams import snapshot as snap

RUNS = 7


async def bare_loop(nc) -> int:
    """The same API calls, as little work as possible around them."""
    streams, offset = [], 0
    while True:
        msg = await nc.request("$JS.API.STREAM.LIST", json.dumps({"offset": offset}).encode(), timeout=10)
        reply = json.loads(msg.data)
        page = reply.get("streams") or []
        streams += page
        offset += len(page)
        if not page or offset >= reply["total"]:
            break
    sem = asyncio.Semaphore(snap.CONCURRENCY)

    async def consumers(name):
        async with sem:
            msg = await nc.request(f"$JS.API.CONSUMER.LIST.{name}", b'{"offset": 0}', timeout=10)
            return json.loads(msg.data)

    names = [s["config"]["name"] for s in streams if s["state"].get("consumer_count")]
    await asyncio.gather(*(consumers(n) for n in names))
    return len(streams)


async def ours(nc, tracker) -> int:
    """What the collector does each sweep (Collector.sweep_once, minus publishing)."""
    built = await tracker.collect(nc, {})
    return len(built["streams"])


async def timed(fn, *args) -> float:
    started = time.perf_counter()
    await fn(*args)
    return time.perf_counter() - started


async def measure(url: str, sizes: list[int]) -> None:
    nc = await bus(url)
    done = 0
    print(f"{'streams':>8} {'consumers':>9} {'bare nats-py (ms)':>18} "
          f"{'collector sweep (ms)':>21} {'ratio':>6}")
    for size in sizes:
        await fill(nc, size, 5, start=done)
        done = size
        tracker = snap.Tracker()
        bare, mine = [], []
        for _ in range(RUNS):  # interleaved, so noise hits both alike
            bare.append(await timed(bare_loop, nc))
            mine.append(await timed(ours, nc, tracker))
        b, m = statistics.median(bare) * 1000, statistics.median(mine) * 1000
        print(f"{size:>8} {size * 5:>9} {b:>18.1f} {m:>21.1f} {m / b:>6.2f}")
    await nc.close()


def collector_rss(url: str) -> None:
    with tempfile.TemporaryDirectory() as var:
        env = {**os.environ, "NATS_URL": url, "LUCENT_VAR_DIR": var}
        subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
        proc = subprocess.Popen([sys.executable, "manage.py", "collector"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            samples = []
            for _ in range(20):
                time.sleep(1)
                samples.append(rss_mb(proc.pid))
            print(f"collector RSS after 20 one-second sweeps of 1,000 streams / 5,000 consumers: "
                  f"{samples[-1]:.0f} MB (peak {max(samples):.0f} MB)")
        finally:
            proc.terminate()
            proc.wait(10)


def main() -> None:
    header("sweep cost (median of 7 runs each)")
    with tempfile.TemporaryDirectory() as tmp:
        server = embedded.single(Path(tmp) / "js").start().wait()
        try:
            asyncio.run(measure(server.url, [10, 100, 1000]))
            collector_rss(server.url)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
