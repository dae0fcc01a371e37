"""Envelope indexing throughput and trace lookup (issue #5, item 5).

Run: .venv/bin/python bench/trace_index.py [--n 200000] [--rows 1000000]   (about 5 minutes)
     [--database-url postgres://postgres@127.0.0.1:5432/lucent_bench_traces]

On a private nats-server (loopback) and a fresh database (SQLite, the default, in a
temp dir; or the PostgreSQL database named, dropped and created again):

1. publish N ADR envelopes (~360 B with the ADR headers): 3 of 4 agent jobs on
   AGENT_COORDINATION, 1 of 4 commands on COMMANDS, 4 messages per correlation id;
2. baseline, same run: raw nats-py ordered consumers on both streams with a
   callback that only counts (reading alone, before any work);
3. the indexer as the collector runs it (``traces.indexer.Indexer``: under load its
   writes go to a Writer process) from an empty index until N rows are stored:
   messages/s end to end, the console's CPU time over wall time (its CPU share,
   100 % = one core: this process plus the writer process), CPU per message, SQLite
   bytes per row, and where the time goes (decode per message, the wall time the
   collector's loop spends in ``flush`` per row);
4. fill the index to ROWS rows (bulk insert; random correlation and message ids, as
   uuid4s are), index the same N messages again into it (the steady state: every
   insert lands somewhere in two large B-trees), then once more with the writes
   in a worker thread of this process (as before the writer process; comparison);
5. time ``traces.trace.trace`` (the service the page and the API call) for 300
   random correlation ids (p50/p99), and for a correlation of 20,000 messages (the
   first 500 steps);
6. drop the message_id index and index the N messages once more: what it costs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from deadletter_common import bus, code_note, header

from lucent_bus import embedded

TARGET_RATE = 10_000
TARGET_LOOKUP_MS = 100


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (nats-server's share)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sizes() -> str:
    """Bytes per row of the table and of each of its indexes."""
    from django.db import connection

    from traces.models import EnvelopeRecord

    names = ("traces_enveloperecord", "trace_corr_at", "trace_msg_id")
    with connection.cursor() as c:
        if connection.vendor == "postgresql":
            found = {n: 0 for n in names}
            for n in names:
                c.execute("SELECT pg_relation_size(to_regclass(%s))", [n])
                found[n] = c.fetchone()[0] or 0
        else:
            c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            c.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name")
            found = {n: b for n, b in c.fetchall() if n in names}
    rows = EnvelopeRecord.objects.count()
    per = {n: found.get(n, 0) / rows for n in names}
    return (f"{sum(per.values()):.0f} B/row over {rows:,} rows: table {per[names[0]]:.0f}, "
            f"(correlation_id, at) index {per[names[1]]:.0f}, message_id index {per[names[2]]:.0f}")


@contextlib.contextmanager
def environment(database_url: str | None):
    """(nats-server): Django on a fresh database (SQLite in a temp dir, or ``database_url``
    dropped and created again), a private nats-server; both removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="lucent-traceindex-"))
    os.environ["LUCENT_VAR_DIR"] = str(tmp / "var")
    os.environ.pop("DATABASE_URL", None)
    if database_url:
        import psycopg

        name = database_url.rsplit("/", 1)[1]
        with psycopg.connect(database_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as pg:
            pg.execute(f'DROP DATABASE IF EXISTS "{name}"')
            pg.execute(f'CREATE DATABASE "{name}"')
        os.environ["DATABASE_URL"] = database_url
    server = None
    try:
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        server = embedded.single(tmp / "bus" / "js").start().wait()
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def correlation(k: int, prefix: str = "corr") -> str:
    """Random-looking like real ones (a uuid4 each): index inserts land all over the tree."""
    return f"{prefix}-{uuid.UUID(int=random.Random(k).getrandbits(128))}"


def envelope_for(i: int) -> tuple[str, dict]:
    from lucent_bus import envelope

    cid = correlation(i // 4)
    if i % 4 == 0:
        return "command", envelope.make(
            "ExecuteTrade", "lucent.commands.trading.execute",
            {"order": i, "sku": f"SKU-{i % 977}", "qty": i % 7 + 1, "note": "x" * 40},
            correlation_id=cid, sender={"serviceId": "gateway", "instanceId": "gw-1"})
    kind = ("yield.analysis", "risk.assessment", "execution.optimization")[i % 3]
    return "job", envelope.make(
        "AgentJob", f"lucent.agents.{kind}", {"order": i, "window": "1h", "note": "x" * 40},
        correlation_id=cid, causation_id=f"cause-{i - 1}",
        sender={"serviceId": "orchestrator", "instanceId": "orc-1"})


async def publish(nc, n: int) -> float:
    from lucent_bus import envelope
    from lucent_bus import jetstream as js
    from streams import topology

    await topology.apply(nc)
    jsn = nc.jetstream()
    t0 = time.perf_counter()
    for i in range(n):
        kind, env = envelope_for(i)
        data, headers = envelope.encode(env), envelope.headers_for(env)
        if kind == "command":  # COMMANDS is no_ack: core publish
            await nc.publish(env["subject"], data, headers=headers)
        else:
            await jsn.publish_async(env["subject"], data, headers=headers)
    await jsn.publish_async_completed()
    await nc.flush()
    elapsed = time.perf_counter() - t0
    for _ in range(100):
        stored = sum([(await js.stream_info(nc, s))["state"]["messages"]
                      for s in ("COMMANDS", "AGENT_COORDINATION")])
        if stored >= n:
            break
        await asyncio.sleep(0.1)
    if stored != n:
        raise SystemExit(f"published {n}, the streams hold {stored}")
    print(f"setup: published {n:,} envelopes ({len(data)} B + headers) in {elapsed:.1f}s", flush=True)
    return elapsed


async def baseline(nc, n: int) -> dict:
    """Raw nats-py ordered consumers, counting only."""
    got, done = 0, asyncio.Event()

    async def cb(msg):
        nonlocal got
        got += 1
        if got >= n:
            done.set()

    from lucent_bus.client import sibling

    # One connection per consumer, as the indexer does (two catching up on one would
    # exceed nats-server's 64 MiB max pending: bus.client.sibling).
    conns = [await sibling(nc, f"bench {i}") for i in range(2)]
    cpu0, t0 = time.process_time(), time.perf_counter()
    subs = [await c.jetstream().subscribe(subject, stream=stream, cb=cb, ordered_consumer=True)
            for c, (stream, subject) in zip(conns, (("COMMANDS", "lucent.commands.>"),
                                                    ("AGENT_COORDINATION", "lucent.agents.>")), strict=True)]
    await asyncio.wait_for(done.wait(), 600)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    for sub in subs:
        await sub.unsubscribe()
    for c in conns:
        await c.close()
    return {"wall": wall, "cpu": cpu}


async def index(nc, n: int, server_pid: int, spawn_at: int | None = 2_000) -> dict:
    """The indexer from the streams' start until ``n`` rows are stored; ``spawn_at``
    as in the collector (writes move to a Writer process), or None (a worker thread)."""
    from asgiref.sync import sync_to_async

    from traces import indexer

    spent = {"store": 0.0, "flushes": 0}
    real_flush = indexer.Indexer.flush

    async def timed_flush(self, attempts=None):
        t = time.perf_counter()
        stored = await real_flush(self, attempts)
        if stored:
            spent["store"] += time.perf_counter() - t
            spent["flushes"] += 1
        return stored

    indexer.Indexer.flush = timed_flush
    from traces.models import Cursor, EnvelopeRecord

    await sync_to_async(lambda: Cursor.objects.all().delete())()  # read the streams from 1
    had = await sync_to_async(EnvelopeRecord.objects.count)()
    idx = indexer.Indexer(nc, spawn_at=spawn_at)
    stop = asyncio.Event()
    cpu0, srv0, t0 = time.process_time(), cpu_seconds(server_pid), time.perf_counter()
    task = asyncio.create_task(idx.run(stop))
    deadline = time.monotonic() + 600
    while idx.stored < n and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    wall = time.perf_counter() - t0
    cpu, srv = time.process_time() - cpu0, cpu_seconds(server_pid) - srv0
    writer = cpu_seconds(idx.writer.pid) if idx.writer is not None else 0.0  # its whole life
    stop.set()
    await task
    indexer.Indexer.flush = real_flush
    rows = await sync_to_async(EnvelopeRecord.objects.count)() - had
    distinct = await sync_to_async(lambda: EnvelopeRecord.objects.filter(
        correlation_id__startswith="corr-").values("stream", "seq").distinct().count())()
    return {"wall": wall, "cpu": cpu, "writer_cpu": writer, "server_cpu": srv, "rows": rows,
            "distinct": distinct, "store": spent["store"], "flushes": spent["flushes"],
            "mode": "a Writer process" if writer else "a worker thread"}


def decode_cost(samples: int = 20_000) -> float:
    """µs per message for ``indexer.row_from`` alone (decode and row), same envelopes."""
    from lucent_bus import envelope
    from traces import indexer

    now = datetime.now(UTC)
    msgs = []
    for i in range(samples):
        _, env = envelope_for(i)
        msgs.append((env["subject"], f"$JS.ACK.AGENT_COORDINATION.x.1.{i + 1}.{i + 1}."
                     f"{time.time_ns()}.0", envelope.encode(env), envelope.headers_for(env)))
    t = time.perf_counter()
    for subject, reply, data, headers in msgs:
        indexer.row_from("AGENT_COORDINATION", subject, reply, data, headers, now)
    return (time.perf_counter() - t) / samples * 1e6


def fill(total: int, flood: int = 20_000) -> tuple[float, list[str]]:
    """Bulk insert up to ``total`` rows: 4 per correlation id, plus one of ``flood`` rows."""
    from django.db import connection, transaction

    from traces.models import EnvelopeRecord

    have = EnvelopeRecord.objects.count()
    table = EnvelopeRecord._meta.db_table
    cols = ("stream", "seq", "subject", "message_id", "correlation_id", "causation_id",
            "message_type", "sender", "at", "indexed_at", "origin_stream", "origin_seq")
    sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})"
    rnd = random.Random(20261127)
    start = datetime.now(UTC) - timedelta(days=7)
    t0 = time.perf_counter()
    ids, cid = [], ""
    batch, i = [], have
    while i < total:
        flooding = i < have + flood
        if flooding:
            cid = "corr-storm"
        elif i % 4 == 0 or not cid.startswith("fill-"):
            cid = f"fill-{uuid.UUID(int=rnd.getrandbits(128))}"
        if not flooding and i % 4 == 0 and rnd.random() < 0.002:
            ids.append(cid)
        at = connection.ops.adapt_datetimefield_value(start + timedelta(seconds=i * 0.6))
        stream = ("COMMANDS", "DOMAIN_EVENTS", "AGENT_COORDINATION", "DEAD_LETTERS")[i % 4]
        batch.append((stream, i, f"lucent.agents.risk.assessment.{i % 50}", str(uuid.uuid4()),
                      cid, str(uuid.uuid4()), "AgentJob", "orchestrator", at, at,
                      "AGENT_COORDINATION" if stream == "DEAD_LETTERS" else "", None))
        i += 1
        if len(batch) >= 20_000 or i >= total:
            with transaction.atomic(), connection.cursor() as c:
                c.executemany(sql, batch)
            batch = []
    return time.perf_counter() - t0, ids


