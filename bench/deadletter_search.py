"""Dead-letter search on a large index: 1,000,000 DeadLetter rows in SQLite.

Run: .venv/bin/python bench/deadletter_search.py [--rows 1000000]   (about 2-3 minutes)

Rows are bulk-inserted with the ORM (bulk_create, batches of 10,000): 8 streams
with a skewed share (ORDERS ~40%), 3-6 consumers each, subjects
``<stream>.<region>.<action>``, ~1,000 distinct correlation ids spread across
all rows plus a few specific ones (one row, 50 rows, a 20,000-row flood), a
month of captured_at, ~300-byte search text, headers, 2% replayed and 1% purged.
No bus is needed: ``search.filtered`` is database only.

Timed (the console's own queryset, default ordering -captured_at, -dl_seq):
- a page, ``list(search.filtered(f)[:50])``, and ``search.filtered(f).count()``;
- by correlation_id (median of 20 runs over 20 different ids; target < 100 ms),
  the specific ids, stream+consumer, and the wildcard subject ``orders.*.x``;
- with the SQLite query plan of each page query.
Also: the insert time, the database size, and what one ``dl_rows.store_rows``
(the index's write of 500 rows) costs on this table.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from datetime import UTC, datetime, timedelta

from deadletter_common import code_note, db_path, db_size_mb, environment, header

TARGET_MS = 100
STREAMS = [  # (stream, share, consumers, subject root)
    ("ORDERS", 40, ["shipper", "billing", "fraud-check", "notifier", "audit"], "orders"),
    ("PAYMENTS", 15, ["settler", "ledger", "refunds"], "payments"),
    ("AGENT_COORDINATION", 12, ["yield-analysis", "risk-assessment", "execution-optimization",
                                "training-worker"], "lucent.agents"),
    ("DOMAIN_EVENTS", 10, ["eventstore-bridge", "balance-processor"], "lucent.events.domain"),
    ("INVENTORY", 8, ["reserver", "restock", "sync"], "inventory"),
    ("SHIPPING", 7, ["label-printer", "tracker", "carrier-api"], "shipping"),
    ("HIERARCHY", 5, ["hierarchy-propagator"], "lucent.hierarchy"),
    ("NOTIFY", 3, ["email", "sms", "push", "webhook", "slack", "pager"], "notify"),
]
REGIONS = ["eu", "us", "apac", "latam", "mea"]
ACTIONS = ["created", "paid", "shipped", "cancelled", "refunded", "updated", "x", "retry",
           "closed", "audit"]
TYPES = [f"{verb}{noun}" for verb in ("Ship", "Bill", "Check", "Notify", "Sync")
         for noun in ("Order", "Payment", "Item", "User")]
ERRORS = ["carrier timeout after 30s", "KeyError: 'sku'", "upstream 503 Service Unavailable",
          "validation failed: qty must be > 0", "deadlock detected", "connection reset by peer",
          "ValueError: invalid literal for int()", ""]
SPECIFIC = {"corr-needle-7f3a": 1, "corr-incident-42": 50, "corr-storm-2026": 20_000}


def rows(total: int, batch: int):
    from deadletters.models import DeadLetter

    rnd = random.Random(20261127)
    weights = [s[1] for s in STREAMS]
    start = datetime(2026, 10, 28, tzinfo=UTC)
    specific = []
    for cid, count in SPECIFIC.items():
        specific += [cid] * count
    # spread the specific ones at random positions
    where = dict(zip(rnd.sample(range(total), len(specific)), specific, strict=True))
    seq_by_stream = {s[0]: 0 for s in STREAMS}
    out = []
    for i in range(total):
        stream, _, consumers, root = rnd.choices(STREAMS, weights)[0]
        consumer = rnd.choice(consumers)
        subject = f"{root}.{rnd.choice(REGIONS)}.{rnd.choice(ACTIONS)}"
        seq_by_stream[stream] += 1 + rnd.randrange(3)
        corr = where.get(i) or f"corr-{rnd.randrange(1000):04d}"
        mtype = rnd.choice(TYPES)
        mid = f"{rnd.getrandbits(64):016x}-{i:08x}"
        at = start + timedelta(seconds=i * 30 * 86400 / total + rnd.random())
        status = rnd.choices(["new", "replayed", "purged"], [97, 2, 1])[0]
        error = rnd.choice(ERRORS)
        text = (f'{{"messageId":"{mid}","correlationId":"{corr}","messageType":"{mtype}",'
                f'"subject":"{subject}","payload":{{"order":{i},"sku":"SKU-{i % 977}",'
                f'"qty":{i % 7 + 1},"note":"{"x" * 120}"}}}}')
        out.append(DeadLetter(
            dl_seq=i + 1, dl_subject=f"lucent.deadletter.{stream}.{consumer}", stream=stream,
            stream_seq=seq_by_stream[stream], subject=subject, consumer=consumer,
            deliveries=rnd.choice([2, 3, 5]), reason=rnd.choices(
                ["max_deliveries", "terminated", "explicit"], [85, 10, 5])[0],
            error=error, failed_at=at - timedelta(seconds=2), captured_at=at,
            message_id=mid, correlation_id=corr, causation_id=f"{rnd.getrandbits(48):012x}",
            message_type=mtype, payload_available=status != "purged", payload_size=len(text),
            payload_kind="envelope", search_text=text, status=status,
            headers={"X-Tenant": rnd.choice(["acme", "globex", "initech"]), "Nats-Msg-Id": mid,
                     "X-Correlation-ID": corr, "Lucent-DL-Stream": stream,
                     "Lucent-DL-Consumer": consumer, "Lucent-DL-Reason": "max_deliveries"}))
        if len(out) == batch:
            yield out
            out = []
    if out:
        yield out


def insert(total: int, batch: int = 10_000) -> float:
    from deadletters.models import DeadLetter

    t0 = time.perf_counter()
    build = 0.0
    gen = rows(total, batch)
    while True:
        tb = time.perf_counter()
        chunk = next(gen, None)
        build += time.perf_counter() - tb
        if chunk is None:
            break
        DeadLetter.objects.bulk_create(chunk, batch_size=batch)
        done = chunk[-1].dl_seq
        if done % 200_000 == 0:
            print(f"  inserted {done:,} ({time.perf_counter() - t0:.0f}s)", flush=True)
    took = time.perf_counter() - t0
    print(f"insert: {total:,} rows in {took:.1f}s ({total / took:,.0f} rows/s; of which building "
          f"the model instances {build:.1f}s, bulk_create {took - build:.1f}s)", flush=True)
    return took


def plan(qs) -> str:
    from django.db import connection

    sql, params = qs.query.sql_with_params()
    with connection.cursor() as cur:
        cur.execute("EXPLAIN QUERY PLAN " + sql, params)
        return "; ".join(row[-1] for row in cur.fetchall())


def timed(fn, runs: int, budget_s: float = 40.0) -> list[float]:
    out, start = [], time.perf_counter()
    for i in range(runs):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
        if time.perf_counter() - start > budget_s and len(out) >= 3:
            break
    return out


def fmt(xs: list[float]) -> str:
    return (f"median {statistics.median(xs) * 1000:8.1f} ms  (min {min(xs) * 1000:.1f}, "
            f"max {max(xs) * 1000:.1f}, n={len(xs)})")


def search_case(title: str, filters_for, runs: int = 20, budget_s: float = 40.0) -> dict:
    from deadletters import search

    sizes = []

    def page(i):
        got = list(search.filtered(filters_for(i))[:50])
        sizes.append(len(got))

    counts = []

    def count(i):
        counts.append(search.filtered(filters_for(i)).count())

    p = timed(page, runs, budget_s)
    c = timed(count, runs, budget_s)
    ok = lambda xs: "meets" if statistics.median(xs) * 1000 < TARGET_MS else "MISSES"  # noqa: E731
    print(f"{title}\n  page  list(qs[:50]): {fmt(p)}  [{ok(p)} {TARGET_MS} ms]  rows/page "
          f"{min(sizes)}-{max(sizes)}\n  count qs.count():   {fmt(c)}  [{ok(c)} {TARGET_MS} ms]  "
          f"matched {min(counts):,}-{max(counts):,}\n  plan: "
          f"{plan(search.filtered(filters_for(0))[:50])}", flush=True)
    return {"page_ms": statistics.median(p) * 1000, "count_ms": statistics.median(c) * 1000}


def what_if(results: dict) -> None:
    """The same searches with changes applied to this bench's database only (not the
    console's code): an index that also serves the ORDER BY, and GLOB instead of REGEXP."""
    from django.db import connection

    from deadletters import search
    from deadletters.models import DeadLetter

    table = DeadLetter._meta.db_table
    print("\nwhat if (this bench's throwaway database only; the console is unchanged):")

    def index(name: str, cols: str) -> None:
        t = time.perf_counter()
        with connection.cursor() as cur:
            cur.execute(f"CREATE INDEX {name} ON {table} ({cols})")
        print(f"  CREATE INDEX {name} ({cols}): {time.perf_counter() - t:.1f}s", flush=True)

    index("bench_dl_stream_consumer_order", "stream, consumer, captured_at DESC, dl_seq DESC")
    results["what-if ORDERS/shipper"] = search_case(
        "  stream + consumer ORDERS/shipper, with that index",
        lambda i: {"stream": "ORDERS", "consumer": "shipper"}, runs=5)
    index("bench_dl_correlation_order", "correlation_id, captured_at DESC, dl_seq DESC")
    results["what-if corr-storm-2026"] = search_case(
        "  correlation_id = corr-storm-2026 (20,000 rows), with that index",
        lambda i: {"correlation_id": "corr-storm-2026"}, runs=5)

    def glob(pattern: str):
        # NATS "*" is one token: GLOB "*" may span dots, so exclude one token more. (Sketch for
        # a single "*"; a general translation is what the console would need.)
        deeper = pattern.replace("*", "*.*", 1)
        return lambda i: DeadLetter.objects.exclude(status=DeadLetter.PURGED).extra(
            where=["subject GLOB %s AND subject NOT GLOB %s"], params=[pattern, deeper])

    for pattern, extra in (("orders.*.x", {}), ("orders.*.x", {"stream": "ORDERS"}),
                           ("orders.*.nope", {})):
        qs_for = glob(pattern)

        def page(i, qs_for=qs_for, extra=extra):
            return list(qs_for(i).filter(**extra)[:50])

        def count(i, qs_for=qs_for, extra=extra):
            return qs_for(i).filter(**extra).count()

        p, c = timed(page, 5), timed(count, 5)
        want = search.filtered({"subject": pattern, **extra}).count() if pattern.endswith("x") else 0
        got = count(0)
        print(f"  subject GLOB {pattern!r} {extra or ''} instead of REGEXP: page {fmt(p)}; "
              f"count {fmt(c)}; matched {got:,} ({'same as' if got == want else 'DIFFERS from'} "
              f"REGEXP: {want:,})\n    plan: {plan(qs_for(0).filter(**extra)[:50])}", flush=True)
        results[f"what-if GLOB {pattern} {extra or ''}".strip()] = {
            "page_ms": statistics.median(p) * 1000, "count_ms": statistics.median(c) * 1000}


