"""Envelope decoding throughput against a json.loads baseline measured in the same run.

Run: .venv/bin/python bench/envelope_decode.py
"""

import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lucent_bus import envelope  # noqa: E402

N = 50_000


def rate(fn, payload: bytes, n: int = N) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn(payload)
    return n / (time.perf_counter() - start)


def main() -> None:
    env = envelope.encode(envelope.make(
        "ExecuteTradeCommand", "lucent.commands.trading.execute",
        {"command": "execute_trade", "data": {"userId": "user-123", "pair": "ETH-USDC",
                                              "side": "buy", "amount": 1.5}},
        sender={"serviceId": "trading-service-001", "instanceId": "ts-001", "version": "1.2.3"}))
    cases = {f"envelope ({len(env)} B)": env, "binary 1 KiB": os.urandom(1024),
             "text 1 KiB": b"plain text " * 93}
    machine = platform.processor() or platform.machine()
    print(f"# {datetime.now(UTC):%Y-%m-%d} {platform.node()} {machine}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}")
    baseline = rate(json.loads, env)
    print(f"json.loads baseline on the envelope: {baseline:,.0f}/s")
    for name, payload in cases.items():
        r = rate(envelope.decode, payload)
        print(f"envelope.decode {name}: {r:,.0f}/s ({r / baseline:.2f}x the baseline)")


if __name__ == "__main__":
    main()