def lookups(ids: list[str]) -> dict:
    from django.db import connection

    from traces.trace import trace

    times = []
    t = time.perf_counter()
    trace(ids[-1])  # the first call loads the URLconf (links); a running web process has it
    first = time.perf_counter() - t
    for cid in ids:
        t = time.perf_counter()
        steps = trace(cid)["steps"]
        times.append(time.perf_counter() - t)
        assert 1 <= len(steps) <= 4, (cid, len(steps))
    times.sort()
    storm = []
    for _ in range(10):
        t = time.perf_counter()
        result = trace("corr-storm")
        storm.append(time.perf_counter() - t)
    assert len(result["steps"]) == 500 and result["truncated"]
    with connection.cursor() as c:
        from traces.models import EnvelopeRecord

        qs = EnvelopeRecord.objects.filter(correlation_id=ids[0]).order_by("at", "seq", "id")[:501]
        sql, params = qs.query.sql_with_params()
        sqlite = connection.vendor == "sqlite"
        c.execute(("EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN ") + sql, params)
        plan = "; ".join(row[-1].strip() for row in c.fetchall())
    return {"p50": statistics.median(times), "p99": times[int(len(times) * 0.99) - 1],
            "max": times[-1], "n": len(times), "storm": statistics.median(storm), "plan": plan,
            "first": first}


