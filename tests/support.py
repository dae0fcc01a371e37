"""Helpers shared by the end-to-end tests: a real `manage.py up` and its process tree."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from lucent_bus import embedded

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.getenv("LUCENT_CHROMIUM", "/usr/bin/chromium")
PASSWORD = "test-admin-pw-1"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


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
    def __init__(self, tmp: Path, nats_url: str | None = None, demo: bool = True) -> None:
        self.port = embedded.free_port()
        self.nats_port = embedded.free_port()
        self.var_dir = tmp / "var"
        env = {k: v for k, v in os.environ.items()
               if k not in ("NATS_URL", "DATABASE_URL", "REDIS_URL")}
        env.update(LUCENT_VAR_DIR=str(tmp / "var"), LUCENT_ADMIN_PASSWORD=PASSWORD,
                   LUCENT_NATS_PORT=str(self.nats_port), PYTHONUNBUFFERED="1",
                   LUCENT_DEMO_POISON="0.3")
        if nats_url:
            env["NATS_URL"] = nats_url
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "up", "--port", str(self.port)] + (["--demo"] if demo else []),
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


def procfile() -> dict[str, str]:
    """The production process types, ``name: command``, from the Procfile."""
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line and not line.startswith("#"))


class Process:
    """One process as production runs it (a Procfile command run by bash, in its own
    session), output kept."""

    def __init__(self, name: str, command: str, env: dict[str, str]) -> None:
        self.name, self.lines = name, []
        env = {**env, "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
               "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()

    _read = Console._read
    wait_for = Console.wait_for

    def signal(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait()


def chromium_or_skip():
    import pytest

    if not Path(CHROMIUM).exists():
        if os.getenv("CI"):
            pytest.fail(f"{CHROMIUM} missing: .ci/run must install Debian's chromium")
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")


def login(page, base_url: str) -> None:
    page.goto(base_url + "/login/")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("h1")


class WebsocketClient:
    """A websocket client for ASGI apps (what Channels' WebsocketCommunicator does,
    without importing channels.testing, which needs Daphne)."""

    def __init__(self, application, path: str, headers: list | None = None) -> None:
        from asgiref.testing import ApplicationCommunicator

        path, _, query = path.partition("?")
        scope = {"type": "websocket", "path": path, "query_string": query.encode(),
                 "headers": headers or [], "subprotocols": [], "scheme": "ws",
                 "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80)}
        self.comm = ApplicationCommunicator(application, scope)

    async def connect(self, timeout: float = 5):
        await self.comm.send_input({"type": "websocket.connect"})
        response = await self.comm.receive_output(timeout)
        return response["type"] == "websocket.accept", response.get("code")

    async def receive_from(self, timeout: float = 1) -> str:
        message = await self.comm.receive_output(timeout)
        assert message["type"] == "websocket.send", message
        return message.get("text") or message.get("bytes", b"").decode()

    async def disconnect(self, code: int = 1000, timeout: float = 1) -> None:
        await self.comm.send_input({"type": "websocket.disconnect", "code": code})
        await self.comm.wait(timeout)


class WebhookReceiver:
    """An HTTP server that records the JSON bodies POSTed to it, with the time each
    arrived, answering 500 to the first ``fail`` requests (a receiver that is down);
    each request's ``Idempotency-Key`` in ``keys``; ``slow`` seconds before answering
    the first ``slow_calls`` requests (a receiver that takes its time)."""

    def __init__(self, fail: int = 0, slow: float = 0.0, slow_calls: int = 1) -> None:
        import json
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.fail, self.calls, self.received = fail, 0, []  # (monotonic time, body)
        self.keys: list[str | None] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                receiver.calls += 1
                call = receiver.calls
                receiver.keys.append(self.headers.get("Idempotency-Key"))
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if slow and call <= slow_calls:
                    time.sleep(slow)
                if call <= receiver.fail:
                    self.send_response(500)
                else:
                    receiver.received.append((time.monotonic(), json.loads(body)))
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    @property
    def bodies(self) -> list[dict]:
        return [body for _, body in self.received]

    def shutdown(self) -> None:
        self.server.shutdown()


def writer_that_dies_once():
    """A trace index writer (``traces.indexer.Writer`` target) that, the first time in
    any process, commits a batch and exits before replying (``LUCENT_TEST_WRITER_DIES``:
    the marker file)."""
    from traces import indexer

    write = indexer.writer_handler()
    marker = Path(os.environ["LUCENT_TEST_WRITER_DIES"])

    def dies_once(rows, token, after):
        stored = write(rows, token, after)
        if stored and not marker.exists():
            marker.write_text("died")
            os._exit(1)
        return stored

    return dies_once


def wait_until(check, timeout: float = 10.0, what: str = "", every: float = 0.05):
    """Poll ``check()`` until it returns something true; that value. AssertionError,
    naming ``what``, after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"never happened within {timeout}s: {what}")
        time.sleep(every)


def freeze(server) -> None:
    """SIGSTOP a nats-server (``embedded.Server``): its sockets stay open, nothing answers."""
    os.kill(server.proc.pid, signal.SIGSTOP)


def thaw(server) -> None:
    os.kill(server.proc.pid, signal.SIGCONT)


def crash_and_restart(server) -> None:
    """kill -9 a nats-server and start it again on the same port and store."""
    server.proc.kill()
    server.proc.wait()
    server.start().wait()


async def eventually(check, timeout: float = 10.0, what: str = "", every: float = 0.05):
    """``wait_until`` for async tests: ``check()`` (awaited if it gives an awaitable) until
    it gives something true; that value. AssertionError, naming ``what``, after ``timeout``
    seconds."""
    import asyncio
    import inspect

    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"never happened within {timeout}s: {what}")
        await asyncio.sleep(every)


def worker_process(code: str, **env: str) -> subprocess.Popen:
    """A worker of this checkout as its own process (to kill -9): ``code`` run after
    ``django.setup()`` on the test database (an SQLite file), with ``env`` added."""
    from django.db import connection

    environ = {**os.environ, "DATABASE_URL": f"sqlite:///{connection.settings_dict['NAME']}",
               "DJANGO_SETTINGS_MODULE": "lucent_console.settings", **env}
    return subprocess.Popen([sys.executable, "-c", "import django; django.setup(); " + code],
                            cwd=Path(__file__).resolve().parent.parent, env=environ,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
