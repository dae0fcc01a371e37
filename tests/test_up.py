"""``manage.py up`` end to end: the whole tree, a browser, a dead child, a clean stop."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from .support import CHROMIUM, CHROMIUM_ARGS, PASSWORD, Console, alive, chromium_or_skip, cmdline, descendants


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    c = Console(tmp_path_factory.mktemp("up"))
    try:
        c.wait_for("Lucent Console is running at")
        yield c
    finally:
        c.kill()


def test_up_serves_the_console_on_its_own_bus(console):
    status, body = console.get("/healthz")
    assert status == 200, body
    health = json.loads(body)
    assert health["bus"]["servers"] == [f"nats://127.0.0.1:{console.nats_port}"]
    assert health["bus"]["streams"] == 7  # the ADR's 4, the console's 2, the leader lease
    names = [cmdline(p) for p in descendants(console.proc.pid)]
    assert any("nats-server" in n and f"-p {console.nats_port}" in n for n in names)
    for part in ("uvicorn", "manage.py collector", "celery -A lucent_console --quiet worker",
                 "beat", "manage.py demo"):
        assert any(part in n for n in names), (part, names)
    assert "password in LUCENT_ADMIN_PASSWORD" in console.wait_for("Log in as admin")
    status, _ = console.get("/")
    assert status == 200  # urllib followed the redirect to the login page


@pytest.mark.browser
def test_a_browser_logs_in_and_sees_the_live_console(console, tmp_path):
    chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            frames = []
            page.on("websocket", lambda ws: ws.on("framereceived", lambda f: frames.append(f)))
            page.goto(console.url + "/")
            assert "/login/" in page.url
            page.fill("input[name=username]", "admin")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_selector("h1:has-text('Overview')")
            page.wait_for_selector("#live-status.ok", timeout=15000)
            assert "nats-server 2.15" in page.locator("#live-status").inner_text()
            page.click("nav >> text=Streams")
            page.wait_for_selector("#streams-table")
            table = page.locator("#streams-table").inner_text()
            for name in ("DOMAIN_EVENTS", "COMMANDS", "AGENT_COORDINATION", "HIERARCHY",
                         "DEAD_LETTERS", "LUCENT_ADVISORIES"):
                assert name in table
            deadline = time.monotonic() + 10
            while not frames and time.monotonic() < deadline:
                page.wait_for_timeout(100)
            assert frames, "the live websocket sent nothing"
            page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)
            page.click("text=Log out")
            page.wait_for_url("**/login/")
        finally:
            browser.close()


def test_up_says_which_child_died_and_why_and_restarts_it(console):
    collectors = [p for p in descendants(console.proc.pid) if "manage.py collector" in cmdline(p)]
    assert len(collectors) == 1
    os.kill(collectors[0], signal.SIGKILL)
    console.wait_for("collector killed by SIGKILL", 15)
    console.wait_for("restarting collector", 15)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        again = [p for p in descendants(console.proc.pid) if "manage.py collector" in cmdline(p)]
        if again and again != collectors:
            break
        time.sleep(0.2)
    assert again and again != collectors


def test_up_stops_everything_on_sigterm(console):
    tree = descendants(console.proc.pid)
    assert len(tree) >= 6
    started = time.monotonic()
    console.proc.send_signal(signal.SIGTERM)
    console.proc.wait(30)
    took = time.monotonic() - started
    time.sleep(0.5)
    left = [(p, cmdline(p)) for p in tree if alive(p)]
    assert left == [], left
    assert took < 20, f"stopping took {took:.1f}s"
    assert any("[up] stopped" in line for line in console.lines)
    assert console.proc.returncode == 0