def report(label: str, r: dict, n: int, base: dict, check: bool) -> None:
    rate = n / r["wall"]
    ok = r["rows"] == n and (r["distinct"] == n or not check)
    console = r["cpu"] + r["writer_cpu"]
    print(f"indexer, {label}, writes in {r['mode']}: {n:,} messages indexed in {r['wall']:.2f}s = "
          f"{rate:,.0f} msgs/s [{'meets' if rate >= TARGET_RATE else 'MISSES'} "
          f"{TARGET_RATE:,}/s], {rate / (n / base['wall']):.2f}x the raw read\n"
          f"    console CPU {console:.2f}s = {console / r['wall']:.0%} of a core while indexing "
          f"(collector {r['cpu'] / r['wall']:.0%}, writer process {r['writer_cpu'] / r['wall']:.0%}"
          f" incl. its start), {console / n * 1e6:.1f} µs CPU/msg; nats-server "
          f"{r['server_cpu'] / r['wall']:.0%} of a core\n"
          f"    database write {r['store'] / n * 1e6:.1f} µs/row (wall, as the collector waits "
          f"for it, {r['flushes']} transactions)\n"
          f"    {'OK' if ok else 'MISMATCH'}: rows added={r['rows']:,}"
          + (f" distinct (stream, seq)={r['distinct']:,}" if check else ""), flush=True)


