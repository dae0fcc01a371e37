"""Dead-letter search and counts on a large index: 1,000,000 DeadLetter rows, in SQLite
and (when reachable) PostgreSQL.

Run: .venv/bin/python bench/deadletter_search.py [--rows 1000000] [--db both|sqlite|postgres]
(about 10-15 minutes for both; PostgreSQL at DATABASE_URL's server, else
postgres://postgres@127.0.0.1:5432/, in a database of the run's own, dropped at the end)

Rows are built as model instances and inserted by executemany (batches of 10,000, the
secondary indexes dropped and built again after the load): 8 streams
with a skewed share (ORDERS ~40%), 3-6 consumers each, subjects
``<stream>.<region>.<action>`` (400 distinct), ~1,000 distinct correlation ids spread
across all rows plus a few specific ones (one row, 50 rows, a 20,000-row flood), a
month of captured_at, ~300-byte search text, headers, 2% replayed and 1% purged.
No bus is needed: ``search.filtered`` is database only.

Timed, per filter kind (stream, consumer, exact subject, ``*`` subject, ``>`` subject,
reason, status, message type, correlation id, free text, none): the count as the
console's list takes it (``search.count``: capped at search.COUNT_CAP, free text at
TEXT_COUNT_CAP), p50 and p99 over up to 100 runs cycling through several values; the
page (``list(qs[:50])``) p50; and, the same run's baseline, the count as it was before
(the subject's literal prefix then a regular expression per row, an exact ``count()``),
p50 over up to 5 runs. Each kind's new count is checked against min(baseline, cap).
Also: the insert time, the database size, each kind's query plan, and what one
``dl_rows.store_rows`` (the index's write of 500 rows) costs on this table.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

from deadletter_common import ROOT, code_note, db_size_mb, environment, header, postgres_reachable

TARGET_MS = 100
PG_DEFAULT = "postgres://postgres@127.0.0.1:5432/postgres"
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


def write(chunk: list) -> None:
    """The rows as one executemany in a transaction: the values bulk_create would send,
    without building its SQL (a bench's load, not the console's write path)."""
    from django.db import connection, transaction

    from deadletters.models import DeadLetter

    fields = [f for f in DeadLetter._meta.concrete_fields if not f.primary_key]
    prep = [f.get_internal_type() in ("DateTimeField", "JSONField") for f in fields]
    cols = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    sql = (f"INSERT INTO {DeadLetter._meta.db_table} ({cols}) "
           f"VALUES ({', '.join(['%s'] * len(fields))})")
    params = [[f.get_db_prep_save(getattr(o, f.attname), connection) if p else getattr(o, f.attname)
               for f, p in zip(fields, prep, strict=True)] for o in chunk]
    with transaction.atomic(), connection.cursor() as cur:
        cur.executemany(sql, params)


def insert(total: int, batch: int = 10_000) -> float:
    t0 = time.perf_counter()
    build = 0.0
    gen = rows(total, batch)
    while True:
        tb = time.perf_counter()
        chunk = next(gen, None)
        build += time.perf_counter() - tb
        if chunk is None:
            break
        write(chunk)
        done = chunk[-1].dl_seq
        if done % 200_000 == 0:
            print(f"  inserted {done:,} ({time.perf_counter() - t0:.0f}s)", flush=True)
    took = time.perf_counter() - t0
    print(f"insert: {total:,} rows in {took:.1f}s ({total / took:,.0f} rows/s; of which building "
          f"the model instances {build:.1f}s, executemany {took - build:.1f}s)", flush=True)
    return took


def vendor() -> str:
    from django.db import connection

    return connection.vendor


def plan(qs) -> str:
    from django.db import connection

    sql, params = qs.query.sql_with_params()
    with connection.cursor() as cur:
        if vendor() == "sqlite":
            cur.execute("EXPLAIN QUERY PLAN " + sql, params)
            return "; ".join(row[-1] for row in cur.fetchall())
        cur.execute("EXPLAIN " + sql, params)
        lines = [row[0].strip() for row in cur.fetchall()]
        return "; ".join(x for x in lines if "Scan" in x or "Index" in x or "Filter" in x)[:400]


def timed(fn, runs: int, budget_s: float = 15.0) -> list[float]:
    out, start = [], time.perf_counter()
    for i in range(runs):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
        if time.perf_counter() - start > budget_s and len(out) >= 3:
            break
    return out


def p(xs: list[float], q: float) -> float:
    """The q-quantile in ms (nearest rank: p99 of fewer than 100 runs is the slowest)."""
    ordered = sorted(xs)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000


def old_filtered(filters: dict):
    """``search.filtered`` as it was before (issue 14): the subject's literal prefix by
    LIKE, then a regular expression on every row under it: the baseline."""
    from deadletters import search

    qs = search.filtered({k: v for k, v in filters.items() if k != "subject"})
    pattern = filters.get("subject")
    if not pattern:
        return qs
    if "*" not in pattern and ">" not in pattern:
        return qs.filter(subject=pattern)
    literal = []
    for token in pattern.split("."):
        if token in ("*", ">"):
            break
        literal.append(token)
    if literal:
        qs = qs.filter(subject__startswith=".".join(literal) + ".")
    return qs.filter(subject__regex=search._nats_pattern_to_regex(pattern))


def count_case(kind: str, values: list[dict], results: dict, baseline: bool = True) -> None:
    """One filter kind: the console's capped count p50/p99, its page p50, the baseline."""
    from deadletters import search

    def f(i):
        return values[i % len(values)]

    got, old = {}, {}

    def new_count(i):
        got[i % len(values)] = search.count(search.filtered(f(i)), f(i))

    def page(i):
        list(search.filtered(f(i))[:50])

    def old_count(i):
        old[i % len(values)] = old_filtered(f(i)).count()

    c = timed(new_count, 100, 8)
    pg = timed(page, 20, 5)
    base = timed(old_count, max(5, len(values)), 10) if baseline else []
    same = all(got[k] == (min(n, search.TEXT_COUNT_CAP if f(k).get("q") else search.COUNT_CAP),
                          n > (search.TEXT_COUNT_CAP if f(k).get("q") else search.COUNT_CAP))
               for k, n in old.items() if k in got)
    counted = ", ".join(f"{n:,}{'+' if capped else ''}" for n, capped in
                        (got[k] for k in sorted(got)[:4]))
    verdict = "meets" if p(c, 0.99) < TARGET_MS else "MISSES"
    b = f"baseline p50 {p(base, 0.5):8.1f} ms (n={len(base)})" if base else "baseline -"
    print(f"{kind:<34} count p50 {p(c, 0.5):6.1f} ms p99 {p(c, 0.99):6.1f} ms (n={len(c)}) "
          f"[{verdict} {TARGET_MS} ms]  page p50 {p(pg, 0.5):6.1f} ms  {b}  "
          f"{'same rows as baseline' if same else 'DIFFERS from baseline'}  counts {counted}",
          flush=True)
    print(f"{'':<34} plan: {plan(search.filtered(f(0)).order_by().values('status')[:search.COUNT_CAP + 1])}",
          flush=True)
    results[kind] = {"p50": p(c, 0.5), "p99": p(c, 0.99), "page": p(pg, 0.5),
                     "base": p(base, 0.5) if base else None, "same": same}


