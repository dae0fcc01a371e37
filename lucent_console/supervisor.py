"""A small process supervisor for ``manage.py up``.

Each child runs in its own session (so a terminal's Ctrl-C reaches only
``up``, which then stops the children in order) and asks the kernel to
SIGTERM it if ``up`` itself dies. Its output is prefixed with its name and the
last lines are kept, so that when a child dies ``up`` can say which and why.

Stopping: SIGTERM to each child's whole process group (Celery's pool
processes included), in reverse start order, then SIGKILL whatever is still
there after the grace period. Nothing is left behind.
"""

from __future__ import annotations

import collections
import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def describe_exit(code: int | None) -> str:
    if code is None:
        return "running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str] | None = None
    echo: bool = True
    infrastructure: bool = False  # stopped last (the embedded nats-server)
    # A line that says the child is up (regex): `up` waits for it before its banner, so the
    # banner is the last thing printed at startup rather than lost among the children's.
    ready: str | None = None
    # Known harmless lines not echoed (still kept in the tail shown when the child dies).
    mute: tuple[str, ...] = ()
    proc: subprocess.Popen | None = None
    is_ready: bool = False
    last_line_at: float = 0.0
    tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=15))
    restarts: list[float] = field(default_factory=list)

    def start(self, out=sys.stdout) -> None:
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent,
        )
        threading.Thread(target=self._pump, args=(self.proc, out), daemon=True).start()

    def _pump(self, proc: subprocess.Popen, out) -> None:
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode(errors="replace").rstrip()
            self.tail.append(line)
            self.last_line_at = time.monotonic()
            if self.ready and re.search(self.ready, line):
                self.is_ready = True
            if any(m in line for m in self.mute):
                continue
            if self.echo:
                out.write(f"[{self.name}] {line}\n")
                out.flush()
        proc.stdout.close()

    def poll(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def group_alive(self) -> bool:
        if self.proc is None:
            return False
        self.proc.poll()
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


class Supervisor:
    def __init__(self, out=sys.stdout, max_restarts: int = 5, window: float = 60.0) -> None:
        self.children: list[Child] = []
        self.out = out
        self.max_restarts = max_restarts
        self.window = window
        self.stopping = False

    def say(self, text: str) -> None:
        self.out.write(f"[up] {text}\n")
        self.out.flush()

    def start(self, child: Child) -> Child:
        child.start(self.out)
        self.children.append(child)
        return child

    def settle(self, timeout: float = 20.0, quiet: float = 0.7) -> None:
        """Wait until every child with a ``ready`` line has said it (or died) and all have
        been silent for ``quiet`` seconds, at most ``timeout``: their startup lines come
        before whatever is printed next."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            waiting = [c for c in self.children
                       if c.ready and not c.is_ready and c.poll() is None]
            last = max((c.last_line_at for c in self.children), default=0.0)
            if not waiting and time.monotonic() - last >= quiet:
                return
            time.sleep(0.1)

    def check(self) -> bool:
        """Restart children that died; False when one keeps dying (give up)."""
        for child in self.children:
            code = child.poll()
            if code is None or self.stopping:
                continue
            why = describe_exit(code)
            last = " | ".join(list(child.tail)[-5:]) or "no output"
            self.say(f"{child.name} {why}; last output: {last}")
            now = time.monotonic()
            child.restarts = [t for t in child.restarts if now - t < self.window] + [now]
            if len(child.restarts) > self.max_restarts:
                self.say(f"{child.name} died {len(child.restarts)} times in "
                         f"{self.window:.0f}s; stopping everything")
                return False
            delay = min(10.0, 0.5 * 2 ** (len(child.restarts) - 1))
            self.say(f"restarting {child.name} in {delay:.1f}s")
            time.sleep(delay)
            child.signal_group(signal.SIGKILL)  # leftovers of the dead child's group
            child.start(self.out)
        return True

    def stop(self, grace: float = 6.0) -> None:
        """Stop the application children, then the infrastructure (the bus).

        Each tier: SIGTERM every process group, SIGKILL what remains after
        ``grace`` seconds, reap.
        """
        self.stopping = True
        apps = [c for c in self.children if not c.infrastructure]
        infra = [c for c in self.children if c.infrastructure]
        for tier in (apps, infra):
            self._stop_tier(list(reversed(tier)), grace)

    def _stop_tier(self, tier: list[Child], grace: float) -> None:
        for child in tier:
            child.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(c.group_alive() for c in tier):
            time.sleep(0.1)
        for child in tier:
            if child.group_alive():
                self.say(f"{child.name} did not stop in {grace:.0f}s; killing it")
                child.signal_group(signal.SIGKILL)
        for child in tier:
            if child.proc is not None:
                try:
                    child.proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass
