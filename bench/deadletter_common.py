"""Shared by bench/deadletter_*.py: a private nats-server, a throwaway Django
database (SQLite under a temp dir), and small helpers. Not a benchmark itself.

Everything runs on loopback against a nats-server started here on a free port
(the pinned binary from the virtualenv, never one from PATH, never port 4222);
``environment()`` stops it and removes its temp dir whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import bus, header  # noqa: E402,F401  (re-exported)

SECOND = 10**9


def code_note(*paths: str) -> None:
    """Which version of the console's code a run measured: sha256 prefix and mtime per file."""
    import hashlib
    from datetime import UTC, datetime

    parts = []
    for rel in paths:
        f = ROOT / rel
        digest = hashlib.sha256(f.read_bytes()).hexdigest()[:12]
        when = datetime.fromtimestamp(f.stat().st_mtime, UTC).strftime("%H:%M:%S")
        parts.append(f"{rel} {digest} (mtime {when} UTC)")
    print("# code: " + ", ".join(parts), flush=True)


def setup_django(var_dir: Path, database_url: str | None = None) -> None:
    """Django on a fresh SQLite database under ``var_dir`` (migrated), or on
    ``database_url`` (a PostgreSQL database the caller created empty)."""
    os.environ["LUCENT_VAR_DIR"] = str(var_dir)
    os.environ["DJANGO_SETTINGS_MODULE"] = "lucent_console.settings"
    if database_url:
        os.environ["DATABASE_URL"] = database_url
    else:
        os.environ.pop("DATABASE_URL", None)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


@contextlib.contextmanager
def environment(prefix: str, with_bus: bool = True, database_url: str | None = None):
    """(tmp dir, nats server or None): Django set up, NATS_URL pointing at the server.
    ``database_url``: a PostgreSQL server's URL; a database of this run's own is created
    there (``<prefix>_<pid>``) and dropped at the end."""
    tmp = Path(tempfile.mkdtemp(prefix=f"lucent-{prefix}-"))
    server = None
    pg = _PgDatabase(database_url, f"lucent_{prefix}_{os.getpid()}") if database_url else None
    try:
        setup_django(tmp / "var", pg.create() if pg else None)
        if with_bus:
            from lucent_bus import embedded

            server = embedded.single(tmp / "bus" / "js").start().wait()
            os.environ["NATS_URL"] = server.url
        yield tmp, server
    finally:
        if server is not None:
            server.stop()
        if pg is not None:
            pg.drop()
        shutil.rmtree(tmp, ignore_errors=True)


class _PgDatabase:
    """A throwaway PostgreSQL database next to ``url``'s (created, then dropped)."""

    def __init__(self, url: str, name: str) -> None:
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(url)
        self.admin = urlunsplit(parts._replace(path="/postgres"))
        self.url, self.name = urlunsplit(parts._replace(path="/" + name)), name

    def _run(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql)

    def create(self) -> str:
        self._run(f'DROP DATABASE IF EXISTS "{self.name}"')
        self._run(f'CREATE DATABASE "{self.name}"')
        return self.url

    def drop(self) -> None:
        from django.db import connections

        connections.close_all()
        self._run(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def postgres_reachable(url: str) -> str:
    """"" when PostgreSQL answers at ``url``'s server, else why not."""
    try:
        _PgDatabase(url, "x")._run("SELECT 1")
    except Exception as exc:  # any failure means: not reachable, say why
        return f"{type(exc).__name__}: {exc}".strip()
    return ""


def db_path() -> Path:
    from django.conf import settings

    return Path(settings.DATABASES["default"]["NAME"])


def db_size_mb() -> float:
    """The SQLite file plus its WAL, in MiB."""
    p = db_path()
    total = 0
    for f in (p, p.with_name(p.name + "-wal"), p.with_name(p.name + "-shm")):
        if f.exists():
            total += f.stat().st_size
    return total / 2**20


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def median_ms(xs: list[float]) -> str:
    return (f"median {statistics.median(xs) * 1000:.1f} ms, min {min(xs) * 1000:.1f}, "
            f"max {max(xs) * 1000:.1f} (n={len(xs)})")


class Clock:
    """Accumulates wall time of named sections."""

    def __init__(self) -> None:
        self.t: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.t[name] = self.t.get(name, 0.0) + time.perf_counter() - start


async def stream_state(nc, name: str) -> dict:
    from lucent_bus import jetstream as js

    return (await js.stream_info(nc, name))["state"]
