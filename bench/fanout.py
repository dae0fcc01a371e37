"""Fan-out of the live streams panel: 200 websocket clients on the one uvicorn of `manage.py up`.

Starts its own nats-server and `up` on it (no --demo), logs in once and gives the session
cookie to every client. All clients run in this process on one asyncio loop, on
/ws/live/?panel=streams, with the websockets defaults (permessage-deflate offered, as a
browser does). The bench publishes one JetStream message to A_BENCH every ~1 s; each
client records when a frame first shows A_BENCH's row with each new message count.

* delivery delay = frame arrival - publish ack (includes waiting for the next sweep, so
  about interval/2 on average); fan-out delay = frame arrival - the collector's delta
  arriving at this process (relay + render + send to every socket).
* expected updates for a client = every A_BENCH count the collector's deltas carried while
  the client was connected (two publishes in one sweep show only the second count, so
  that is not a loss); received = the counts its frames showed.
* CPU = utime+stime of the uvicorn process (and the collector, and this process, which
  shares the 2 cores) over the publishing phase.

Phase 1 is the baseline: 1 client, 15 updates. Phase 2: 200 clients, 30 updates.

Run: .venv/bin/python bench/fanout.py   (LUCENT_SWEEP_INTERVAL=1.0 by default)
"""

import asyncio
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

CLIENTS = 200
UPDATES = 30
BASELINE_UPDATES = 15
CONNECT_CONCURRENCY = 20
GRACE = 5.0  # after the last publish, how long frames may still come


class Client:
    def __init__(self) -> None:
        self.seen: dict[int, float] = {}  # A_BENCH count -> first frame showing it
        self.frames = 0
        self.ready = asyncio.get_running_loop().create_future()  # time of the panel frame
        self.ws = self.task = None
        self.deflate = False

    async def run(self, uri: str, origin: str, session: str) -> None:
        async with websockets.connect(uri, origin=websockets.Origin(origin), open_timeout=60,
                                      additional_headers={"Cookie": f"sessionid={session}"},
                                      ping_interval=None) as ws:
            self.ws = ws
            self.deflate = bool(ws.protocol.extensions)
            async for frame in ws:
                now = time.monotonic()  # first thing: arrival time
                self.frames += 1
                if "stream-A_BENCH" in frame:
                    count = _live.rows(frame).get("A_BENCH")
                    if count is not None:
                        self.seen.setdefault(count, now)
                        if not self.ready.done():
                            self.ready.set_result(now)


async def connect_all(n: int, uri: str, origin: str, session: str) -> list[Client]:
    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one() -> Client:
        async with sem:
            c = Client()
            c.task = asyncio.create_task(c.run(uri, origin, session))
            await asyncio.wait_for(asyncio.shield(c.ready), 60)
            return c

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def drive(js, n: int, state: dict, acked: dict[int, float]) -> float:
    """n publishes ~1 s apart; returns the time of the last ack."""
    for _ in range(n):
        await asyncio.sleep(random.uniform(0.5, 1.5))  # mean 1 s, varied so the sweep phase varies
        await js.publish("a_bench.x", b"tick")
        state["count"] += 1
        acked[state["count"]] = time.monotonic()
    await asyncio.sleep(GRACE)
    return acked[state["count"]]


def report(label: str, clients: list[Client], acked: dict, in_delta: dict, counts: range) -> None:
    delays, fanout, per_update_last, lost, expected_total = [], [], {}, 0, 0
    for c in clients:
        ready = c.ready.result()
        expected = [k for k in counts if k in in_delta and in_delta[k] >= ready]
        expected_total += len(expected)
        for k in expected:
            if k not in c.seen:
                lost += 1
                continue
            delays.append(c.seen[k] - acked[k])
            fanout.append(c.seen[k] - in_delta[k])
            per_update_last[k] = max(per_update_last.get(k, 0), c.seen[k] - in_delta[k])
    published = len(counts)
    carried = sum(1 for k in counts if k in in_delta)
    print(f"\n[{label}] {len(clients)} client(s), {published} publishes, {carried} distinct counts "
          f"in the collector's deltas; updates received {expected_total - lost}/{expected_total} "
          f"expected, lost {lost}")
    print(f"  delivery delay (ack -> frame):          {_live.summary(delays)}")
    print(f"  fan-out delay (delta -> frame):         {_live.summary(fanout)}")
    print(f"  last client per update (delta -> frame): {_live.summary(list(per_update_last.values()))}")


