"""Watched streams: change-to-browser latency of a stream page open in a browser, against
an unwatched stream, and the collector's CPU with and without a watched stream.

Starts its own nats-server and `manage.py up` on it (no --demo, LUCENT_SWEEP_INTERVAL=1),
with FILLER streams of one consumer each (what "everything else" the full sweep reads),
W_BENCH (watched: its page's socket /ws/live/?panel=stream&name=W_BENCH is open) and
U_BENCH (unwatched: seen only on the streams list socket, ?panel=streams&q=_bench), each
with a pull consumer `worker`. Samples run one at a time, each after a random pause of
U(0, sweep interval) so the change falls at a random phase of the full sweep:

* publish: from the JetStream publish ack until a frame shows the new message count
  (W: the page's state cards; U: the list row);
* ack: a message fetched (ack pending 1, seen) and then acked; from the ack's reply
  until a frame shows ack pending 0;
* pause: CONSUMER.PAUSE for an hour; from its reply until a frame shows the consumer
  paused (W: the page's consumer row). The list page shows no consumer, so for U the
  pause is timed to the collector's delta that carries it (what the socket would get
  about 1 ms later, see delta -> ws for W); each pause is undone, untimed.

The bench also listens to the collector's deltas to split W's latencies into change ->
delta and delta -> websocket. Collector CPU (user+sys from /proc/<pid>/stat) is measured
over IDLE_S quiet seconds without any stream page open, then with W's page open.

Run: .venv/bin/python bench/watch_latency.py
"""

import asyncio
import contextlib
import json
import os
import random
import re
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _live  # noqa: E402
from bench.live_latency import nats_baseline  # noqa: E402
from lucent_bus import live  # noqa: E402

FILLER = 100
WATCHED_SAMPLES = 50
UNWATCHED_SAMPLES = 30
IDLE_S = 20.0
TIMEOUT = 10.0
CELL = re.compile(r'<td class="n">([^<]*)</td>')
STATE_MSGS = re.compile(r'Messages</span><strong>([\d,]+)</strong>')
STATE_ACK = re.compile(r'<small>([\d,]+) awaiting ack</small>')
CONSUMER_ROW = re.compile(r'<tr id="consumer-([^"]+)-worker"[^>]*>(.*?)</tr>', re.S)


def _int(text: str) -> int | None:
    text = text.replace(",", "").strip()
    return int(text) if text.isdigit() else None


class Seen:
    """First time (monotonic) each fact was seen on a socket or in a delta."""

    def __init__(self) -> None:
        self.ws: dict[tuple, float] = {}
        self.delta: dict[tuple, float] = {}
        self.changed = asyncio.Event()

    def frame(self, text: str) -> None:
        now = time.monotonic()
        facts = []
        for name, body in _live.ROW.findall(text):  # the list's rows: messages, ack pending
            cells = CELL.findall(body)
            if cells:
                facts += [("msgs", name, _int(cells[0])), ("ack_pending", name, _int(cells[-1]))]
        if 'id="stream-state"' in text:  # the W page's state cards
            for rx, what in ((STATE_MSGS, "msgs"), (STATE_ACK, "ack_pending")):
                m = rx.search(text)
                if m:
                    facts.append((what, "W_BENCH", _int(m.group(1))))
        for stream, body in CONSUMER_ROW.findall(text):
            facts.append(("paused", stream, "paused, resumes" in body))
        for fact in facts:
            self.ws.setdefault(fact, now)
        self.changed.set()

    def on_delta(self, delta: dict) -> None:
        now = time.monotonic()
        for name, s in delta.get("streams", {}).items():
            self.delta.setdefault(("msgs", name, s["messages"]), now)
            self.delta.setdefault(("ack_pending", name, s["ack_pending"]), now)
        for key, c in delta.get("consumers", {}).items():
            if key.endswith("/worker"):
                self.delta.setdefault(("paused", key.split("/")[0], c["paused"]), now)
        self.changed.set()

    async def wait(self, fact: tuple, where: str = "ws") -> float | None:
        table = self.ws if where == "ws" else self.delta
        deadline = time.monotonic() + TIMEOUT
        while fact not in table and time.monotonic() < deadline:
            self.changed.clear()
            if fact in table:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(0.05, deadline - time.monotonic()))
        return table.get(fact)

    def forget(self, fact: tuple) -> None:
        self.ws.pop(fact, None)
        self.delta.pop(fact, None)


async def _pause(nc, stream: str, on: bool) -> None:
    body = {"pause_until": (datetime.now(UTC) + timedelta(hours=1)).isoformat()} if on else {}
    reply = await nc.request(f"$JS.API.CONSUMER.PAUSE.{stream}.worker",
                             json.dumps(body).encode(), timeout=5)
    if b'"error"' in reply.data:
        raise RuntimeError(reply.data.decode())