def count_cases() -> dict:
    """Every filter kind the list offers, each cycling through a few values."""
    from deadletters import search

    rnd = random.Random(7)
    ids = [f"corr-{x:04d}" for x in rnd.sample(range(1000), 20)] + list(SPECIFIC)
    consumers = ["shipper", "ledger", "pager", "risk-assessment", "hierarchy-propagator", "sync"]
    kinds = [
        ("none (the default list)", [{}]),
        ("stream", [{"stream": s[0]} for s in STREAMS]),
        ("consumer", [{"consumer": c} for c in consumers]),
        ("stream + consumer", [{"stream": "ORDERS", "consumer": "shipper"},
                               {"stream": "NOTIFY", "consumer": "pager"}]),
        ("subject, exact", [{"subject": s} for s in ("orders.eu.x", "payments.us.paid",
                                                      "notify.apac.retry", "lucent.agents.eu.x",
                                                      "orders.eu.nope")]),
        ("subject with *", [{"subject": s} for s in ("orders.*.x", "payments.*.paid", "*.eu.x",
                                                      "lucent.agents.*.retry", "inventory.*.nope",
                                                      "*.*.*")]),
        ("subject with >", [{"subject": s} for s in ("orders.>", "payments.eu.>", "lucent.>",
                                                      "notify.us.>", "nothing.>")]),
        ("subject with * and stream", [{"subject": "orders.*.x", "stream": "ORDERS"},
                                       {"subject": "*.eu.x", "stream": "PAYMENTS"}]),
        ("reason", [{"reason": r} for r in ("max_deliveries", "terminated", "explicit")]),
        ("status", [{"status": st} for st in ("new", "replayed", "purged")]),
        ("message type", [{"message_type": t} for t in TYPES[:6]]),
        ("correlation id", [{"correlation_id": c} for c in ids]),
        ("reason + stream (no index of both)", [{"reason": "terminated", "stream": "PAYMENTS"}]),
        ("free text, common (>10,000 rows)", [{"q": q} for q in ("carrier timeout", "deadlock",
                                                                "SKU-12")]),
        ("free text, rare or absent", [{"q": q} for q in ("corr-needle-7f3a", "no-such-text")]),
    ]
    results: dict = {}
    print(f"\ncounts (cap {search.COUNT_CAP:,}; free text {search.TEXT_COUNT_CAP:,}); the page's "
          f"first 50; baseline = the code before, exact count:", flush=True)
    for kind, values in kinds:
        count_case(kind, values, results)
    # More distinct subjects under a prefix than WILDCARD_SUBJECTS: the regex fallback.
    keep = search.WILDCARD_SUBJECTS
    search.WILDCARD_SUBJECTS = 20
    try:
        count_case("subject with *, fallback (>20 distinct)",
                   [{"subject": "orders.*.x"}, {"subject": "*.eu.x"}], results, baseline=False)
    finally:
        search.WILDCARD_SUBJECTS = keep
    return results


