"""Alert rule evaluation cost per snapshot at 1,000 streams / 5,000 consumers.

Run: .venv/bin/python bench/alert_rules.py   (a few seconds; target < 50 ms)

Builds the snapshot the collector would (``Tracker.build`` on STREAM.LIST /
CONSUMER.LIST-shaped replies, no server needed), with every default rule
enabled (``alerts/defaults.py``) and a share of consumers and streams in
alarm, then times ``Evaluator.step`` (conditions + durations): the work the
collector adds to each sweep. Baseline in the same run: ``Tracker.build`` of
the same replies, i.e. the snapshot building every sweep already pays.
"""

from __future__ import annotations

import statistics
import time

import common  # noqa: F401  (sys.path and DJANGO_SETTINGS_MODULE)
import django

django.setup()

from alerts.defaults import DEFAULT_RULES  # noqa: E402
from alerts.models import Rule  # noqa: E402
from alerts.rules import Evaluator  # noqa: E402
from streams.snapshot import Tracker  # noqa: E402

STREAMS, CONSUMERS, ROUNDS = 1000, 5, 30


def replies(now_ns: int):
    streams, consumers = [], {}
    for i in range(STREAMS):
        name = f"B{i:05d}"
        streams.append({"config": {"name": name, "subjects": [f"b{i}.>"], "retention":
                                   "interest" if i % 97 == 0 else "limits", "storage": "memory",
                                   "num_replicas": 1, "max_msgs": 1000 if i % 50 == 0 else -1},
                        "state": {"messages": 900 if i % 50 == 0 else i, "bytes": i * 100,
                                  "first_seq": 1, "last_seq": i, "consumer_count": CONSUMERS},
                        "cluster": {"leader": "n1"}})
        consumers[name] = [{"name": f"c{c}", "config": {"durable_name": f"c{c}", "ack_policy": "explicit",
                                                        "filter_subject": f"b{i}.{c}",
                                                        "max_ack_pending": 100},
                            "num_pending": 5000 if (i + c) % 10 == 0 else c,
                            "num_ack_pending": 95 if (i + c) % 25 == 0 else 0,
                            "delivered": {"consumer_seq": 1, "stream_seq": 1},
                            "ack_floor": {"consumer_seq": 1, "stream_seq": 1}}
                           for c in range(CONSUMERS)]
    return streams, consumers


def main() -> None:
    common.header("alert_rules")
    rules = [Rule(name=n, kind=k, threshold=t, for_s=f, severity=s)
             for n, k, t, f, s, _ in DEFAULT_RULES]
    streams, consumers = replies(time.time_ns())
    tracker, build_ms, step_ms = Tracker(), [], []
    evaluator = Evaluator()
    fired = 0
    for r in range(ROUNDS):
        t0 = time.perf_counter()
        snap = tracker.build(streams, consumers, {}, now=1000.0 + r)
        build_ms.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        fire, resolve = evaluator.step(snap, rules, now=1000.0 + r)
        step_ms.append((time.perf_counter() - t0) * 1000)
        for c in fire:  # as if recorded: they stay firing
            evaluator.firing[c.key] = 1
        fired += len(fire)
    med = statistics.median
    print(f"{STREAMS} streams, {STREAMS * CONSUMERS} consumers, {len(rules)} rules, "
          f"{len(evaluator.firing)} alerts firing ({fired} fired in {ROUNDS} rounds)")
    print(f"rule evaluation per snapshot: median {med(step_ms):.1f} ms, max {max(step_ms):.1f} ms "
          f"[target < 50 ms: {'met' if med(step_ms) < 50 else 'MISSED'}]")
    print(f"baseline, snapshot build of the same replies: median {med(build_ms):.1f} ms "
          f"(evaluation = {med(step_ms) / med(build_ms):.2f}x of it)")


if __name__ == "__main__":
    main()