async def run_samples(nc, js, seen: Seen, stream: str, n: int, interval: float,
                      pause_where: str) -> dict[str, tuple[list, list, list]]:
    """{kind: (change -> frame, change -> delta, delta -> frame)} for one stream.

    Long because it drives the three kinds of change one after the other."""
    out = {k: ([], [], []) for k in ("publish", "ack", "pause")}
    sub = await js.pull_subscribe_bind("worker", stream=stream)
    count = (await js.stream_info(stream)).state.messages

    def keep(kind, t0, fact, where="ws"):
        at_delta = seen.delta.get(fact)
        at_ws = seen.ws.get(fact) if where == "ws" else at_delta
        if at_ws is None:
            print(f"  lost: {kind} {fact}")
            return
        out[kind][0].append(at_ws - t0)
        if at_delta is not None:
            out[kind][1].append(at_delta - t0)
            if where == "ws":
                out[kind][2].append(at_ws - at_delta)

    for _ in range(n):
        await asyncio.sleep(random.uniform(0, interval))
        count += 1
        fact = ("msgs", stream, count)
        seen.forget(fact)
        await js.publish(f"{stream.lower()}.x", b"tick")
        t0 = time.monotonic()
        await seen.wait(fact)
        keep("publish", t0, fact)

        seen.forget(("ack_pending", stream, 1))  # frames since the last round said so
        msg = (await sub.fetch(1, timeout=5))[0]
        await seen.wait(("ack_pending", stream, 1), pause_where)  # untimed setup
        fact = ("ack_pending", stream, 0)
        seen.forget(fact)  # from here on, a frame saying 0 comes after the fetch
        await asyncio.sleep(random.uniform(0, interval))
        await msg.ack_sync()
        t0 = time.monotonic()
        await seen.wait(fact)
        keep("ack", t0, fact)

        fact = ("paused", stream, True)
        seen.forget(fact)
        await asyncio.sleep(random.uniform(0, interval))
        await _pause(nc, stream, True)
        t0 = time.monotonic()
        await seen.wait(fact, pause_where)
        keep("pause", t0, fact, pause_where)
        seen.forget(("paused", stream, False))
        await _pause(nc, stream, False)  # untimed: resumed before the next round
        await seen.wait(("paused", stream, False), pause_where)
    return out


def report(title: str, out: dict) -> None:
    for kind, (total, to_delta, to_ws) in out.items():
        print(f"{title} {kind:8s} -> frame: {_live.summary(total)}")
        if to_delta:
            print(f"{'':{len(title)}} {'':8s}    change -> delta: {_live.summary(to_delta)}")
        if to_ws:
            print(f"{'':{len(title)}} {'':8s}    delta -> ws:     {_live.summary(to_ws)}")


async def _socket(console, session, query, seen):
    ws = await websockets.connect(f"ws://127.0.0.1:{console.port}/ws/live/?{query}",
                                  origin=websockets.Origin(console.url),
                                  additional_headers={"Cookie": f"sessionid={session}"})

    async def read():
        async for frame in ws:
            seen.frame(frame)

    return ws, asyncio.create_task(read())


async def idle_cpu(pid: int) -> float:
    c0, t0 = _live.cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(IDLE_S)
    return (_live.cpu_seconds(pid) - c0) / (time.monotonic() - t0)


async def bench(server, console) -> None:
    interval = float(os.environ["LUCENT_SWEEP_INTERVAL"])
    session = await asyncio.to_thread(_live.login, console.url)
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    for name in [f"F{i:03d}" for i in range(FILLER)] + ["W_BENCH", "U_BENCH"]:
        await js.add_stream(name=name, subjects=[f"{name.lower()}.>"], storage="memory")
        await js.add_consumer(name, durable_name="worker", ack_policy="explicit")
    seen = Seen()

    async def on_delta(delta):
        seen.on_delta(delta)

    await live.subscribe_deltas(nc, on_delta)
    collector = _live.child_pid(console, "manage.py collector")
    listing, list_reader = await _socket(console, session, "panel=streams&q=_bench", seen)
    if await seen.wait(("msgs", "U_BENCH", 0)) is None:
        raise RuntimeError("U_BENCH never appeared on the websocket")
    print(f"{FILLER + 2} streams and consumers; collector pid {collector}; load average "
          f"{os.getloadavg()}", flush=True)

    cpu_without = await idle_cpu(collector)
    unwatched = await run_samples(nc, js, seen, "U_BENCH", UNWATCHED_SAMPLES, interval, "delta")
    page, page_reader = await _socket(console, session, "panel=stream&name=W_BENCH", seen)
    if await seen.wait(("paused", "W_BENCH", False)) is None:
        raise RuntimeError("W_BENCH's page never showed its consumer")
    await asyncio.sleep(1.0)  # the watch announced and taken up
    cpu_with = await idle_cpu(collector)
    watched = await run_samples(nc, js, seen, "W_BENCH", WATCHED_SAMPLES, interval, "ws")
    unwatched_while = await run_samples(nc, js, seen, "U_BENCH", UNWATCHED_SAMPLES // 3,
                                        interval, "delta")
    for ws, reader in ((page, page_reader), (listing, list_reader)):
        reader.cancel()
        await ws.close()

    print()
    report("watched  ", watched)
    report("unwatched", unwatched)
    report("unwatched, W watched meanwhile", unwatched_while)
    print(f"load average at the end: {os.getloadavg()}")
    print(f"collector CPU, idle, no stream page open: {cpu_without * 100:.1f} % of a core; "
          f"with W_BENCH's page open: {cpu_with * 100:.1f} % (over {IDLE_S:.0f} s each)")
    rtt = await nats_baseline(server.url)
    print(f"baseline core NATS publish -> subscriber: {_live.summary(rtt, 1e6, 'us')}")
    await nc.close()


def main() -> None:
    _live.header("watch_latency")
    with _live.console_on_own_bus() as (server, console):
        asyncio.run(bench(server, console))


if __name__ == "__main__":
    main()