def drop_indexes() -> list[str]:
    """Drop the table's secondary indexes; the statements that create them again."""
    from django.db import connection

    table = "streams_deadletter"
    with connection.cursor() as cur:
        if vendor() == "sqlite":
            cur.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = %s "
                        "AND sql IS NOT NULL AND sql NOT LIKE 'CREATE UNIQUE%%'", [table])
        else:
            cur.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s AND "
                        "indexdef NOT LIKE 'CREATE UNIQUE%%'", [table])
        found = cur.fetchall()
        for name, _ in found:
            cur.execute(f'DROP INDEX "{name}"')
    return [sql for _, sql in found]


def main(total: int) -> None:
    from django.core.management import call_command
    from django.db import connection

    from deadletters import rows as dl_rows
    from deadletters.models import DeadLetter

    print(f"database: {vendor()} {connection.settings_dict['NAME']}", flush=True)
    # Rows go in under the layout before (migration 0002), then 0003 runs on them, timed.
    call_command("migrate", "deadletters", "0002", verbosity=0)
    indexes = drop_indexes()  # a bulk load builds them once afterwards, as a restore would
    insert(total)
    t = time.perf_counter()
    with connection.cursor() as cur:
        for sql in indexes:
            cur.execute(sql)
    print(f"indexes of the layout before ({len(indexes)}) built after the load: "
          f"{time.perf_counter() - t:.1f}s", flush=True)
    t = time.perf_counter()
    call_command("migrate", "deadletters", verbosity=0)
    print(f"migration 0003 (drop 6 indexes, build 6) on {total:,} rows: "
          f"{time.perf_counter() - t:.1f}s", flush=True)
    with connection.cursor() as cur:
        if vendor() == "sqlite":
            cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            size = f"{db_size_mb():,.0f} MiB (WAL checkpointed; no ANALYZE, as the console runs it)"
        else:
            t = time.perf_counter()
            cur.execute("VACUUM ANALYZE streams_deadletter")
            cur.execute("SELECT pg_database_size(current_database())")
            size = (f"{cur.fetchone()[0] / 2**20:,.0f} MiB (after VACUUM ANALYZE, "
                    f"{time.perf_counter() - t:.0f} s: what autovacuum does after a bulk load)")
    print(f"database: {DeadLetter.objects.count():,} rows, {size}", flush=True)
    results = count_cases()

    # The index's write path on a table this size (dl_rows.store_rows).
    extra = [DeadLetter(dl_seq=total + 1 + i, dl_subject="lucent.deadletter.ORDERS.shipper",
                        stream="ORDERS", subject="orders.eu.created", consumer="shipper",
                        reason="max_deliveries", captured_at=datetime.now(UTC)) for i in range(500)]
    t = time.perf_counter()
    added = dl_rows.store_rows(extra)
    print(f"\nindex write path: dl_rows.store_rows(500 rows) {(time.perf_counter() - t) * 1000:.0f} "
          f"ms (added {added})")
    print(f"SUMMARY {vendor()} " + "; ".join(
        f"{k}: p50 {v['p50']:.1f} / p99 {v['p99']:.1f} ms"
        + (f" (baseline {v['base']:.1f})" if v["base"] is not None else "")
        for k, v in results.items()), flush=True)


def run_postgres(total: int) -> None:
    """The PostgreSQL half in a process of its own (Django is set up once per process)."""
    url = os.environ.get("DATABASE_URL", "")
    url = url if url.startswith(("postgres://", "postgresql://")) else PG_DEFAULT
    why = postgres_reachable(url)
    if why:
        print(f"\n# PostgreSQL at {url}: not reachable ({why}); skipped", flush=True)
        return
    print("\n", flush=True)
    subprocess.run([sys.executable, __file__, "--rows", str(total), "--db", "postgres",
                    "--pg-url", url], cwd=ROOT, check=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--db", choices=["both", "sqlite", "postgres"], default="both")
    ap.add_argument("--pg-url", default="")
    args = ap.parse_args()
    if args.db == "postgres" and args.pg_url:
        header(f"dead-letter search over {args.rows:,} DeadLetter rows (PostgreSQL)")
        with environment("dlsearch", with_bus=False, database_url=args.pg_url):
            from django.db import connection

            with connection.cursor() as cur:
                cur.execute("SHOW server_version")
                print(f"# PostgreSQL {cur.fetchone()[0]}", flush=True)
            main(args.rows)
    else:
        if args.db in ("both", "sqlite"):
            header(f"dead-letter search over {args.rows:,} DeadLetter rows (SQLite)")
            code_note("deadletters/search.py", "deadletters/models.py",
                      "deadletters/migrations/0003_count_indexes.py")
            with environment("dlsearch", with_bus=False):
                import sqlite3

                print(f"# SQLite {sqlite3.sqlite_version}", flush=True)
                main(args.rows)
        if args.db in ("both", "postgres"):
            run_postgres(args.rows)
