"""Production mode: the Procfile's processes on PostgreSQL, Redis and a NATS cluster.

Collectors elect a leader on the bus; web processes each keep their own copy of the
snapshot. The PostgreSQL + Redis test runs when DATABASE_URL and REDIS_URL name them
(.ci/run sets both); it works in a database of its own, created and dropped here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from lucent_bus import embedded, live
from lucent_bus import jetstream as js
from lucent_bus.lease import read as read_lease
from streams import snapshot as snap
from streams import topology

from .conftest import bus
from .support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    PASSWORD,
    ROOT,
    Process,
    alive,
    chromium_or_skip,
    cmdline,
    descendants,
    login,
    procfile,
)

FAILOVER_LIMIT_S = 10.0


class Deltas:
    """The collectors' deltas as a web process receives them, kept in a thread of the
    test; ``call`` runs other bus work on the same loop (Playwright owns the main one)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: list[tuple[float, int, bool]] = []  # (monotonic, seq, full)
        self.snapshot: dict | None = None
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.nc = self.call(bus, url)
        self.call(live.subscribe_deltas, self.nc, self._on_delta)

    def call(self, fn, *args, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(fn(*args), self.loop).result(timeout)

    async def _on_delta(self, delta: dict) -> None:
        self.seen.append((time.monotonic(), delta.get("seq"), bool(delta.get("full"))))
        self.snapshot = snap.apply_delta(self.snapshot, delta) or self.snapshot

    def wait_for(self, predicate, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.snapshot and predicate(self.snapshot):
                return self.snapshot
            time.sleep(0.05)
        raise AssertionError(f"{what}: not seen in {timeout}s; last snapshot head: "
                             f"{ {k: (self.snapshot or {}).get(k) for k in snap.HEAD} }")

    def first_full_after(self, t: float, timeout: float) -> float:
        """When the first whole snapshot (a collector's first publication) came after ``t``."""
        deadline = t + timeout
        while time.monotonic() < deadline:
            for at, _, full in list(self.seen):
                if at > t and full:
                    return at
            time.sleep(0.02)
        raise AssertionError(f"no collector published in the {timeout}s after the kill")

    def close(self) -> None:
        self.call(self.nc.close)
        self.loop.call_soon_threadsafe(self.loop.stop)


def _apply_topology(nc, timeout: float = 30.0):
    """topology apply, retried while a fresh cluster elects its JetStream meta leader."""

    async def go():
        deadline = time.monotonic() + timeout
        while True:
            try:
                return await topology.apply(nc)
            except js.JetStreamError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    return go()


def _assert_one_active(deltas: Deltas, monitor: int, seconds: float) -> None:
    """One collector at work: its sequence numbers follow each other (none repeats), and
    one connection on the bus is a working collector's (sweeps, full snapshots, capture)."""
    start = time.monotonic()
    time.sleep(seconds)
    seqs = [seq for at, seq, _ in deltas.seen if at >= start]
    assert len(seqs) >= seconds / 2, seqs
    assert all(b == a + 1 for a, b in zip(seqs, seqs[1:], strict=False)), seqs
    _, connz = _get(f"http://127.0.0.1:{monitor}/connz?subs=1")
    working = [c["name"] for c in connz["connections"]
               if live.FULL_SUBJECT in c.get("subscriptions_list", [])]
    assert working == ["lucent-console collector (leader)"], working


@pytest.fixture(scope="module")
def sqlite_env(tmp_path_factory) -> dict[str, str]:
    """The environment of the production processes, on a migrated SQLite of their own."""
    var = tmp_path_factory.mktemp("prod") / "var"
    env = {k: v for k, v in os.environ.items()
           if k not in ("NATS_URL", "DATABASE_URL", "REDIS_URL")}
    env.update(LUCENT_VAR_DIR=str(var), DJANGO_SETTINGS_MODULE="lucent_console.settings")
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env,
                   check=True, timeout=120)
    return env


@pytest.fixture
def nats(tmp_path):
    """A nats-server with its monitoring port (``server.monitor``) open: /connz shows who
    is connected and subscribed to what."""
    port, monitor = embedded.free_port(), embedded.free_port()
    args = embedded.server_args(port, tmp_path / "js", extra=["-m", str(monitor)])
    server = embedded.Server(port, tmp_path / "js", args, tmp_path / "nats.log").start().wait()
    server.monitor = monitor
    yield server
    server.stop()


def test_two_collectors_elect_one_and_the_standby_takes_over_within_10s(sqlite_env, nats):
    deltas = Deltas(nats.url)
    deltas.call(_apply_topology, deltas.nc)
    env = {**sqlite_env, "NATS_URL": nats.url}
    first = Process("collector-1", procfile()["collector"], env)
    second = None
    try:
        first.wait_for("is the leader", 30)
        second = Process("collector-2", procfile()["collector"], env)
        second.wait_for("standby; the leader is", 30)
        _assert_one_active(deltas, nats.monitor, 3)

        killed = time.monotonic()
        first.signal(signal.SIGKILL)
        took = deltas.first_full_after(killed, FAILOVER_LIMIT_S) - killed
        assert took < FAILOVER_LIMIT_S
        holder = second.wait_for("is the leader", 1).split("collector: ")[1].split(" is the")[0]
        assert deltas.call(read_lease, deltas.nc, "collector")["holder"] == holder
        _assert_one_active(deltas, nats.monitor, 2)
        print(f"failover after kill -9: {took:.2f}s")
    finally:
        for p in (first, second):
            if p is not None:
                p.stop()
        deltas.close()


def _celery_beats(pid: int) -> list[int]:
    return [p for p in descendants(pid) if "celery" in cmdline(p) and " beat" in cmdline(p)]


def test_two_beats_elect_one_and_a_killed_leaders_beat_dies_with_it(sqlite_env, nats, tmp_path):
    """Periodic tasks are scheduled by one celery beat in the deployment: the elected
    ``manage.py beat`` runs it; killed with -9, its beat dies too (not left running
    beside the next one) and the standby starts its own."""
    env = {**sqlite_env, "NATS_URL": nats.url, "LUCENT_LEADER_TTL": "2"}
    # Each with a schedule file of its own, as on two machines.
    first = Process("beat-1", f"{procfile()['beat']} --schedule {tmp_path / 'one'}", env)
    second = None
    try:
        first.wait_for("is the leader", 30)
        second = Process("beat-2", f"{procfile()['beat']} --schedule {tmp_path / 'two'}", env)
        second.wait_for("standby; the leader is", 30)
        deadline = time.monotonic() + 20
        while not _celery_beats(first.proc.pid):
            assert time.monotonic() < deadline, "the leader started no celery beat"
            time.sleep(0.1)
        old = _celery_beats(first.proc.pid)
        assert len(old) == 1 and _celery_beats(second.proc.pid) == []

        os.kill(first.proc.pid, signal.SIGKILL)  # manage.py beat alone, not its group
        second.wait_for("is the leader", 15)
        deadline = time.monotonic() + 20
        while alive(old[0]) or len(_celery_beats(second.proc.pid)) != 1:
            assert time.monotonic() < deadline, (alive(old[0]), _celery_beats(second.proc.pid))
            time.sleep(0.1)
    finally:
        for p in (first, second):
            if p is not None:
                p.stop()
    assert not alive(old[0])


# ------------------------------------------------------------------ PostgreSQL + Redis

def _services_or_skip() -> tuple[str, str]:
    db, redis_url = os.getenv("DATABASE_URL", ""), os.getenv("REDIS_URL", "")
    if not db.startswith(("postgres://", "postgresql://")) or not redis_url.startswith("redis://"):
        pytest.skip("production mode needs DATABASE_URL (PostgreSQL) and REDIS_URL (Redis); "
                    ".ci/run sets both when the services run")
    try:
        import psycopg
        import redis

        psycopg.connect(urlunsplit(urlsplit(db)._replace(path="/postgres")), connect_timeout=3).close()
        redis.Redis.from_url(redis_url, socket_timeout=3).ping()
    except Exception as exc:
        if os.getenv("CI"):
            pytest.fail(f"DATABASE_URL/REDIS_URL set but not reachable: {exc}")
        pytest.skip(f"PostgreSQL or Redis not reachable: {exc}")
    return db, redis_url


@pytest.fixture
def postgres_redis():
    """A PostgreSQL database of the test's own (next to DATABASE_URL's) and REDIS_URL."""
    import psycopg

    db, redis_url = _services_or_skip()
    parts = urlsplit(db)
    server = urlunsplit(parts._replace(path="/postgres"))  # DATABASE_URL's own may not exist yet
    name = f"lucent_prod_{secrets.token_hex(4)}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(parts._replace(path=f"/{name}")), redis_url
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _get(url: str) -> tuple[int, dict]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, json.loads(r.read())


@pytest.mark.browser
def test_two_web_processes_on_postgres_and_redis_update_live_across_a_collector_failover(
        postgres_redis, tmp_path, nats):
    chromium_or_skip()
    from playwright.sync_api import sync_playwright

    database_url, redis_url = postgres_redis
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    env.update(DATABASE_URL=database_url, REDIS_URL=redis_url, NATS_URL=nats.url,
               LUCENT_VAR_DIR=str(tmp_path / "var"), DJANGO_SETTINGS_MODULE="lucent_console.settings",
               WEB_CONCURRENCY="1", HOST="127.0.0.1")
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env,
                   check=True, timeout=180)
    # As a release does (README, "Running at scale"): pages name static files by hash.
    subprocess.run([sys.executable, "manage.py", "collectstatic", "--no-input", "-v", "0"],
                   cwd=ROOT, env=env, check=True, timeout=180)
    subprocess.run([sys.executable, "manage.py", "shell", "-v", "0", "-c",
                    f"from django.contrib.auth.models import User; "
                    f"User.objects.create_superuser('admin', '', '{PASSWORD}')"],
                   cwd=ROOT, env=env, check=True, timeout=60)
    deltas = Deltas(nats.url)
    deltas.call(_apply_topology, deltas.nc)
    ports = [embedded.free_port(), embedded.free_port()]
    procs = [Process(f"web-{port}", procfile()["web"], {**env, "PORT": str(port)}) for port in ports]
    try:
        procs.append(Process("collector-1", procfile()["collector"], env))
        procs[-1].wait_for("is the leader", 30)
        procs.append(Process("collector-2", procfile()["collector"], env))
        procs[-1].wait_for("standby; the leader is", 30)
        for port in ports:
            embedded.wait_listening(port, 30)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                pages = []
                for port in ports:  # a browser session on each web process
                    page = browser.new_context().new_page()
                    login(page, f"http://127.0.0.1:{port}")
                    page.goto(f"http://127.0.0.1:{port}/streams/")
                    page.wait_for_selector("#live-status.ok", timeout=15000)
                    page.evaluate("window.__still_here = true")
                    pages.append(page)

                def appears_everywhere(name: str) -> None:
                    deltas.call(js.add_stream, deltas.nc, {"name": name, "subjects": [f"{name.lower()}.>"],
                                                           "storage": "memory"})
                    for page in pages:
                        page.wait_for_selector(f"#stream-{name}", timeout=15000)
                        assert page.evaluate("window.__still_here") is True  # live, no reload

                appears_everywhere("BEFORE_FAILOVER")
                # Each web process's sockets are in its own group on the shared Redis layer.
                import redis

                groups = {k.decode() for k in redis.Redis.from_url(redis_url).keys("asgi:group:live.*")}
                for web in procs[:2]:
                    assert any(g.endswith(f".{web.proc.pid}") for g in groups), (web.proc.pid, groups)
                killed = time.monotonic()
                procs[2].signal(signal.SIGKILL)
                took = deltas.first_full_after(killed, FAILOVER_LIMIT_S) - killed
                assert took < FAILOVER_LIMIT_S
                appears_everywhere("AFTER_FAILOVER")
            finally:
                browser.close()
        holder = procs[3].wait_for("is the leader", 1).split("collector: ")[1].split(" is the")[0]
        for port in ports:
            status, health = _get(f"http://127.0.0.1:{port}/healthz")
            assert status == 200 and health["leader"] == {"collector": holder}, health
            assert health["database"] == "ok" and health["components"]["collector"]["stale"] is False
        print(f"failover after kill -9: {took:.2f}s")
    finally:
        for proc in procs:
            proc.stop()
        deltas.close()


