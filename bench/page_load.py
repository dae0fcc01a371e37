"""Page load in a real Chromium: every page, cold (empty cache) and warm, at loopback.

Run: .venv/bin/python bench/page_load.py   (about two minutes)

Starts `manage.py up --demo` (its own embedded bus, demo traffic), logs in, finds a dead
letter, an agent kind and a correlation to open, then for each page: a new browser context
(empty cache, the session cookie only) loads it once (cold) and again (warm: static files
from the cache). Times are Chromium's navigation timing, navigation start -> end of the
load event; for chart pages also until the charts are drawn. Bytes: what crossed the wire
(transferSize of the document and every resource). Median of ROUNDS.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _live import header  # noqa: E402

from tests.support import CHROMIUM, CHROMIUM_ARGS, Console, login  # noqa: E402

ROUNDS = 5
TIMING = """() => {
  const n = performance.getEntriesByType("navigation")[0];
  const res = performance.getEntriesByType("resource");
  return {load: n.loadEventEnd - n.startTime, dcl: n.domContentLoadedEventEnd - n.startTime,
          bytes: n.transferSize + res.reduce((a, r) => a + r.transferSize, 0)};
}"""
CHARTS = {"stream", "agent"}


def pages_of(page, base: str) -> dict[str, str]:
    page.goto(base + "/deadletters/")
    page.wait_for_selector("#dl-body tr.dl-new a", timeout=90000)
    letter = page.locator("#dl-body tr.dl-new a").first.get_attribute("href")
    page.goto(base + letter)
    links = page.locator("a.trace-link")
    trace = links.first.get_attribute("href") if links.count() else "/trace/"
    page.goto(base + "/agents/")
    agents = "#agents-panel a[href^='/agents/']:not([href*='hierarchy'])"
    page.wait_for_selector(agents, timeout=30000)
    return {
        "login": "/login/", "overview": "/", "streams": "/streams/", "stream": "/streams/COMMANDS/",
        "message": "/streams/COMMANDS/messages/1/", "deadletters": "/deadletters/",
        "deadletter": letter, "agents": "/agents/", "agent": page.locator(agents).first.get_attribute("href"),
        "hierarchy": "/agents/hierarchy/", "services": "/services/", "probe": "/services/probe/",
        "alerts": "/alerts/", "trace": trace, "audit": "/audit/", "admin": "/admin/",
    }


def measure(page, url: str, charts: bool) -> dict:
    page.goto(url, wait_until="load")
    page.wait_for_function("performance.getEntriesByType('navigation')[0].loadEventEnd > 0")
    out = page.evaluate(TIMING)
    if charts:
        page.wait_for_selector("#chart-rate .main-svg", timeout=30000)
        out["charts"] = page.evaluate("performance.now()")
    return out


def main() -> None:
    from playwright.sync_api import sync_playwright

    header("page load")
    with tempfile.TemporaryDirectory(prefix="lucent-bench-") as tmp:
        console = Console(Path(tmp))
        try:
            started = time.monotonic()
            console.wait_for("Lucent Console is running at", timeout=120)
            print(f"console up in {time.monotonic() - started:.1f}s at {console.url}", flush=True)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                ctx = browser.new_context(viewport={"width": 1440, "height": 900})
                page = ctx.new_page()
                login(page, console.url)
                pages = pages_of(page, console.url)
                cookies = ctx.storage_state()
                ctx.close()
                rows = []
                for name, path in pages.items():
                    cold, warm = [], []
                    for _ in range(ROUNDS):
                        c = browser.new_context(viewport={"width": 1440, "height": 900},
                                                storage_state=None if name == "login" else cookies)
                        pg = c.new_page()
                        cold.append(measure(pg, console.url + path, name in CHARTS))
                        warm.append(measure(pg, console.url + path, name in CHARTS))
                        c.close()
                    med = lambda xs, k: statistics.median(x[k] for x in xs)  # noqa: E731
                    row = (name, path, med(cold, "load"), med(warm, "load"), med(cold, "bytes"),
                           med(warm, "bytes"),
                           med(cold, "charts") if name in CHARTS else None,
                           med(warm, "charts") if name in CHARTS else None)
                    rows.append(row)
                    print(f"{name:12} cold {row[2]:6.0f} ms  warm {row[3]:6.0f} ms  "
                          f"{row[4] / 1024:7.1f} KB / {row[5] / 1024:6.1f} KB"
                          + (f"  charts drawn {row[6]:.0f} / {row[7]:.0f} ms" if row[6] else ""),
                          flush=True)
                browser.close()
        finally:
            console.kill()
    print("\n| page | cold load | warm load | cold bytes | warm bytes | charts drawn cold / warm |")
    print("|---|---|---|---|---|---|")
    for name, path, cl, wl, cb, wb, cc, wc in rows:
        charts = f"{cc:.0f} / {wc:.0f} ms" if cc else ""
        print(f"| {name} `{path if len(path) < 30 else path[:27] + '…'}` | {cl:.0f} ms | {wl:.0f} ms "
              f"| {cb / 1024:.0f} KB | {wb / 1024:.0f} KB | {charts} |")


if __name__ == "__main__":
    main()
