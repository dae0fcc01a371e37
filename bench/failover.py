"""Collector failover: two `manage.py collector` processes (the Procfile's command) on one
bus; the leader is stopped N times and the time until the standby's first published delta
is measured (a new leader's first delta is a whole snapshot, ``full``).

* kill -9: the leader cannot release its lease; the standby waits for it to age out
  (LUCENT_LEADER_TTL, 5 s by default, minus the time since the last renewal, TTL/3 at most).
* SIGTERM (the baseline, a deploy or restart): the leader releases its lease; what remains
  is the standby's poll (TTL/10) and starting its work (connect, first sweep, publish).

After each stop the stopped process is started again as the new standby. Own nats-server
and SQLite; nothing else is touched.

Run: .venv/bin/python bench/failover.py [N]   (default N=5; target: every kill < 10 s)
"""

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _live  # noqa: E402
from lucent_bus import embedded, live  # noqa: E402
from lucent_bus.client import connect  # noqa: E402
from lucent_bus.config import BusConfig  # noqa: E402
from tests.support import ROOT, Process, procfile  # noqa: E402

TARGET_S = 10.0


async def failovers(url: str, env: dict, rounds: int, sig: int) -> list[float]:
    nc = await connect("bench", BusConfig.from_env({"NATS_URL": url}), retry_initial=False)
    fulls: list[float] = []

    async def on_delta(delta):
        if delta.get("full"):
            fulls.append(time.monotonic())

    await live.subscribe_deltas(nc, on_delta)
    leader = Process("collector", procfile()["collector"], env)
    await asyncio.to_thread(leader.wait_for, "is the leader", 60)
    standby = Process("collector", procfile()["collector"], env)
    await asyncio.to_thread(standby.wait_for, "standby; the leader is", 60)
    took = []
    try:
        for _ in range(rounds):
            await asyncio.sleep(2 + 5 * (len(took) % 3) / 3)  # stop at various renewal phases
            stopped = time.monotonic()
            leader.signal(sig)
            while not any(t > stopped for t in fulls):
                if time.monotonic() - stopped > 30:
                    raise RuntimeError("no failover within 30 s")
                await asyncio.sleep(0.005)
            took.append(next(t for t in fulls if t > stopped) - stopped)
            await asyncio.to_thread(leader.proc.wait, 15)
            leader, standby = standby, Process("collector", procfile()["collector"], env)
            await asyncio.to_thread(standby.wait_for, "standby; the leader is", 60)
    finally:
        for p in (leader, standby):
            p.stop()
        await nc.close()
    return took


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    _live.header("Collector failover")
    with tempfile.TemporaryDirectory() as tmp:
        server = embedded.single(Path(tmp) / "js").start().wait()
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        env.update(NATS_URL=server.url, LUCENT_VAR_DIR=str(Path(tmp) / "var"))
        try:
            subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env,
                           check=True)
            subprocess.run([sys.executable, "manage.py", "topology", "apply"], cwd=ROOT, env=env,
                           check=True, capture_output=True)
            ttl = float(os.getenv("LUCENT_LEADER_TTL", "5"))
            print(f"# LUCENT_LEADER_TTL={ttl:g}, {rounds} stops each", flush=True)
            for name, sig in (("SIGTERM (release, baseline)", signal.SIGTERM),
                              ("kill -9 (lease ages out)", signal.SIGKILL)):
                took = asyncio.run(failovers(server.url, env, rounds, sig))
                print(f"{name:28} {' '.join(f'{t:.2f}' for t in took)} s | "
                      f"{_live.summary(took, 1, 's')}", flush=True)
                if sig == signal.SIGKILL:
                    print(f"target every kill < {TARGET_S:.0f} s: "
                          f"{'met' if max(took) < TARGET_S else 'NOT met'}")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
