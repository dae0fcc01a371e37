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


def setup_django(var_dir: Path) -> None:
    """Django on a fresh SQLite database under ``var_dir`` (migrated)."""
    os.environ["LUCENT_VAR_DIR"] = str(var_dir)
    os.environ["DJANGO_SETTINGS_MODULE"] = "lucent_console.settings"
    os.environ.pop("DATABASE_URL", None)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


@contextlib.contextmanager
def environment(prefix: str, with_bus: bool = True):
    """(tmp dir, nats server or None): Django set up, NATS_URL pointing at the server."""
    tmp = Path(tempfile.mkdtemp(prefix=f"lucent-{prefix}-"))
    server = None
    try:
        setup_django(tmp / "var")
        if with_bus:
            from lucent_bus import embedded

            server = embedded.single(tmp / "bus" / "js").start().wait()
            os.environ["NATS_URL"] = server.url
        yield tmp, server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


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
