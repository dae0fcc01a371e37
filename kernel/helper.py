"""Helper processes: work that needs a core of its own, off the caller's GIL.

A helper is a child Python running ``django.setup()`` and one handler, found by a
short name in ``HANDLERS``: apps ``register(name, factory)`` in their
``AppConfig.ready`` (this module knows no app); the factory is called once in the
child and returns the function that ``Helper.call`` runs there. Arguments and results
travel pickled over the child's stdin and stdout, one call at a time. Used by the bulk
replay (``replay-shard``, ``deadletters.replay.Shard``: a share of each batch on a bus
connection of its own) and by the trace index (``trace-writer``, ``traces.writer``:
database writes under load).

The child works on the caller's database (``connection.settings_dict["NAME"]``,
so a test database stays the test database). If it dies, ``call`` raises
``HelperGone`` and ``alive`` turns false: whether the last call took effect is
unknown, and the caller must be able to repeat it harmlessly.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Callable

from django.conf import settings
from django.db import connection, connections


class HelperError(Exception):
    """The handler raised in the child (its work did not complete)."""


class HelperGone(HelperError):
    """The child is gone: the last call may or may not have taken effect."""


# short name -> factory, called once in the child, returning the handler of its calls
HANDLERS: dict[str, Callable[[], Callable]] = {}


def register(name: str, factory: Callable[[], Callable]) -> None:
    """Make ``factory`` the helper ``name`` (from an app's ``AppConfig.ready``)."""
    HANDLERS[name] = factory


def resolve(name: str) -> Callable[[], Callable]:
    """The factory registered as ``name``; ``HelperError`` if there is none."""
    try:
        return HANDLERS[name]
    except KeyError:
        raise HelperError(f"no helper registered as {name!r} "
                          f"(registered: {', '.join(sorted(HANDLERS)) or 'none'})") from None


class Helper:
    # Replies go to a copy of stdout; stdout itself then points at stderr, so nothing
    # printed on the way (Django, logging) can corrupt them.
    CODE = ("import os, sys; out = os.fdopen(os.dup(1), 'wb'); os.dup2(2, 1); "
            "import django; django.setup(); from kernel import helper; "
            "helper.serve(sys.argv[1], out)")
    TARGET = ""  # a name registered with ``register``

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.alive = True

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    def start(cls, target: str | None = None) -> Helper | None:
        """The child process, or None if it cannot be started. ``HelperError`` if no
        helper is registered under the name (a programming error, not a fault)."""
        target = target or cls.TARGET
        resolve(target)
        env = dict(os.environ)
        if connection.settings_dict.get("NAME"):
            env["LUCENT_HELPER_DB"] = str(connection.settings_dict["NAME"])
        try:
            proc = subprocess.Popen([sys.executable, "-c", cls.CODE, target],
                                    cwd=settings.BASE_DIR, env=env,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        except OSError:
            return None
        return cls(proc)

    def call(self, *args):
        """Run the handler on ``args`` in the child; its result. Blocking: call it from
        a thread (``asyncio.to_thread``) in async code."""
        self.send(*args)
        return self.receive()

    def send(self, *args) -> None:
        """Hand the child a call without waiting for its result (``receive`` it later;
        results come back in the order the calls were sent)."""
        if not self.alive:
            raise HelperGone("helper process gone")
        # Pickled whole, then one write: pickling into the pipe would write it in
        # pieces, each giving up the GIL and waiting to get it back from the
        # caller's busy event loop.
        try:
            data = pickle.dumps(args, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # nothing was written: the pipe is still in step
            raise HelperError(f"cannot send {type(exc).__name__}: {exc}") from None
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except OSError as exc:
            self._gone(exc)

    def receive(self):
        """The result of the oldest call sent and not yet received."""
        if not self.alive:
            raise HelperGone("helper process gone")
        try:
            kind, value = pickle.load(self.proc.stdout)
        except (OSError, EOFError, pickle.UnpicklingError) as exc:
            self._gone(exc)
        if kind != "ok":
            raise HelperError(value)
        return value

    def _gone(self, exc: Exception):
        self.alive = False
        raise HelperGone(f"helper process gone: {exc or type(exc).__name__}") from None

    def stop(self) -> None:
        """Close its input (it finishes the call in hand and exits); kill it after 10 s."""
        self.alive = False
        try:
            self.proc.stdin.close()
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()

    def kill(self) -> None:
        """End it now, whatever it is doing (a call whose exchange was interrupted
        leaves the pipes out of step). Whether that call took effect is unknown."""
        self.alive = False
        self.proc.kill()
        self.proc.wait()


def serve(target: str, out) -> None:
    """The child: run each call that arrives on stdin until it closes."""
    name = os.environ.get("LUCENT_HELPER_DB")
    if name:
        settings.DATABASES["default"]["NAME"] = name
        connections["default"].settings_dict["NAME"] = name
    handler = resolve(target)()
    while True:
        try:
            args = pickle.load(sys.stdin.buffer)
        except EOFError:
            break
        try:
            reply = ("ok", handler(*args))
        except Exception as exc:
            reply = ("error", f"{type(exc).__name__}: {exc}"[:2000])  # fits the pipe
        pickle.dump(reply, out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()
    close = getattr(handler, "close", None)
    if close is not None:
        close()
