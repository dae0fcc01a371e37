"""Look at it (issue 14): every page of a console with demo traffic in a real Chromium, at a
desktop (1440x900) and a phone (390x844), screenshots kept in var/screenshots/ for a human
to look at; the things a person would see wrong are asserted: numbers not right-aligned, a
page wider than the phone, an indicator that says "live" while the socket is down."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from .support import CHROMIUM, CHROMIUM_ARGS, ROOT, Console, chromium_or_skip, cmdline, descendants, login

pytestmark = [pytest.mark.browser, pytest.mark.suite("screenshots")]

SHOTS = Path(os.getenv("LUCENT_SCREENSHOTS", ROOT / "var" / "screenshots"))
SIZES = {"desktop": (1440, 900), "phone": (390, 844)}


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    c = Console(tmp_path_factory.mktemp("screens"))  # demo traffic, 30 % poison jobs
    try:
        c.wait_for("Lucent Console is running at")
        yield c
    finally:
        c.kill()


@pytest.fixture(scope="module")
def browser():
    chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _pages(page, base: str) -> dict[str, str]:
    """Every kind of page, with real ids found on the running console."""
    page.goto(base + "/deadletters/")
    page.wait_for_selector("#dl-body tr.dl-new a", timeout=60000)  # demo poison jobs failed
    letter = page.locator("#dl-body tr.dl-new a").first.get_attribute("href")
    page.goto(base + letter)
    links = page.locator("a.trace-link")
    trace = links.first.get_attribute("href") if links.count() else "/trace/"
    page.goto(base + "/services/probe/")  # an audited action, so /audit/ has parameters to show
    page.fill("input[name=count]", "2")
    page.click("#probe button[type=submit]")
    page.click("#probe-confirm button[type=submit]")  # the probe names subject x count first
    page.wait_for_selector("#probe-result .cards", timeout=15000)
    page.goto(base + "/agents/")
    agents = "#agents-panel a[href^='/agents/']:not([href*='hierarchy'])"
    page.wait_for_selector(agents, timeout=30000)
    agent = page.locator(agents).first.get_attribute("href")
    return {
        "overview": "/", "streams": "/streams/", "stream": "/streams/COMMANDS/",
        "message": "/streams/COMMANDS/messages/1/", "deadletters": "/deadletters/",
        "deadletter": letter, "agents": "/agents/", "agent": agent,
        "hierarchy": "/agents/hierarchy/", "services": "/services/", "probe": "/services/probe/",
        "alerts": "/alerts/", "trace-search": "/trace/", "trace": trace, "audit": "/audit/",
        "not-found": "/streams/NO_SUCH_STREAM/", "admin": "/admin/",
        # acting on the bus (issue 15)
        "consumer": "/streams/AGENT_COORDINATION/consumers/risk-assessment/",
        "stream-edit": "/streams/COMMANDS/edit/", "kv": "/kv/", "kv-bucket": "/kv/LUCENT_LEADER/",
        "kv-key": "/kv/LUCENT_LEADER/keys/collector/", "publish": "/publish/",
        "servers": "/servers/", "connections": "/connections/",
    }


def test_every_page_at_desktop_and_phone_width(console, browser):
    SHOTS.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {SHOTS}")
    context = browser.new_context(viewport={"width": 1440, "height": 900}, color_scheme="dark")
    page = context.new_page()
    login(page, console.url)
    pages = _pages(page, console.url)
    aligned, problems = 0, []
    for size, (width, height) in SIZES.items():
        page.set_viewport_size({"width": width, "height": height})
        for name, path in pages.items():
            page.goto(console.url + path)
            page.wait_for_load_state("load")
            if name in ("stream", "agent"):
                page.wait_for_selector("#chart-rate .main-svg", timeout=15000)
            elif name not in ("admin", "not-found"):
                page.wait_for_selector("#live-status.ok", timeout=15000)
            page.wait_for_timeout(300)  # the socket's first frames swapped in
            page.screenshot(path=str(SHOTS / f"{name}-{size}.png"), full_page=True)
            wide = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            if wide[0] > wide[1]:
                culprits = page.evaluate("""() => [...document.querySelectorAll('body *')]
                    .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1
                                 && !e.closest('.table-wrap'))
                    .slice(0, 5).map(e => e.tagName + '.' + e.className + '#' + e.id)""")
                problems.append(f"{path} at {width}px: {wide[0]} px wide ({culprits})")
            align = page.evaluate("""() => [...document.querySelectorAll('td.n, th.n')]
                .map(e => getComputedStyle(e).textAlign)""")
            bad = [a for a in align if a != "right"]
            if bad:
                problems.append(f"{path}: {len(bad)} number cells aligned {set(bad)}")
            aligned += len(align)
        assert pages  # every page visited at this size
    assert not problems, "\n".join(problems)
    page.goto(console.url + "/audit/")
    assert page.locator("#audit-table table.params th", has_text="count").count()  # key/value
    assert aligned > 50, "the pages showed hardly any number cells"

    # The light theme, as the system asks for it, and the admin in it.
    light = browser.new_context(viewport={"width": 1440, "height": 900}, color_scheme="light",
                                storage_state=context.storage_state())
    lp = light.new_page()
    for name in ("overview", "stream", "admin"):
        lp.goto(console.url + pages[name])
        lp.wait_for_load_state("load")
        lp.wait_for_timeout(800)
        lp.screenshot(path=str(SHOTS / f"{name}-light.png"), full_page=True)
    # Both in the light palette (console.css, admin.css: --bg / --body-bg #f6f8fa).
    assert lp.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(246, 248, 250)"
    lp.goto(console.url + "/")
    assert lp.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(246, 248, 250)"
    light.close()
    context.close()


def test_the_indicator_leaves_live_at_once_when_the_socket_closes(console, browser):
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    login(page, console.url)
    page.goto(console.url + "/streams/")
    page.wait_for_selector("#live-status.ok", timeout=15000)
    assert page.locator("#live-status .state").inner_text() == "live"
    # A page that reads the servers directly (not the collector's snapshot) stays ungreyed.
    servers = browser.new_page(viewport={"width": 1440, "height": 900})
    login(servers, console.url)
    servers.goto(console.url + "/servers/")
    servers.wait_for_selector("#live-status.ok", timeout=15000)
    servers.wait_for_selector("table.grid td", timeout=10000)
    web = [p for p in descendants(console.proc.pid) if "uvicorn" in cmdline(p)]
    assert web
    killed = time.monotonic()
    for pid in web:
        os.kill(pid, signal.SIGKILL)  # `up` restarts it; the page's socket drops now
    page.wait_for_selector("#live-status.reconnecting", timeout=3000)
    left = time.monotonic() - killed
    assert page.locator("#live-status .state").inner_text() == "reconnecting"
    assert "ok" not in page.locator("#live-status").get_attribute("class").split()
    assert "stale" in page.evaluate("document.body.className")  # figures greyed
    page.wait_for_timeout(1200)
    assert "old" in page.locator("#stale-banner").inner_text()  # with their age
    opacity = "getComputedStyle(document.querySelector('main table.grid td')).opacity"
    assert page.evaluate(opacity) == "0.6"
    servers.wait_for_selector("#live-status.reconnecting", timeout=3000)
    assert "stale" in servers.evaluate("document.body.className")
    assert servers.evaluate(opacity) == "1"
    assert "reads the bus directly" in servers.locator("#stale-banner").inner_text()
    servers.screenshot(path=str(SHOTS / "servers-reconnecting-desktop.png"), full_page=True)
    servers.close()
    page.screenshot(path=str(SHOTS / "streams-reconnecting-desktop.png"), full_page=True)
    assert left < 2.0, f"left 'live' only after {left:.1f}s"
    # The web child restarted: the page reconnects by itself and says live again.
    page.wait_for_selector("#live-status.ok", timeout=30000)
    assert "stale" not in page.evaluate("document.body.className")
    page.close()


def test_times_ids_and_parameters_never_break_a_page():
    """The display filters take whatever the bus sent: readable times become <time> with the
    exact UTC time on hover, the rest is shown as text, escaped, and nothing raises."""
    import json
    from datetime import UTC, datetime

    from lucent_console.templatetags.console import ago, at, ident, pairs

    from .malformed import VALUES

    ns = ago("2026-11-26T10:30:01.123456789Z")
    assert 'datetime="2026-11-26T10:30:01.123456Z"' in ns
    assert 'title="2026-11-26 10:30:01.123456789 UTC"' in ns and " ago</time>" in ns
    now = datetime.now(UTC).timestamp()
    for epoch in (now - 180, (now - 180) * 1e3, (now - 180) * 1e6, (now - 180) * 1e9, str(int(now - 180))):
        assert ">3 min ago</time>" in ago(epoch), epoch
    assert ">10:30:01</time>" in at("2026-11-26T10:30:01Z")
    for nothing in (None, "", 0, float("nan"), "0001-01-01T00:00:00Z", True):
        assert ago(nothing) == "–", nothing
    assert ago("<b>soon</b>") == "&lt;b&gt;soon&lt;/b&gt;"
    for name, raw in VALUES.items():
        value = json.loads(raw)
        for out in (ago(value), at(value), ident(value), ident(value, 8)):
            assert "<script" not in out and "<b>" not in out, name
        rows = pairs({"k": value, "<i>": 1})
        assert rows and all(isinstance(v, str) for _, v in rows), name
    cut = ident("0123456789abcdefghij", 8)
    assert 'data-copy="0123456789abcdefghij"' in cut and ">0123456…</code>" in cut
    assert pairs({"subject": "a.b", "dry_run": True, "ids": [1, 2]}) == [
        ("subject", "a.b"), ("dry_run", "yes"), ("ids", "[1, 2]")]