async def bench(server, console) -> None:
    base, uri = console.url, f"ws://127.0.0.1:{console.port}/ws/live/?panel=streams"
    session = await asyncio.to_thread(_live.login, base)
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    await js.add_stream(name="A_BENCH", subjects=["a_bench.>"], storage="memory")
    in_delta: dict[int, float] = {}  # A_BENCH count -> when its delta reached this process

    async def on_delta(delta):
        s = delta.get("streams", {}).get("A_BENCH")
        if s is not None:
            in_delta.setdefault(s["messages"], time.monotonic())

    await live.subscribe_deltas(nc, on_delta)
    uv, collector = _live.child_pid(console, "uvicorn"), _live.child_pid(console, "manage.py collector")
    state, acked = {"count": 0}, {}

    # Phase 1: one client, the baseline.
    [solo] = await connect_all(1, uri, base, session)
    cpu0, t0 = _live.cpu_seconds(uv), time.monotonic()
    await drive(js, BASELINE_UPDATES, state, acked)
    solo_cpu = (_live.cpu_seconds(uv) - cpu0) / (time.monotonic() - t0)
    solo_frames = solo.frames / (time.monotonic() - solo.ready.result())
    await solo.ws.close()
    await solo.task
    report("baseline", [solo], acked, in_delta, range(1, state["count"] + 1))
    print(f"  uvicorn CPU {solo_cpu:.1%} of one core; {solo_frames:.2f} frames/s to the client; "
          f"permessage-deflate: {solo.deflate}")

    # Phase 2: 200 clients.
    t = time.monotonic()
    clients = await connect_all(CLIENTS, uri, base, session)
    connect_s = time.monotonic() - t
    await asyncio.sleep(1)
    first = state["count"] + 1
    frames0 = sum(c.frames for c in clients)
    cpu = {"uvicorn": (uv, _live.cpu_seconds(uv)), "collector": (collector, _live.cpu_seconds(collector))}
    self0, t0 = sum(os.times()[:2]), time.monotonic()
    await drive(js, UPDATES, state, acked)
    wall = time.monotonic() - t0
    usage = {name: (_live.cpu_seconds(pid) - before) / wall for name, (pid, before) in cpu.items()}
    usage["this bench (200 clients)"] = (sum(os.times()[:2]) - self0) / wall
    frames_rate = (sum(c.frames for c in clients) - frames0) / wall / len(clients)
    report(f"{CLIENTS} clients", clients, acked, in_delta, range(first, state["count"] + 1))
    print(f"  {CLIENTS} connected (initial panel received) in {connect_s:.1f}s; "
          f"{frames_rate:.2f} frames/s per client; permessage-deflate on "
          f"{sum(c.deflate for c in clients)}/{len(clients)}")
    print(f"  CPU over the {wall:.0f}s publishing phase (% of one core): "
          + ", ".join(f"{k} {v:.1%}" for k, v in usage.items()))
    closed = sum(c.task.done() for c in clients)
    print(f"  sockets closed by the server during the run: {closed}")
    await asyncio.gather(*(c.ws.close() for c in clients), return_exceptions=True)
    await asyncio.gather(*(c.task for c in clients), return_exceptions=True)
    await nc.close()


def main() -> None:
    _live.header("fanout")
    with _live.console_on_own_bus() as (server, console):
        asyncio.run(bench(server, console))


if __name__ == "__main__":
    main()