# ------------------------------------------------------------------ a 3-node cluster

def _firing(database: Path, key: str) -> bool:
    import sqlite3

    with contextlib.closing(sqlite3.connect(database, timeout=5)) as db:
        return db.execute("SELECT 1 FROM alerts_alert WHERE key = ? AND state = 'firing'",
                          (key,)).fetchone() is not None


@pytest.mark.cluster
def test_a_cluster_that_loses_a_stream_leader_keeps_the_console_showing_data(sqlite_env, tmp_path):
    cluster = embedded.cluster(tmp_path / "cluster").start()
    deltas = None
    collector = None
    try:
        deltas = Deltas(cluster.url)
        deltas.call(_apply_topology, deltas.nc)
        deltas.call(js.add_stream, deltas.nc, {"name": "ORDERS", "subjects": ["orders.>"],
                                               "num_replicas": 3, "storage": "file"})
        for i in range(10):
            deltas.call(js.publish, deltas.nc, f"orders.{i}", b"{}")
        collector = Process("collector", procfile()["collector"], {**sqlite_env, "NATS_URL": cluster.url})
        deltas.wait_for(lambda s: s["ok"] and s["streams"].get("ORDERS", {}).get("messages") == 10
                        and s["streams"]["ORDERS"]["replicas_ok"], 30, "ORDERS with 3 current replicas")

        leader = deltas.call(js.stream_info, deltas.nc, "ORDERS")["cluster"]["leader"]
        victim = cluster.servers[int(leader.removeprefix("n"))]  # embedded.cluster names them n0..n2
        victim.proc.kill()  # kill -9: no leadership transfer, the replicas must elect
        victim.proc.wait()

        def degraded(s):
            orders = s["streams"].get("ORDERS", {})
            replicas = orders.get("cluster", {}).get("replicas", [])
            return (s["ok"] and orders.get("cluster", {}).get("leader") not in (None, leader)
                    and orders["replicas_ok"] is False
                    # the server marks it offline only once the cluster gives up on it
                    and any(r["name"] == leader and (r["offline"] or not r["current"])
                            for r in replicas))

        deltas.wait_for(degraded, 30, f"ORDERS led by another server, {leader} not current")
        # ... and the collector raised the replica alert (default rule, in its own database).
        database = Path(sqlite_env["LUCENT_VAR_DIR"]) / "console.sqlite3"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not _firing(database, "replica-offline:ORDERS"):
            time.sleep(0.5)
        assert _firing(database, "replica-offline:ORDERS"), "no replica alert for ORDERS"

        async def publish_more():
            for i in range(10, 15):
                while True:
                    try:
                        await js.publish(deltas.nc, f"orders.{i}", b"{}")
                        break
                    except js.JetStreamError:
                        await asyncio.sleep(0.2)

        deltas.call(publish_more)
        deltas.wait_for(lambda s: s["ok"] and s["streams"]["ORDERS"]["messages"] == 15, 20,
                        "the messages published after the election")
    finally:
        if collector is not None:
            collector.stop()
        if deltas is not None:
            deltas.close()
        cluster.stop()


# ------------------------------------------------------------------ settings

def test_check_deploy_is_clean_with_production_settings(tmp_path):
    env = {**os.environ, "DJANGO_DEBUG": "0", "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
           "DJANGO_ALLOWED_HOSTS": "console.example.com", "LUCENT_HTTPS": "1",
           "LUCENT_VAR_DIR": str(tmp_path / "var")}
    out = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "System check identified no issues" in out.stdout
