"""How long a page of the connection listing takes with thousands of connections
(issue 15: "thousands of connections must stay fast"): a nats-server with a monitoring
port, N raw client connections (each CONNECT with a name, one SUB), then the service
layer's listing (servers.connections.gather_connections) timed per kind of request:
the connz-paged fast path (sort by cid or subscriptions, first and a deep page) and the
scanning path (a filter, a sort connz does not know).

    .venv/bin/python bench/connections.py [N]     # N = 3000 by default
"""

from __future__ import annotations

import asyncio
import os
import platform
import resource
import socket
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lucent_console.settings")

import django  # noqa: E402

django.setup()

from lucent_bus import embedded, monitor  # noqa: E402
from servers.connections import gather_connections  # noqa: E402

REPEAT = 7


def open_clients(port: int, n: int) -> list[socket.socket]:
    socks = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.recv(4096)  # INFO
        s.sendall(f'CONNECT {{"name":"bench-{i:05d}","lang":"bench","version":"1",'
                  f'"verbose":false,"pedantic":false}}\r\nSUB bench.{i} 1\r\n'
                  f'{"SUB bench.extra 2" + chr(13) + chr(10) if i % 7 == 0 else ""}'.encode())
        socks.append(s)
    return socks


async def timed(src, **kwargs) -> tuple[float, float, dict]:
    times = []
    for _ in range(REPEAT):
        started = time.perf_counter()
        page = await gather_connections(src, **kwargs)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), max(times), page


async def main(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 200)), hard))
    with tempfile.TemporaryDirectory() as tmp:
        port, mport = embedded.free_port(), embedded.free_port()
        server = embedded.Server(port, Path(tmp) / "js", embedded.server_args(
            port, Path(tmp) / "js", monitor_port=mport), Path(tmp) / "nats.log").start().wait()
        socks = []
        try:
            embedded.wait_listening(mport)
            socks = open_clients(port, n)
            src = monitor.Source("http", (f"http://127.0.0.1:{mport}",), timeout=10)
            print(f"# connections listing: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
                  f"{platform.node()}, {os.cpu_count()} cores; {n:,} connections; "
                  f"median and max of {REPEAT} (ms)")
            cases = [("first page, by cid (connz paged)", {}),
                     ("first page, by subscriptions (connz paged)", {"sort": "subscriptions"}),
                     (f"page at offset {n - 100} by cid (connz paged)", {"offset": n - 100}),
                     ("filter 'bench-0012' (scan)", {"q": "bench-0012"}),
                     ("sort by name (scan)", {"sort": "name"})]
            for label, kwargs in cases:
                median, worst, page = await timed(src, limit=50, **kwargs)
                print(f"{label:48s} {median:8.1f} {worst:8.1f}   total {page['total']:,}, "
                      f"{len(page['rows'])} rows")
        finally:
            for s in socks:
                s.close()
            server.stop()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3000))
