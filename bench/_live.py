"""Shared by bench/live_latency.py and bench/fanout.py: a test-owned nats-server with
`manage.py up` against it, a logged-in session, row parsing and percentiles.

Not a benchmark itself. Everything runs on loopback; every process is stopped in
``console_on_own_bus``'s finally.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import math
import os
import platform
import re
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lucent_bus import embedded  # noqa: E402
from tests.support import PASSWORD, Console, cmdline, descendants  # noqa: E402

# <tr id="stream-NAME" ...> ... </tr>; the first <td class="n"> of a row is the message count.
ROW = re.compile(r'<tr id="stream-([^"]+)"[^>]*>(.*?)</tr>', re.S)
COUNT = re.compile(r'<td class="n">([^<]*)</td>')
os.environ.setdefault("LUCENT_SWEEP_INTERVAL", "1.0")  # Console passes os.environ on to `up`


def header(title: str) -> None:
    print(f"# {title}: {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC, host {platform.node()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}, "
          f"LUCENT_SWEEP_INTERVAL={os.environ['LUCENT_SWEEP_INTERVAL']}", flush=True)


def rows(frame: str) -> dict[str, int]:
    """{stream name: message count} for every stream row in a websocket frame."""
    out = {}
    for name, body in ROW.findall(frame):
        m = COUNT.search(body)
        if m and m.group(1).replace(",", "").isdigit():
            out[name] = int(m.group(1).replace(",", ""))
    return out


def pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(xs)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def summary(xs: list[float], unit: float = 1000, suffix: str = "ms") -> str:
    if not xs:
        return "no samples"
    f = lambda v: f"{v * unit:.1f}"  # noqa: E731
    return (f"n={len(xs)} p50={f(pct(xs, 50))} p95={f(pct(xs, 95))} p99={f(pct(xs, 99))} "
            f"max={f(max(xs))} {suffix}")


def login(base: str) -> str:
    """The ``sessionid`` of admin after a real form login (CSRF token from the form)."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    html = opener.open(base + "/login/", timeout=30).read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)
    data = urllib.parse.urlencode({"username": "admin", "password": PASSWORD,
                                   "csrfmiddlewaretoken": token}).encode()
    opener.open(urllib.request.Request(base + "/login/", data, headers={"Referer": base + "/login/"}),
                timeout=30)
    for c in jar:
        if c.name == "sessionid":
            return c.value
    raise RuntimeError("login failed: no sessionid cookie")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pid(console: Console, marker: str) -> int:
    """The pid of the descendant of `up` whose command line contains ``marker``."""
    for pid in descendants(console.proc.pid):
        if marker in cmdline(pid):
            return pid
    raise RuntimeError(f"no {marker!r} process under manage.py up")


@contextlib.contextmanager
def console_on_own_bus():
    """(nats server, console): a fresh nats-server and `manage.py up` (no --demo) on it."""
    with tempfile.TemporaryDirectory(prefix="lucent-bench-") as tmp:
        tmp = Path(tmp)
        server = embedded.single(tmp / "bus" / "js").start().wait()
        console = None
        try:
            started = time.monotonic()
            console = Console(tmp / "console", nats_url=server.url, demo=False)
            console.wait_for("Lucent Console is running at", timeout=120)
            print(f"console up in {time.monotonic() - started:.1f}s at {console.url} "
                  f"(bus {server.url})", flush=True)
            yield server, console
        finally:
            if console is not None:
                console.kill()
            server.stop()
