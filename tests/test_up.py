"""``manage.py up`` end to end: the whole tree, a browser, a dead child, a clean stop."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from lucent_console.bus import embedded

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.getenv("LUCENT_CHROMIUM", "/usr/bin/chromium")
PASSWORD = "test-admin-pw-1"


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children first found through /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class Console:
    def __init__(self, tmp: Path) -> None:
        self.port = embedded.free_port()
        self.nats_port = embedded.free_port()
        env = {k: v for k, v in os.environ.items()
               if k not in ("NATS_URL", "DATABASE_URL", "REDIS_URL")}
        env.update(LUCENT_VAR_DIR=str(tmp / "var"), LUCENT_ADMIN_PASSWORD=PASSWORD,
                   LUCENT_NATS_PORT=str(self.nats_port), PYTHONUNBUFFERED="1",
                   LUCENT_DEMO_POISON="0.3")
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "up", "--demo", "--port", str(self.port)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _read(self) -> None:
        for raw in iter(self.proc.stdout.readline, b""):
            self.lines.append(raw.decode(errors="replace").rstrip())

    def wait_for(self, text: str, timeout: float = 90.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{text!r} not seen; output:\n" + "\n".join(self.lines[-60:]))

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            for pid in descendants(self.proc.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.kill()
            self.proc.wait()


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
    assert health["bus"]["streams"] == 6
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
    if not Path(CHROMIUM).exists():
        if os.getenv("CI"):
            pytest.fail(f"{CHROMIUM} missing: .ci/run must install Debian's chromium")
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
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
            assert page.locator("#bus-status").inner_text().startswith("Bus connected")
            table = page.locator("#streams-table").inner_text()
            for name in ("DOMAIN_EVENTS", "COMMANDS", "AGENT_COORDINATION", "HIERARCHY",
                         "DEAD_LETTERS", "LUCENT_ADVISORIES"):
                assert name in table
            page.wait_for_function("() => document.querySelector('#bus-status') !== null")
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


def test_chromium_is_debian_s():
    if os.getenv("CI"):
        assert shutil.which("chromium") or Path(CHROMIUM).exists()