async def main(server, n: int, total: int) -> None:
    from asgiref.sync import sync_to_async
    from django.db import connection

    nc = await bus(server.url)
    try:
        await publish(nc, n)
        base = await baseline(nc, n)
        print(f"baseline: raw nats-py ordered consumers, counting: {n / base['wall']:,.0f} msgs/s "
              f"(CPU {base['cpu'] / base['wall']:.0%} of a core, "
              f"{base['cpu'] / n * 1e6:.1f} µs/msg)", flush=True)
        print(f"decode and row alone (indexer.row_from): {decode_cost():.1f} µs/msg", flush=True)
        report("empty index", await index(nc, n, server.proc.pid), n, base, True)
        print(f"    stored: {await sync_to_async(sizes)()}", flush=True)
        took, ids = await sync_to_async(fill)(total)
        print(f"fill: index grown to {total:,} rows in {took:.0f}s; {await sync_to_async(sizes)()}",
              flush=True)
        report(f"the same again into the {total:,}-row index",
               await index(nc, n, server.proc.pid), n, base, False)
        report(f"the same again into the {total + n:,}-row index",
               await index(nc, n, server.proc.pid, spawn_at=None), n, base, False)
        rnd = random.Random(5)
        look = await sync_to_async(lookups)(rnd.sample(ids, min(300, len(ids))))
        ok = look["p99"] * 1000 < TARGET_LOOKUP_MS
        print(f"lookup: trace(cid) over {total + n:,} rows, {look['n']} random ids (4 steps each): "
              f"p50 {look['p50'] * 1000:.2f} ms, p99 {look['p99'] * 1000:.2f} ms, max "
              f"{look['max'] * 1000:.2f} ms [{'meets' if ok else 'MISSES'} {TARGET_LOOKUP_MS} ms]; "
              f"first call {look['first'] * 1000:.0f} ms (loads the URLconf)\n"
              f"    a 20,000-message correlation (first 500 steps): median "
              f"{look['storm'] * 1000:.1f} ms\n    plan: {look['plan']}", flush=True)

        def drop():
            with connection.cursor() as c:
                c.execute("DROP INDEX trace_msg_id")

        await sync_to_async(drop)()  # what the message_id index costs
        report(f"without the message_id index, into the {total + 3 * n:,}-row index",
               await index(nc, n, server.proc.pid), n, base, False)
        kicked = open(server.log_path).read().count("Slow Consumer Detected")
        print(f"slow consumers: nats-server closed {kicked} connection(s) of this run as slow "
              f"consumers", flush=True)
    finally:
        await nc.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--database-url", help="e.g. postgres://postgres@127.0.0.1:5432/lucent_bench_"
                    "traces (dropped and created again); default: SQLite in a temp dir")
    args = ap.parse_args()
    header(f"trace index: {args.n:,} envelopes indexed, then lookups over {args.rows:,} rows, "
           f"on {'PostgreSQL' if args.database_url else 'SQLite'}")
    code_note("traces/indexer.py", "traces/store.py", "traces/trace.py", "lucent_bus/tail.py")
    with environment(args.database_url) as server:
        asyncio.run(main(server, args.n, args.rows))
