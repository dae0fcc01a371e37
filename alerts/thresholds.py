"""How bad a figure is, by the same thresholds the alert rules judge it with.

Pages colour a figure "ok", "warn" or "crit" (``level``) so that what is amber or red on
a page is what would fire an alert, at the severity it would fire with: a console whose
colours used thresholds of their own said green where the alert list said warning.

The enabled rules are read once per ``TTL_S`` (a page of 500 rows asks for a level per
cell; the live layer renders a fragment per snapshot). The live layer renders inside the
event loop, where Django refuses database queries, so the rules are then read on a short
thread of their own. When they cannot be read at all, the defaults (``defaults.py``)
stand in: a colour from the shipped rules is better than none at 3 a.m.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

from django.db import DatabaseError, connection

from .defaults import DEFAULT_RULES
from .models import Rule, target_glob
from .rules import CONSUMER_TESTS

TTL_S = 10.0
OK, WARN, CRIT = "ok", "warn", "crit"
LEVEL_OF = {"warning": WARN, "critical": CRIT}
RANK = {OK: 0, WARN: 1, CRIT: 2}


@dataclass(frozen=True, slots=True)
class Limit:
    kind: str
    threshold: float | None
    severity: str
    target: str

    def limit(self, default: float) -> float:
        # A rule with no threshold judges by the default the engine uses (rules.py).
        return self.threshold if self.threshold is not None else default

    def matches(self, subject: str | None) -> bool:
        return subject is None or self.target in ("", "*") or bool(target_glob(self.target).match(subject))


_cache: tuple[float, list[Limit]] | None = None
_lock = threading.Lock()


def _from_defaults() -> list[Limit]:
    return [Limit(kind, threshold, LEVEL_OF.get(severity, WARN), "*")
            for _, kind, threshold, _, severity, _ in DEFAULT_RULES]


def _read() -> list[Limit]:
    return [Limit(r.kind, r.threshold, LEVEL_OF.get(r.severity, WARN), r.target)
            for r in Rule.objects.filter(enabled=True).only("kind", "threshold", "severity", "target")]


def _read_anywhere() -> list[Limit]:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _read()  # a plain view: this thread may query
    box: list = []

    def work() -> None:

        try:
            box.append(_read())
        except DatabaseError:
            pass
        finally:
            connection.close()  # the thread ends; its connection must not linger

    worker = threading.Thread(target=work, name="alert-thresholds", daemon=True)
    worker.start()
    worker.join(2.0)
    if not box:
        raise DatabaseError("alert rules not read in time")
    return box[0]


def limits() -> list[Limit]:
    """The enabled rules' thresholds, at most ``TTL_S`` old."""
    global _cache
    now = time.monotonic()
    cached = _cache
    if cached is not None and now - cached[0] < TTL_S:
        return cached[1]
    with _lock:
        if _cache is not None and now - _cache[0] < TTL_S:
            return _cache[1]
        try:
            found = _read_anywhere()
        except DatabaseError:
            found = cached[1] if cached is not None else _from_defaults()
        _cache = (now, found)
        return found


def forget() -> None:
    """Read the rules afresh next time (tests; the admin after an edit need not wait)."""
    global _cache
    _cache = None


def _worst(levels) -> str:
    return max(levels, key=RANK.__getitem__, default=OK)


def level(kind: str, value, subject: str | None = None, limit: float | None = None) -> str:
    """"ok", "warn" or "crit" for ``value`` against the enabled rules of ``kind`` (a
    ``Rule`` kind) that apply to ``subject``.

    Threshold kinds compare the figure as the rule does: ``consumer_pending`` (pending
    over the threshold), ``stream_usage`` (percent at or over it: 80 warns, 95 is
    critical), ``deadletter_rate`` (dead letters in the last minute over it) and
    ``ack_pending_near_max`` (``value`` awaiting ack of ``limit``, the consumer's
    max_ack_pending). Every other kind is a yes/no state (stalled, stale, down, an
    agent failing): a true ``value`` takes the worst severity of its rules, "warn" when
    none is enabled (the state is still not fine, and nobody set how bad it is). A
    threshold kind with no enabled rule is "ok": nobody set a limit."""
    if value is None or value is False:
        return OK
    rules = [r for r in limits() if r.kind == kind and r.matches(subject)]
    if kind == "stream_usage":
        return _worst(r.severity for r in rules if value >= r.limit(80))
    if kind == "consumer_pending":
        return _worst(r.severity for r in rules if value > r.limit(CONSUMER_TESTS[kind][0]))
    if kind == "deadletter_rate":
        return _worst(r.severity for r in rules if value > r.limit(10))
    if kind == "ack_pending_near_max":
        if not limit or limit <= 0:
            return OK
        return _worst(r.severity for r in rules if value >= r.limit(CONSUMER_TESTS[kind][0]) * limit)
    return _worst(r.severity for r in rules) if rules else WARN


def overview_levels(snapshot: dict) -> dict:
    """The overview's figures that only the snapshot has: dead letters in the last minute
    (what the rate rule judges; the card shows the hour). Registered with
    streams.operations.TOTALS."""
    return {"deadletters_1m": (snapshot or {}).get("deadletters_1m")}
