"""Server time of /streams/ with 1,000 streams (and 5,000 consumers), over real HTTP.

Run: .venv/bin/python bench/page_render.py   (about a minute)

Starts a bus with 1,000 streams x 5 consumers, `manage.py up` against it,
logs in, and times pages from the web process's snapshot. Baseline in the
same run: the login page (a template with no data).
"""

from __future__ import annotations

import asyncio
import re
import statistics
import tempfile
import time
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

from common import bus, fill, header

from lucent_bus import embedded
from tests.support import PASSWORD, Console  # noqa: E402

N = 25


def opener_logged_in(base: str):
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(base + "/login/").read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    data = urllib.parse.urlencode({"username": "admin", "password": PASSWORD,
                                   "csrfmiddlewaretoken": token}).encode()
    req = urllib.request.Request(base + "/login/", data=data, headers={"Referer": base + "/login/"})
    opener.open(req).read()
    return opener


def timed(opener, url: str) -> tuple[float, float, int]:
    samples, size = [], 0
    for _ in range(N):
        started = time.perf_counter()
        size = len(opener.open(url).read())
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(0.95 * (N - 1))], size


def main() -> None:
    header(f"page render with 1,000 streams / 5,000 consumers ({N} requests each)")
    with tempfile.TemporaryDirectory() as tmp:
        server = embedded.single(Path(tmp) / "js").start().wait()
        console = None
        try:
            async def setup():
                nc = await bus(server.url)
                await fill(nc, 1000, 5)
                await nc.close()

            asyncio.run(setup())
            console = Console(Path(tmp), nats_url=server.url, demo=False)
            console.wait_for("Lucent Console is running at", 120)
            opener = opener_logged_in(console.url)
            deadline = time.monotonic() + 30
            while "page 1 of 21" not in opener.open(console.url + "/streams/").read().decode():
                assert time.monotonic() < deadline, "the snapshot never reached the web process"
                time.sleep(0.5)
            print(f"{'page':<44} {'median ms':>10} {'p95 ms':>8} {'bytes':>8}")
            for label, path in [
                ("baseline: /login/ (no data)", "/login/"),
                ("/streams/ (page 1 of 21, by name)", "/streams/"),
                ("/streams/?sort=pending&desc=1", "/streams/?sort=pending&desc=1"),
                ("/streams/?q=B009 (filtered)", "/streams/?q=B009"),
                ("/streams/B00500/ (detail, 5 consumers)", "/streams/B00500/"),
                ("/api/v1/streams/?limit=1000", "/api/v1/streams/?limit=1000"),
                ("/metrics (1,000 streams, 5,000 consumers)", "/metrics"),
            ]:
                median, p95, size = timed(opener, console.url + path)
                print(f"{label:<44} {median:>10.1f} {p95:>8.1f} {size:>8}")
        finally:
            if console is not None:
                console.kill()
            server.stop()


if __name__ == "__main__":
    main()
