"""Probe overhead: the console's command probe against a bare nats-py request loop.

Run: .venv/bin/python bench/probe_overhead.py   (about 30 s; target: within 1.2x)

A responder process (plain nats-py, replies with a small envelope) serves
lucent.commands.bench.echo on a private nats-server. Then, alternating for 5
rounds, 1,000 sequential requests each: a bare ``nc.request`` loop on its own
connection, and ``agents.probe.probe`` (the service layer behind the page and
POST /api/v1/probe/: validation, audit record, the shared bus connection's loop,
reply decoding). Reported: the probe's own p50/p99 and the wall time per request
of both, and their ratio.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time

from deadletter_common import environment, header

SUBJECT = "lucent.commands.bench.echo"
ROUNDS, COUNT = 5, 1000
RESPONDER = """
import asyncio, sys, nats
async def main():
    nc = await nats.connect(sys.argv[1])
    async def echo(msg):
        await msg.respond(b'{"messageId":"r","messageType":"EchoResult","payload":{"ok":true}}')
    await nc.subscribe(sys.argv[2], cb=echo)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


async def bare(url: str) -> tuple[float, list[float]]:
    import nats

    nc = await nats.connect(url)
    body = b'{"messageId":"p","messageType":"Probe","payload":{}}'
    rtts = []
    started = time.perf_counter()
    for _ in range(COUNT):
        t0 = time.perf_counter()
        await nc.request(SUBJECT, body, timeout=2)
        rtts.append((time.perf_counter() - t0) * 1000)
    wall = (time.perf_counter() - started) * 1000 / COUNT
    await nc.close()
    return wall, rtts


def main() -> None:
    header("probe_overhead")
    with environment("probe") as (_, server):
        from django.contrib.auth.models import Group, User

        from agents.probe import probe

        user = User.objects.create_user("bench-operator")
        user.groups.add(Group.objects.get_or_create(name="operator")[0])
        responder = subprocess.Popen([sys.executable, "-c", RESPONDER, server.url, SUBJECT],
                                     stdout=subprocess.PIPE, text=True)
        try:
            assert responder.stdout.readline().strip() == "ready"
            probe(user, SUBJECT, count=50)  # warm up the shared connection
            bare_wall, probe_wall, bare_p50, probe_p50, probe_p99, bare_p99 = [], [], [], [], [], []
            for _ in range(ROUNDS):
                wall, rtts = asyncio.run(bare(server.url))
                bare_wall.append(wall)
                bare_p50.append(statistics.median(rtts))
                bare_p99.append(sorted(rtts)[int(0.99 * len(rtts)) - 1])
                t0 = time.perf_counter()
                result = probe(user, SUBJECT, '{"messageId":"p","messageType":"Probe","payload":{}}',
                               count=COUNT)
                probe_wall.append((time.perf_counter() - t0) * 1000 / COUNT)
                assert result["ok"] == COUNT and result["errors"] == 0, result
                probe_p50.append(result["p50_ms"])
                probe_p99.append(result["p99_ms"])
        finally:
            responder.terminate()
        med = statistics.median
        ratio = med(probe_wall) / med(bare_wall)
        print(f"bare nats-py request loop: p50 {med(bare_p50):.3f} ms, p99 {med(bare_p99):.3f} ms, "
              f"{med(bare_wall):.3f} ms per request (wall)")
        print(f"console probe:             p50 {med(probe_p50):.3f} ms, p99 {med(probe_p99):.3f} ms, "
              f"{med(probe_wall):.3f} ms per request (wall, incl. audit)")
        print(f"ratio probe/bare (median of {ROUNDS} rounds x {COUNT}): wall {ratio:.2f}x, "
              f"p50 {med(probe_p50) / med(bare_p50):.2f}x  [target <= 1.2x: "
              f"{'met' if ratio <= 1.2 else 'MISSED'}]")


if __name__ == "__main__":
    main()
