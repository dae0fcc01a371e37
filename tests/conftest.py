"""Shared fixtures: real nats-servers (never mocks), role users, helpers."""

from __future__ import annotations

import ast
import faulthandler
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, User

from lucent_bus import embedded
from lucent_bus.client import connect
from lucent_bus.config import BusConfig

# A background thread (a bus connection of an earlier test, reconnecting to its stopped
# server) logging to a stream pytest has closed made logging print "--- Logging error ---"
# with a full traceback, every two seconds. On Python 3.11 formatting a traceback parses
# source (ast.parse, for the ^^^ marks), and ast.parse is not thread-safe in 3.11.7:
# one CI run died with INTERNALERROR "AST constructor recursion depth mismatch" while
# pytest parsed a failing test's source. Such logging errors are dropped instead.
logging.raiseExceptions = False
# It happened again with a thread printing an ordinary traceback (asyncio's "Task
# exception was never retrieved") while pytest parsed a failing test's source for its
# report, and the report was lost. CPython 3.11.7 keeps the AST constructor's recursion
# depth in state shared by every parse (gh-106905; per-call since 3.11.8, GH-113035):
# parses run one at a time here.
_ast_parse, _ast_lock = ast.parse, threading.Lock()


def _parse_alone(*args, **kwargs):
    with _ast_lock:
        return _ast_parse(*args, **kwargs)


ast.parse = _parse_alone


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


# Debian's nats-server 2.9 (not the pinned binary): compatibility tests only.
NATS_29 = os.getenv("LUCENT_NATS_29", "/usr/sbin/nats-server")


@pytest.fixture
def old_server(tmp_path, monkeypatch):
    """Debian's nats-server 2.9 on a free port with a store of its own; NATS_URL points at
    it. Skipped where that package is not installed."""
    if not Path(NATS_29).exists():
        pytest.skip(f"{NATS_29} not installed (Debian's nats-server package)")
    version = subprocess.run([NATS_29, "--version"], capture_output=True, text=True).stdout
    port = embedded.free_port()
    args = [NATS_29] + embedded.server_args(port, tmp_path / "js")[1:]
    server = embedded.Server(port, tmp_path / "js", args, tmp_path / "nats.log").start().wait()
    server.version = version.strip()
    monkeypatch.setenv("NATS_URL", server.url)
    yield server
    server.stop()


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
    """The real collector, ``Collector.run`` (sweeps, full-snapshot answers, the service,
    hierarchy and agent watches, the dead-letter capture and index, the trace indexer,
    heartbeats), in a thread of the test process: what ``manage.py collector`` runs in a
    leader's term, minus the election. It writes to the database from its own thread,
    so a test using it needs ``django_db(transaction=True)`` (the ``collector`` fixture
    asks for ``transactional_db`` itself).

    ``interval`` is the sweep interval; ``.collector.interval`` may be changed while it
    runs (read before each wait). An error that ends the thread is raised again by
    ``wait_for`` and ``stop``.
    """

    def __init__(self, url: str, interval: float = 0.25) -> None:
        import asyncio
        import threading

        self.url, self.interval = url, interval
        self.loop = asyncio.new_event_loop()
        self.collector = None
        self.error: BaseException | None = None
        self._stop = None  # the asyncio.Event Collector.run waits on, made in the loop
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._main, daemon=True, name="test-collector")
        self.thread.start()
        if not self.ready.wait(15):
            self.stop()
            raise AssertionError("the collector thread made no snapshot within 15 s")
        self._raise_error()

    def _main(self) -> None:
        try:
            self.loop.run_until_complete(self._run())
        except BaseException as exc:  # kept for wait_for and stop to raise in the test
            self.error = exc
        finally:
            self.ready.set()
            # What nats-py left running on the closed connections (ordered consumers'
            # checks): cancelled, not destroyed pending with the loop.
            import asyncio

            left = asyncio.all_tasks(self.loop)
            for task in left:
                task.cancel()
            if left:
                self.loop.run_until_complete(asyncio.wait(left))
            self.loop.close()

    async def _run(self) -> None:
        import asyncio

        from asgiref.sync import sync_to_async
        from django.db import connections

        from lucent_console.collector import Collector

        nc = await connect("collector", BusConfig.from_env({"NATS_URL": self.url}),
                           retry_initial=False)
        try:
            self._stop = asyncio.Event()
            self.collector = Collector(nc, self.interval)
            running = asyncio.create_task(self.collector.run(self._stop))
            while self.collector.snapshot is None and not running.done():
                await asyncio.sleep(0.01)  # until the first sweep has published
            self.ready.set()
            await running
        finally:
            await nc.close()
            # sync_to_async's one worker thread kept a database connection (heartbeat,
            # alerts, the indexes): close it, or PostgreSQL cannot drop the test database.
            await sync_to_async(connections.close_all)()

    def _raise_error(self) -> None:
        if self.error is not None:
            raise AssertionError(f"the collector thread failed: {self.error!r}") from self.error

    @property
    def snapshot(self) -> dict:
        return self.collector.snapshot

    def wait_for(self, predicate, timeout: float = 10.0) -> dict:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._raise_error()
            snap = self.collector.snapshot
            if snap and predicate(snap):
                return snap
            time.sleep(0.05)
        snap = self.collector.snapshot or {}
        raise AssertionError("the snapshot never satisfied the condition; last: " + repr(
            {k: v for k, v in snap.items() if k not in ("streams", "consumers")})[:3000])

    def next_sweep(self, timeout: float = 10.0) -> dict:
        """The snapshot of the first good sweep to finish after this call (snapshots pushed
        for events between sweeps do not count). The collector reads its interval after
        that sweep: an interval changed before this call holds from then on."""
        seq = (self.collector.snapshot or {}).get("seq", 0)
        return self.wait_for(lambda s: s["seq"] > seq and s.get("ok") and not s.get("event"),
                             timeout)

    def following_agents(self, timeout: float = 10.0) -> dict:
        """Once the collector follows the agent stream (jobs, acks, failures, outputs; it
        tries every sweep until the stream exists), the next sweep's snapshot: that sweep's
        requests went out after the subscriptions, so the server has them all."""
        from .support import wait_until

        wait_until(lambda: self._raise_error() or self.collector.watching_agents, timeout,
                   "the collector follows the agent stream")
        return self.next_sweep(timeout)

    def stop(self) -> None:
        """Set the run's stop event (it finishes its term: the capture, index and trace
        indexer end, the indexer writing what it holds) and wait for the thread."""
        if self.thread.is_alive() and self._stop is not None:
            try:
                self.loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:  # the loop closed between the check and the call
                pass
        self.thread.join(30)
        if self.thread.is_alive():
            raise AssertionError("the collector thread did not stop within 30 s")
        self._raise_error()


