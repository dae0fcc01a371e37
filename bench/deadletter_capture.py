"""Dead-letter capture under a burst: 10,000 messages exhaust max_deliver at once.

Run: .venv/bin/python bench/deadletter_capture.py [--n 10000]   (about 1-2 minutes)

A work stream ORDERS with a consumer ``shipper`` (max_deliver=2) gets N messages
(ADR-003 envelopes, ~330 bytes); a fast worker naks everything until the server
has put N MAX_DELIVERIES advisories on LUCENT_ADVISORIES. Then the capture
pipeline (streams/capture.py: ``capture_batch`` on deadletter-capture, then
``index_batch`` on deadletter-index) is timed until DEAD_LETTERS holds N and the
DeadLetter table N rows, several times over the same advisories (between runs
DEAD_LETTERS, its index consumer and the capture consumer are recreated and the
table emptied, so each run captures all N again):

- ``pipelined``: the two loops run concurrently, as ``dl_index.run`` does in
  ``manage.py up``; default batch and concurrency;
- ``phased``: all capture first, then all index (the split between the two);
- the same with larger ``batch=`` / ``concurrency=`` arguments.

Each run checks that nothing is lost or doubled (N rows, N distinct stream_seq,
exactly 1..N, N messages on DEAD_LETTERS).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from deadletter_common import SECOND, Clock, bus, code_note, environment, header, stream_state

TARGET = 2000  # captures/s, end to end


async def make_advisories(nc, n: int) -> None:
    from deadletters import capture as dl_capture
    from lucent_bus import envelope
    from lucent_bus import jetstream as js
    from streams import topology

    await topology.apply(nc)
    await js.add_stream(nc, {"name": "ORDERS", "subjects": ["orders.>"], "storage": "file",
                             "retention": "limits", "duplicate_window": 60 * SECOND})
    await js.add_consumer(nc, "ORDERS", {"durable_name": "shipper", "ack_policy": "explicit",
                                         "max_deliver": 2, "ack_wait": 30 * SECOND,
                                         "max_ack_pending": 20_000})
    jsn = nc.jetstream()
    t0 = time.perf_counter()
    for i in range(n):
        env = envelope.make("ShipOrder", f"orders.eu.{i % 50}", {"order": i, "sku": f"SKU-{i % 977}",
                            "qty": i % 7 + 1, "note": "x" * 60},
                            correlation_id=f"corr-{i % 1000:04d}", sender={"serviceId": "shop"})
        await jsn.publish_async(f"orders.eu.{i % 50}", envelope.encode(env),
                                headers=envelope.headers_for(env))
    await jsn.publish_async_completed()
    t_pub = time.perf_counter() - t0

    # The failing worker: nak everything, keep a pull request waiting so the
    # server can emit MAX_DELIVERIES (it does so when it would deliver again).
    sub = await jsn.pull_subscribe_bind("shipper", "ORDERS")
    t0 = time.perf_counter()
    deliveries, last_check, adv = 0, 0.0, 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            msgs = await sub.fetch(1000, timeout=0.5)
        except Exception:
            msgs = []
        for m in msgs:
            await m.nak()
        deliveries += len(msgs)
        if not msgs or time.monotonic() - last_check > 1:
            last_check = time.monotonic()
            adv = (await stream_state(nc, dl_capture.ADVISORY_STREAM))["messages"]
            if adv >= n:
                break
    await sub.unsubscribe()
    t_fail = time.perf_counter() - t0
    print(f"setup: published {n} in {t_pub:.1f}s; worker nak'd {deliveries} deliveries and the "
          f"server emitted {adv} MAX_DELIVERIES advisories in {t_fail:.1f}s", flush=True)
    if adv != n:
        raise SystemExit(f"expected {n} advisories on LUCENT_ADVISORIES, found {adv}")


async def reset(nc) -> None:
    """Fresh DEAD_LETTERS (and dedup window), index and capture consumers, empty table."""
    from asgiref.sync import sync_to_async

    from deadletters import capture as dl_capture
    from deadletters.models import DeadLetter
    from lucent_bus import deadletters as dl
    from lucent_bus import jetstream as js
    from streams import topology

    await js.delete_stream(nc, dl.STREAM)
    await js.api(nc, f"CONSUMER.DELETE.{dl_capture.ADVISORY_STREAM}.{dl_capture.CAPTURE_CONSUMER}")
    await topology.apply(nc)
    await sync_to_async(lambda: DeadLetter.objects.all().delete())()


async def verify(nc, n: int) -> str:
    from asgiref.sync import sync_to_async
    from django.db.models import Count

    from deadletters.models import DeadLetter
    from lucent_bus import deadletters as dl

    def q():
        agg = DeadLetter.objects.aggregate(rows=Count("id"), distinct=Count("stream_seq", distinct=True))
        seqs = sorted(DeadLetter.objects.values_list("stream_seq", flat=True))
        return agg, seqs

    agg, seqs = await sync_to_async(q)()
    stored = (await stream_state(nc, dl.STREAM))["messages"]
    ok = agg["rows"] == n and agg["distinct"] == n and seqs == list(range(1, n + 1)) and stored == n
    return (f"{'OK' if ok else 'MISMATCH'}: rows={agg['rows']} distinct stream_seq={agg['distinct']} "
            f"exactly 1..{n}={seqs == list(range(1, n + 1))} DEAD_LETTERS={stored}")


async def run_once(nc, n: int, mode: str, cap_kw: dict, idx_kw: dict) -> dict:
    from asgiref.sync import sync_to_async

    from deadletters import capture as dl_capture
    from deadletters import index as dl_index
    from deadletters.models import DeadLetter
    from lucent_bus import deadletters as dl

    jsn = nc.jetstream()
    cap = await jsn.pull_subscribe_bind(dl_capture.CAPTURE_CONSUMER, dl_capture.ADVISORY_STREAM)
    idx = await jsn.pull_subscribe_bind(dl_index.INDEX_CONSUMER, dl.STREAM)
    clock = Clock()
    done = {"cap": 0, "idx": 0}
    marks = {}
    deadline = time.monotonic() + 120
    t0 = time.perf_counter()

    async def capture_loop():
        while done["cap"] < n and time.monotonic() < deadline:
            with clock("capture"):
                done["cap"] += await dl_capture.capture_batch(nc, cap, **cap_kw)
        marks["capture_done"] = time.perf_counter() - t0

    async def index_loop():
        while time.monotonic() < deadline:
            with clock("index"):
                got = await dl_index.index_batch(nc, idx, **idx_kw)
            done["idx"] += got
            if done["idx"] >= n and got == 0 or done["idx"] >= n and \
                    await sync_to_async(DeadLetter.objects.count)() >= n:
                break
        marks["index_done"] = time.perf_counter() - t0

    if mode == "pipelined":
        await asyncio.gather(capture_loop(), index_loop())
    else:
        await capture_loop()
        t_idx = time.perf_counter()
        await index_loop()
        marks["index_only"] = time.perf_counter() - t_idx
    total = time.perf_counter() - t0
    await cap.unsubscribe()
    await idx.unsubscribe()
    check = await verify(nc, n)
    return {"mode": mode, "cap_kw": cap_kw, "idx_kw": idx_kw, "total": total, "marks": marks,
            "busy": clock.t, "check": check}


def report(r: dict, n: int) -> None:
    kw = lambda d: ",".join(f"{k}={v}" for k, v in d.items()) or "defaults"  # noqa: E731
    rate = n / r["total"]
    line = (f"{r['mode']:<9} capture({kw(r['cap_kw'])}) index({kw(r['idx_kw'])}): "
            f"{r['total']:.2f}s end to end = {rate:,.0f} captures/s "
            f"[{'meets' if rate >= TARGET else 'MISSES'} {TARGET}/s]")
    if r["mode"] == "phased":
        c, i = r["marks"]["capture_done"], r["marks"]["index_only"]
        line += f"\n          split: capture {c:.2f}s ({n / c:,.0f}/s), index {i:.2f}s ({n / i:,.0f}/s)"
    else:
        line += (f"\n          capture finished at {r['marks']['capture_done']:.2f}s, index at "
                 f"{r['marks']['index_done']:.2f}s")
    print(line + f"\n          {r['check']}", flush=True)


CONFIGS = [
    ("pipelined", {}, {}),
    ("phased", {}, {}),
    ("pipelined", {"batch": 1000, "concurrency": 256}, {"batch": 2000}),
    ("phased", {"batch": 1000, "concurrency": 256}, {"batch": 2000}),
    ("pipelined", {"batch": 2000, "concurrency": 1000}, {"batch": 5000}),
]


async def main(server, n: int) -> None:
    nc = await bus(server.url)
    try:
        await make_advisories(nc, n)
        results = []
        for i, (mode, cap_kw, idx_kw) in enumerate(CONFIGS):
            if i:
                await reset(nc)
            r = await run_once(nc, n, mode, cap_kw, idx_kw)
            report(r, n)
            results.append(r)
        print(json.dumps([{"mode": r["mode"], "capture": r["cap_kw"], "index": r["idx_kw"],
                           "seconds": round(r["total"], 3),
                           "per_s": round(n / r["total"]),
                           "ok": r["check"].startswith("OK")} for r in results]))
    finally:
        await nc.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    args = ap.parse_args()
    header(f"dead-letter capture: a burst of {args.n:,} messages exhausting max_deliver=2")
    code_note("deadletters/capture.py", "lucent_bus/client.py")
    with environment("dlcapture") as (tmp, server):
        asyncio.run(main(server, args.n))