def main(total: int) -> None:
    from django.db import connection

    from deadletters import rows as dl_rows
    from deadletters.models import DeadLetter

    insert(total)
    with connection.cursor() as cur:
        cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    print(f"database: {db_path().name} {db_size_mb():,.0f} MiB for {DeadLetter.objects.count():,} "
          f"rows (SQLite, WAL checkpointed; no ANALYZE, as the console runs it)", flush=True)

    rnd = random.Random(7)
    ids = [f"corr-{x:04d}" for x in rnd.sample(range(1000), 20)]
    results = {}
    print()
    results["correlation_id"] = search_case(
        "correlation_id = one of ~1,000 ids (~1,000 rows each), 20 different ids",
        lambda i: {"correlation_id": ids[i % len(ids)]})
    for cid, n in SPECIFIC.items():
        results[cid] = search_case(f"correlation_id = {cid} ({n:,} rows)",
                                   lambda i, cid=cid: {"correlation_id": cid}, runs=5)
    results["missing id"] = search_case("correlation_id = an id that matches nothing",
                                        lambda i: {"correlation_id": "corr-nope"}, runs=5)
    pairs = [("ORDERS", "shipper"), ("PAYMENTS", "ledger"), ("NOTIFY", "pager"),
             ("AGENT_COORDINATION", "risk-assessment"), ("HIERARCHY", "hierarchy-propagator")]
    results["stream+consumer"] = search_case(
        "stream + consumer (5 pairs, ~5,000 to ~80,000 rows each, one after the other)",
        lambda i: {"stream": pairs[i % len(pairs)][0], "consumer": pairs[i % len(pairs)][1]},
        runs=10)
    results["ORDERS/shipper"] = search_case("stream + consumer, the largest pair ORDERS/shipper",
                                            lambda i: {"stream": "ORDERS", "consumer": "shipper"},
                                            runs=5)
    results["NOTIFY/pager"] = search_case(
        "stream + consumer, the smallest pair NOTIFY/pager",
        lambda i: {"stream": "NOTIFY", "consumer": "pager"}, runs=5)
    results["wildcard"] = search_case(
        'wildcard subject "orders.*.x" (regex on subject)', lambda i: {"subject": "orders.*.x"},
        runs=5, budget_s=30)
    results["wildcard+stream"] = search_case(
        'wildcard subject "orders.*.x" with stream=ORDERS',
        lambda i: {"subject": "orders.*.x", "stream": "ORDERS"}, runs=5, budget_s=30)
    results["wildcard, no match"] = search_case(
        'wildcard subject "orders.*.nope" (matches nothing: the page scans everything)',
        lambda i: {"subject": "orders.*.nope"}, runs=3, budget_s=20)

    # The index's write path on a table this size (dl_rows.store_rows counts the table twice).
    t = time.perf_counter()
    n = DeadLetter.objects.count()
    t_count = time.perf_counter() - t
    extra = [DeadLetter(dl_seq=total + 1 + i, dl_subject="lucent.deadletter.ORDERS.shipper",
                        stream="ORDERS", subject="orders.eu.created", consumer="shipper",
                        reason="max_deliveries", captured_at=datetime.now(UTC)) for i in range(500)]
    t = time.perf_counter()
    added = dl_rows.store_rows(extra)
    t_store = time.perf_counter() - t
    print(f"\nindex write path at {n:,} rows: DeadLetter.objects.count() {t_count * 1000:.0f} ms; "
          f"dl_rows.store_rows(500 rows) {t_store * 1000:.0f} ms (added {added}; it runs count() "
          f"before and after the insert)")
    what_if(results)
    print("SUMMARY " + ", ".join(f"{k}: page {v['page_ms']:.1f} ms / count {v['count_ms']:.1f} ms"
                                 for k, v in results.items()))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    header(f"dead-letter search over {args.rows:,} DeadLetter rows (SQLite)")
    code_note("streams/dlq.py", "streams/models.py", "streams/capture.py")
    with environment("dlsearch", with_bus=False):
        main(args.rows)