def pytest_configure(config):
    config.addinivalue_line("markers", "collector_without_trace_index: the `collector` fixture "
                            "runs with its trace indexer down (a test of the index's lag)")


async def _trace_index_down(nc, stop) -> None:
    """``traces.indexer.run`` of a collector whose trace indexer is down."""
    await stop.wait()


@pytest.fixture
def collector(request, fresh_server, monkeypatch, transactional_db):
    """A collector sweeping the test's own bus; NATS_URL points the web side at it.
    Transactional: the collector's thread writes (heartbeats, alerts, indexes). With
    ``@pytest.mark.collector_without_trace_index`` its trace indexer does nothing."""
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    if request.node.get_closest_marker("collector_without_trace_index"):
        monkeypatch.setattr("traces.indexer.run", _trace_index_down)
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

@pytest.fixture(autouse=True)
def _monitoring_answers_of_this_test_only():
    """Pages share the monitoring source's answers for a second (servers.overview.SHARED):
    a test starts without those of the test before it."""
    shared = sys.modules.get("servers.overview")
    if shared is not None:
        shared.SHARED.clear()


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
    _final_status[0] = int(session.exitstatus)


# After the results, the interpreter still joins every non-daemon thread (asgiref's and
# asyncio's executor workers among them). One that never ended once held a CI run for an
# hour after its last test: asyncio.run's teardown of asgiref's per-call loop waiting for
# a loop task whose cancel Python 3.11's wait_for had lost (lucent_bus.cancel; the tests
# of that are in test_sync.py). In case of another: if the process is still here
# EXIT_GRACE_S after pytest is done, print every thread's stack (loudly, to the real
# stderr) and exit with the tests' status.
EXIT_GRACE_S = float(os.environ.get("LUCENT_TEST_EXIT_GRACE_S", "60"))
_final_status = [int(pytest.ExitCode.INTERNAL_ERROR)]


def _exit_watchdog() -> None:
    time.sleep(EXIT_GRACE_S)
    for stream in (sys.stdout, sys.__stdout__):
        try:
            stream.flush()
        except (ValueError, OSError):
            pass  # closed
    err = sys.__stderr__
    err.write(f"\nLUCENT TESTS: the process did not exit {EXIT_GRACE_S:.0f}s after pytest "
              f"finished (status {_final_status[0]}); threads still running:\n")
    faulthandler.dump_traceback(file=err, all_threads=True)
    err.flush()
    os._exit(_final_status[0])


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    threading.Thread(target=_exit_watchdog, name="exit-watchdog", daemon=True).start()
