"""Shared fixtures: real nats-servers (never mocks), role users, helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, User

from lucent_bus import embedded
from lucent_bus.client import connect
from lucent_bus.config import BusConfig


@pytest.fixture(scope="session", autouse=True)
def static_files():
    """Pages name static files by their hashed names (the manifest storage): collect them
    once per session, as `manage.py up` does. Under a lock: several sessions may share
    var/static."""
    import fcntl

    from django.conf import settings

    from lucent_console.management.commands.up import collect_static

    settings.STATIC_ROOT.mkdir(parents=True, exist_ok=True)
    with open(settings.VAR_DIR / "static.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        collect_static()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory):
    """One nats-server (pinned binary) for the session; NATS_URL points at it."""
    server = embedded.single(tmp_path_factory.mktemp("nats") / "js").start().wait()
    previous = os.environ.get("NATS_URL")
    os.environ["NATS_URL"] = server.url
    yield server
    server.stop()
    if previous is None:
        os.environ.pop("NATS_URL", None)
    else:
        os.environ["NATS_URL"] = previous


@pytest.fixture
def fresh_server(tmp_path):
    """A nats-server of the test's own, with an empty JetStream store."""
    server = embedded.single(Path(tmp_path) / "js").start().wait()
    yield server
    server.stop()


@pytest.fixture
async def fresh_nc(fresh_server):
    nc = await connect("test", BusConfig.from_env({"NATS_URL": fresh_server.url}),
                       retry_initial=False)
    yield nc
    await nc.close()


@pytest.fixture
def users(db):
    """Standing users, one per role, plus one with no role at all."""
    out = {}
    for role in ("viewer", "operator", "admin"):
        user = User.objects.create_user(role, password="pw-" + role)
        user.groups.add(Group.objects.get_or_create(name=role)[0])
        out[role] = user
    out["nobody"] = User.objects.create_user("nobody", password="pw-nobody")
    return out


@pytest.fixture
def viewer_client(client, users):
    client.force_login(users["viewer"])
    return client


class CollectorThread:
    """The real collector's sweep loop, in a thread of the test process.

    Sweeps every ``interval`` seconds and answers full-snapshot requests, as
    ``manage.py collector`` does (minus the heartbeat row and the agent failures
    read at start, which would fight the test's database transaction).
    """

    def __init__(self, url: str, interval: float = 0.25) -> None:
        import asyncio
        import threading

        self.url, self.interval = url, interval
        self.loop = asyncio.new_event_loop()
        self.collector = None
        self.ready = threading.Event()
        self.stopping = False
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._run(),),
                                       daemon=True)
        self.thread.start()
        assert self.ready.wait(10), "collector thread did not start"

    async def _run(self):
        import asyncio

        from lucent_bus import live
        from lucent_console.collector import Collector

        nc = await connect("collector", BusConfig.from_env({"NATS_URL": self.url}),
                           retry_initial=False)
        self.collector = Collector(nc, self.interval)
        await live.serve_full(nc, lambda: self.collector.snapshot)
        await self.collector.watch_services()
        await self.collector.watch_agents(seed=False)
        stop = asyncio.Event()
        pushing = asyncio.create_task(self.collector.push_events(stop))
        await self.collector.sweep_once()
        self.ready.set()
        while not self.stopping:
            await asyncio.sleep(self.interval)
            await self.collector.watch_agents(seed=False)
            await self.collector.sweep_once()
        pushing.cancel()
        await nc.close()
        # sync_to_async's one worker thread kept a database connection (alert rows, the
        # index): close it, or PostgreSQL cannot drop the test database.
        from asgiref.sync import sync_to_async
        from django.db import connections

        await sync_to_async(connections.close_all)()

    @property
    def snapshot(self) -> dict:
        return self.collector.snapshot

    def wait_for(self, predicate, timeout: float = 10.0) -> dict:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            snap = self.collector.snapshot
            if snap and predicate(snap):
                return snap
            time.sleep(0.05)
        snap = self.collector.snapshot or {}
        raise AssertionError("the snapshot never satisfied the condition; last: " + repr(
            {k: v for k, v in snap.items() if k not in ("streams", "consumers")})[:3000])

    def stop(self) -> None:
        self.stopping = True
        self.thread.join(10)


@pytest.fixture
def collector(fresh_server, monkeypatch):
    """A collector sweeping the test's own bus; NATS_URL points the web side at it."""
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    c = CollectorThread(fresh_server.url)
    yield c
    c.stop()


def run(coro):
    """Run a coroutine from a sync test (bus setup before driving the web client)."""
    import asyncio

    return asyncio.run(coro)


async def bus(url: str):
    return await connect("test-setup", BusConfig.from_env({"NATS_URL": url}), retry_initial=False)


@pytest.fixture(autouse=True)
def fresh_relay():
    """Each test starts with a web side that has seen no snapshot."""
    from streams.live import relay

    relay.__init__()
    yield relay


@pytest.fixture(autouse=True)
def inline_jobs(settings):
    settings.LUCENT_JOBS_INLINE = True


# ---------------------------------------------------------------- time budgets of slow suites

# Seconds each slow suite may take in all (its tests' setup, call and teardown added up):
# `make test` must stay under 20 minutes on 2 cores, so a suite that grows past its budget
# fails the run loudly rather than slowly eating the others' time. A test joins a suite
# with `pytestmark = pytest.mark.suite("faults")`.
BUDGETS_S = {"faults": 360.0, "fuzz": 240.0, "screenshots": 180.0}
_spent: dict[str, float] = {}


def pytest_runtest_logreport(report):
    suite = getattr(report, "lucent_suite", None)
    if suite:
        _spent[suite] = _spent.get(suite, 0.0) + report.duration


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    marker = item.get_closest_marker("suite")
    if marker is not None:
        outcome.get_result().lucent_suite = marker.args[0]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    for suite, spent in sorted(_spent.items()):
        budget = BUDGETS_S.get(suite)
        over = budget is not None and spent > budget
        terminalreporter.write_line(
            f"suite {suite}: {spent:.0f}s of its {budget:.0f}s budget"
            + (" - OVER BUDGET" if over else ""), red=over)


def pytest_sessionfinish(session, exitstatus):
    if any(spent > BUDGETS_S.get(suite, float("inf")) for suite, spent in _spent.items()):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
