"""Shared by the benchmarks: a test-owned bus filled with N streams x 5 consumers."""

from __future__ import annotations

import asyncio
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lucent_console.settings")

from lucent_bus import jetstream as js  # noqa: E402
from lucent_bus.client import connect  # noqa: E402
from lucent_bus.config import BusConfig  # noqa: E402


def header(title: str) -> None:
    print(f"# {title}")
    print(f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")


async def bus(url: str):
    return await connect("bench", BusConfig.from_env({"NATS_URL": url}), retry_initial=False)


async def fill(nc, streams: int, consumers: int = 5, start: int = 0) -> None:
    """Memory streams with one message each and ``consumers`` durable consumers."""
    sem = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        async with sem:
            name = f"B{i:05d}"
            await js.add_stream(nc, {"name": name, "subjects": [f"b{i}.>"], "storage": "memory"})
            for c in range(consumers):
                await js.add_consumer(nc, name, {"durable_name": f"c{c}", "ack_policy": "explicit",
                                                 "filter_subject": f"b{i}.{c}"})
            await nc.jetstream().publish(f"b{i}.0", b"x")

    await asyncio.gather(*(one(i) for i in range(start, streams)))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0
