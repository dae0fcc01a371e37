"""Bulk replay throughput of the dead-letter service, against raw nats-py publishing.

Run: .venv/bin/python bench/deadletter_replay.py [--n 100000] [--profile-n 10000] [--sketch]
(about 3-4 minutes with the defaults)

1. N dead letters are produced cheaply: published straight to DEAD_LETTERS
   (``lucent.deadletter.ORDERS.shipper``) with the headers that
   ``lucent_bus.deadletters.headers`` builds, Lucent-DL-Subject pointing at
   ``orders.eu.<k>`` (stored by the target stream ORDERS), payload an ADR-003
   envelope of ~330 bytes; then indexed with ``dl_index.index_batch`` loops.
2. A bulk replay job over all of them (filter consumer=shipper) through
   ``plans.start_job`` with LUCENT_JOBS_INLINE=True and an operator user, timed
   from the call to its return (the job is done then); checked: job done=N,
   failed=0, ORDERS grew by exactly N, every letter marked replayed. Reported
   with it: the bus work (``replay.replay_batch``, in the job's helper thread), the
   recording (``replay.record_replays``, overlapping it) and the CPU seconds of this
   process and of nats-server during the job.
3. Baseline, same process: N messages of the same size (same payload, same
   headers as a replay carries, a unique Nats-Msg-Id each) to the same stream
   with ``js.publish_async`` then ``js.publish_async_completed()``.
4. cProfile of a job over ``--profile-n`` other dead letters (consumer=profiled):
   the job's own thread (Django, DB) and the bus loop while each batch's bus
   work (``replay._replay_rows``) runs there, merged, top entries; bus calls counted.
5. With ``--sketch``: the bench-side sketches that led to the job's current
   shape (``_lean_job``: one connection, pages of 1000, pipelined publishes,
   read by one STREAM.MSG.GET per letter or by one filtered consumer).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import logging
import pstats
import time

from deadletter_common import SECOND, Clock, bus, code_note, environment, header, open_fds, stream_state

TARGET_RATE = 20_000
TARGET_RATIO = 0.4
SQS_REDRIVE = 500  # msgs/s, AWS SQS dead-letter queue redrive (documented default velocity)


class CountConnects(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.n = 0

    def emit(self, record) -> None:
        if "connected to the bus" in record.getMessage():
            self.n += 1


def payload_and_headers(i: int, consumer: str):
    from lucent_bus import deadletters as dl
    from lucent_bus import envelope

    subject = f"orders.eu.{i % 50}"
    env = envelope.make("ShipOrder", subject, {"order": i, "sku": f"SKU-{i % 977}",
                                               "qty": i % 7 + 1, "note": "x" * 60},
                        correlation_id=f"corr-{i % 1000:04d}", sender={"serviceId": "shop"})
    original = {"X-Tenant": "acme", **envelope.headers_for(env)}
    headers = dl.headers(original, stream="ORDERS", seq=i + 1, subject=subject, consumer=consumer,
                         deliveries=2, reason=dl.REASON_MAX_DELIVERIES,
                         error="shipping service: carrier timeout")
    return subject, envelope.encode(env), headers


async def produce(nc, n: int, consumer: str, offset: int = 0) -> tuple[float, float]:
    """Publish n dead letters to DEAD_LETTERS and index them; (publish s, index s)."""
    from asgiref.sync import sync_to_async

    from deadletters import index as dl_index
    from deadletters.models import DeadLetter
    from lucent_bus import deadletters as dl

    jsn = nc.jetstream()
    t0 = time.perf_counter()
    for i in range(offset, offset + n):
        _, data, headers = payload_and_headers(i, consumer)
        await jsn.publish_async(dl.subject("ORDERS", consumer), data, headers=headers)
    await jsn.publish_async_completed()
    t_pub = time.perf_counter() - t0
    t0 = time.perf_counter()
    idx = await jsn.pull_subscribe_bind(dl_index.INDEX_CONSUMER, dl.STREAM)
    deadline, seen = time.monotonic() + 180, 0
    want = await sync_to_async(DeadLetter.objects.count)() + n
    while time.monotonic() < deadline:
        got = await dl_index.index_batch(nc, idx, batch=2000)
        seen += got
        if seen >= n and (got == 0 or await sync_to_async(DeadLetter.objects.count)() >= want):
            break
    await idx.unsubscribe()
    have = await sync_to_async(DeadLetter.objects.filter(consumer=consumer).count)()
    if have != n:
        raise SystemExit(f"indexed {have} dead letters of {consumer}, expected {n}")
    return t_pub, time.perf_counter() - t0


async def setup(url: str, n: int, profile_n: int) -> None:
    from lucent_bus import jetstream as js
    from streams import topology

    nc = await bus(url)
    try:
        await topology.apply(nc)
        await js.add_stream(nc, {"name": "ORDERS", "subjects": ["orders.>"], "storage": "file",
                                 "retention": "limits", "duplicate_window": 2 * 60 * SECOND})
        t_pub, t_idx = await produce(nc, n, "shipper")
        print(f"setup: {n:,} dead letters published to DEAD_LETTERS in {t_pub:.1f}s, indexed "
              f"(index_batch, batch=2000) in {t_idx:.1f}s ({n / t_idx:,.0f}/s)", flush=True)
        if profile_n:
            await produce(nc, profile_n, "profiled", offset=n)
    finally:
        await nc.close()


async def baseline(url: str, n: int, tag: str) -> float:
    """Raw nats-py: n same-size messages to ORDERS with publish_async; msgs/s."""
    from deadletters import replay

    nc = await bus(url)
    try:
        jsn = nc.jetstream()
        before = (await stream_state(nc, "ORDERS"))["messages"]
        msgs = []
        for i in range(n):
            subject, data, stored = payload_and_headers(i, "shipper")
            headers = replay.replay_headers(stored, 1_000_000 + i, subject)
            headers["Nats-Msg-Id"] = f"baseline-{tag}:{i}"
            msgs.append((subject, data, headers))
        t0 = time.perf_counter()
        for subject, data, headers in msgs:
            await jsn.publish_async(subject, data, headers=headers)
        await jsn.publish_async_completed()
        took = time.perf_counter() - t0
        after = (await stream_state(nc, "ORDERS"))["messages"]
        assert after - before == n, (before, after)
        return n / took
    finally:
        await nc.close()


def dlq_batches(n: int) -> int:
    from deadletters import replay

    return -(-n // replay.BATCH)


async def read_baselines(url: str, n: int) -> tuple[float, float]:
    """The read half alone, raw nats-py: n stored dead letters by one filtered pull consumer,
    and by one STREAM.MSG.GET each (1000 in flight); msgs/s each."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    from lucent_bus import deadletters as dl
    from lucent_bus import jetstream as js

    nc = await bus(url)
    try:
        jsn = nc.jetstream()
        subject = dl.subject("ORDERS", "shipper")
        cfg = ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE,
                             filter_subject=subject, inactive_threshold=30.0)
        sub = await jsn.pull_subscribe(subject, stream=dl.STREAM, config=cfg)
        t0, got = time.perf_counter(), 0
        while got < n:
            got += len(await sub.fetch(1000, timeout=5))
        by_consumer = n / (time.perf_counter() - t0)
        await sub.unsubscribe()
        first = (await stream_state(nc, dl.STREAM))["first_seq"]
        sem = asyncio.Semaphore(1000)

        async def get(seq):
            async with sem:
                return await js.next_message(nc, dl.STREAM, seq)

        t0 = time.perf_counter()
        await asyncio.gather(*(get(seq) for seq in range(first, first + n)))
        return by_consumer, n / (time.perf_counter() - t0)
    finally:
        await nc.close()


def operator():
    from django.contrib.auth.models import Group, User

    user, _ = User.objects.get_or_create(username="operator")
    user.groups.add(Group.objects.get_or_create(name="operator")[0])
    return user


def query_plan(filters: dict) -> str:
    from django.db import connection

    from deadletters import replay, search

    qs = search.filtered(filters).filter(pk__gt=0).order_by("pk")[:replay.BATCH]
    sql, params = qs.query.sql_with_params()
    with connection.cursor() as cur:
        cur.execute("EXPLAIN QUERY PLAN " + sql, params)
        return "; ".join(row[-1] for row in cur.fetchall())


def server_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` (the nats-server)."""
    import os

    if not pid:
        return 0.0
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def replay_job(consumer: str, n: int, url: str, server_pid: int | None = None) -> tuple[float, dict]:
    from django.conf import settings

    from deadletters import plans, replay
    from deadletters.models import DeadLetter, Replay
    from kernel.models import Job
    from lucent_bus import client as bus_client
    from lucent_bus.client import web_client

    settings.LUCENT_JOBS_INLINE = True
    user = operator()
    before = asyncio.run(_orders_messages(url))
    fds, clients = open_fds(), len(web_client._clients)
    spent = {"replay_batch": 0.0, "connect": 0.0, "record": 0.0, "sharded": 0.0}
    orig_batch, orig_connect, orig_record = replay.replay_batch, bus_client.connect, replay.record_replays

    def timed_batch(*a, **kw):  # the bus part of a batch (helper thread), connects included
        t = time.perf_counter()
        try:
            return orig_batch(*a, **kw)
        finally:
            spent["replay_batch"] += time.perf_counter() - t

    orig_sharded = replay.replay_sharded

    def timed_sharded(*a, **kw):  # a whole batch split with the helper process (wall time)
        t = time.perf_counter()
        try:
            return orig_sharded(*a, **kw)
        finally:
            spent["sharded"] += time.perf_counter() - t

    def timed_record(*a, **kw):  # the DB part of a batch (job thread), overlapping the next
        t = time.perf_counter()
        try:
            return orig_record(*a, **kw)
        finally:
            spent["record"] += time.perf_counter() - t

    async def timed_connect(*a, **kw):
        t = time.perf_counter()
        try:
            return await orig_connect(*a, **kw)
        finally:
            spent["connect"] += time.perf_counter() - t

    replay.replay_batch, bus_client.connect, replay.record_replays = timed_batch, timed_connect, timed_record
    replay.replay_sharded = timed_sharded
    cpu0, server0 = time.process_time(), server_cpu(server_pid)
    t0 = time.perf_counter()
    try:
        result = plans.start_job(user, "replay", {"consumer": consumer})
    finally:
        took = time.perf_counter() - t0
        spent["cpu_python"] = time.process_time() - cpu0
        spent["cpu_server"] = server_cpu(server_pid) - server0
        replay.replay_batch, bus_client.connect, replay.record_replays = orig_batch, orig_connect, orig_record
        replay.replay_sharded = orig_sharded
    job = Job.objects.get(pk=result["job"])
    after = asyncio.run(_orders_messages(url))
    replayed = DeadLetter.objects.filter(consumer=consumer, status=DeadLetter.REPLAYED).count()
    replays = Replay.objects.filter(job=job).count()
    ok = (job.state, job.done, job.failed) == ("done", n, 0) and after - before == n \
        and replayed == n and replays == n
    return took, {"ok": ok, "state": job.state, "done": job.done, "failed": job.failed,
                  "orders_added": after - before, "replayed_rows": replayed, "replay_rows": replays,
                  "fds_added": open_fds() - fds, "web_clients_added": len(web_client._clients) - clients,
                  "spent": spent}


async def _orders_messages(url: str) -> int:
    nc = await bus(url)
    try:
        return (await stream_state(nc, "ORDERS"))["messages"]
    finally:
        await nc.close()


@contextlib.contextmanager
def profiled_bus_calls(collected: list):
    """Profile the bus loop's thread while each batch's bus work (``replay._replay_rows``)
    runs there, so the loop's own work in that time (parsing, callbacks) is captured too."""
    from deadletters import replay

    original = replay._replay_rows

    async def profiled(*a, **kw):
        prof = cProfile.Profile()
        prof.enable()
        try:
            return await original(*a, **kw)
        finally:
            prof.disable()
            collected.append(prof)

    replay._replay_rows = profiled
    try:
        yield
    finally:
        replay._replay_rows = original


def profile_job(url: str, n: int) -> None:
    from deadletters import plans, replay
    from lucent_bus import jetstream as js

    counts = {"STREAM.MSG.GET": 0, "DIRECT.GET batches": 0, "other API": 0, "published": 0}
    orig_api, orig_get, orig_pub = js.api, js.direct_get_batch, js.publish_many

    async def api(nc, op, *a, **kw):
        counts["STREAM.MSG.GET" if op.startswith("STREAM.MSG.GET") else "other API"] += 1
        return await orig_api(nc, op, *a, **kw)

    async def direct_get_batch(*a, **kw):
        counts["DIRECT.GET batches"] += 1
        return await orig_get(*a, **kw)

    async def publish_many(nc, messages, **kw):
        counts["published"] += len(messages)
        return await orig_pub(nc, messages, **kw)

    js.api, js.direct_get_batch, js.publish_many = api, direct_get_batch, publish_many
    loops: list = []
    main = cProfile.Profile()
    try:
        with profiled_bus_calls(loops):
            main.enable()
            t0 = time.perf_counter()
            result = plans.start_job(operator(), "replay", {"consumer": "profiled"})
            took_plain = time.perf_counter() - t0
            main.disable()
    finally:
        js.api, js.direct_get_batch, js.publish_many = orig_api, orig_get, orig_pub
    print(f"\nprofile: job over {n:,} dead letters (consumer=profiled) under cProfile: "
          f"{took_plain:.1f}s ({n / took_plain:,.0f} msgs/s with profiler overhead), job {result}")
    print(f"  bus calls made: {counts} (BATCH={replay.BATCH}, PUB_IN_FLIGHT={replay.PUB_IN_FLIGHT}); "
          f"batches profiled on the bus loop: {len(loops)}")
    for title, profs, key in (("job thread (sync: Django, DB, waiting for the batch in flight)",
                               [main], "tottime"),
                              ("bus loop thread during each batch's bus work", loops, "tottime"),
                              ("both, cumulative", [main] + loops, "cumulative")):
        out = io.StringIO()
        st = pstats.Stats(profs[0], stream=out)
        for p in profs[1:]:
            st.add(p)
        st.strip_dirs().sort_stats(key).print_stats(18)
        text = out.getvalue()
        body = text[text.find("   ncalls"):]
        print(f"\n  --- {title}, top by {key} ---")
        print("\n".join("  " + ln for ln in body.rstrip().splitlines()))


# ------------------------------------------------------------------ what the same job could cost
# Bench-side sketches of the suggestions (not the console's code): the same
# semantics (a Nats-Msg-Id per letter and target, each PubAck checked, Replay
# rows, status=replayed, a checkpoint per page), on one connection in one event
# loop, pages of PAGE, publishes pipelined with publish_async. Their ids carry a
# prefix of their own so that the target stores every message again.

PAGE = 1000


async def _lean_job(url: str, consumer: str, prefix: str, read: str,
                    raw_sql: bool = False) -> tuple[float, int, dict]:
    from asgiref.sync import sync_to_async
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    from deadletters import replay, search
    from deadletters.models import DeadLetter, Replay
    from kernel.models import Job
    from lucent_bus import deadletters as dl
    from lucent_bus import jetstream as js

    nc = await bus(url)
    jsn = nc.jetstream()
    job = await sync_to_async(Job.objects.create)(kind="replay", params={"filters": {"consumer": consumer}})

    def page(last_id):
        return list(search.filtered({"consumer": consumer}).filter(pk__gt=last_id).order_by("pk")
                    .values_list("pk", "dl_seq")[:PAGE])

    clock = Clock()

    def store(rows, last_id, done):
        if raw_sql:  # one executemany, no model instances
            from django.db import connection, transaction
            from django.utils import timezone

            now = timezone.now().isoformat()
            with clock("db write (in its thread)"), transaction.atomic(), connection.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO {Replay._meta.db_table} (dead_letter_id, job_id, username, "
                    "subject, msg_id, stream, seq, duplicate, at) VALUES (?,?,?,?,?,?,?,?,?)",
                    [(r[0], job.pk, "operator", r[1], r[2], r[3], r[4], r[5], now) for r in rows])
                cur.executemany(f"UPDATE {DeadLetter._meta.db_table} SET status = ? WHERE id = ?",
                                [(DeadLetter.REPLAYED, r[0]) for r in rows])
                cur.execute(f"UPDATE {Job._meta.db_table} SET done = ?, last_id = ? WHERE id = ?",
                            (done, last_id, job.pk))
            return
        with clock("db write (in its thread)"):
            Replay.objects.bulk_create(rows, batch_size=1000)
            DeadLetter.objects.filter(pk__in=[r.dead_letter_id for r in rows]).update(
                status=DeadLetter.REPLAYED)
            Job.objects.filter(pk=job.pk).update(done=done, last_id=last_id)

    sub = None
    t0 = time.perf_counter()
    last_id, done, writing = 0, 0, None
    try:
        while True:
            with clock("db page select"):
                letters = await sync_to_async(page)(last_id)
            if not letters:
                break
            want = {seq: pk for pk, seq in letters}
            stored = {}
            t_read = time.perf_counter()
            if read == "msg_get":  # one STREAM.MSG.GET per letter, 1000 in flight
                sem = asyncio.Semaphore(1000)

                async def get(seq, sem=sem, stored=stored):
                    async with sem:
                        stored[seq] = await js.next_message(nc, dl.STREAM, seq)
                await asyncio.gather(*(get(seq) for seq in want))
            else:  # one filtered consumer over DEAD_LETTERS, read in order
                if sub is None:
                    cfg = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                         opt_start_seq=min(want), ack_policy=AckPolicy.NONE,
                                         filter_subject=dl.subject("ORDERS", consumer),
                                         inactive_threshold=30.0)
                    sub = await jsn.pull_subscribe(dl.subject("ORDERS", consumer), stream=dl.STREAM,
                                                   config=cfg)
                top = max(want)
                while len(stored) < len(want):
                    for m in await sub.fetch(PAGE, timeout=5):
                        seq = m.metadata.sequence.stream
                        if seq in want:
                            stored[seq] = {"headers": m.headers or {}, "data": m.data,
                                           "seq": seq}
                        if seq >= top:
                            break
            clock.t["read stored"] = clock.t.get("read stored", 0) + time.perf_counter() - t_read
            futures = []
            t_pub = time.perf_counter()
            for seq, msg in stored.items():
                target = msg["headers"].get(dl.H_SUBJECT)
                headers = replay.replay_headers(msg["headers"], seq, target)
                headers["Nats-Msg-Id"] = prefix + headers["Nats-Msg-Id"]
                futures.append((seq, target, headers["Nats-Msg-Id"],
                                await jsn.publish_async(target, msg["data"], headers=headers)))
            clock.t["publish"] = clock.t.get("publish", 0) + time.perf_counter() - t_pub
            t_ack = time.perf_counter()
            rows = []
            for seq, target, msg_id, fut in futures:
                ack = await fut
                if raw_sql:
                    rows.append((want[seq], target, msg_id, ack.stream, ack.seq, bool(ack.duplicate)))
                    continue
                rows.append(Replay(dead_letter_id=want[seq], job_id=job.pk, subject=target,
                                   msg_id=msg_id, stream=ack.stream, seq=ack.seq,
                                   duplicate=bool(ack.duplicate), username="operator"))
            clock.t["PubAcks + Replay objects"] = (clock.t.get("PubAcks + Replay objects", 0)
                                                   + time.perf_counter() - t_ack)
            last_id, done = letters[-1][0], done + len(rows)
            if writing is not None:
                with clock("waiting for the previous DB write"):
                    await writing  # one page's DB write in flight, overlapping the bus work
            writing = asyncio.ensure_future(sync_to_async(store)(rows, last_id, done))
        if writing is not None:
            await writing
        return time.perf_counter() - t0, done, clock.t
    finally:
        if sub is not None:
            await sub.unsubscribe()
        await nc.close()


def prototypes(url: str, n: int, base: float) -> None:
    from deadletters.models import DeadLetter

    print(f"\nsketches of the suggestions (bench code, same semantics, one connection, pages of "
          f"{PAGE}, publish_async, DB write overlapped), over the same {n:,} letters:")
    for read, prefix, raw in (("msg_get", "p1-", False), ("consumer", "p2-", False),
                              ("consumer", "p3-", True)):
        DeadLetter.objects.filter(consumer="shipper").update(status=DeadLetter.NEW)
        before = asyncio.run(_orders_messages(url))
        took, done, parts = asyncio.run(_lean_job(url, "shipper", prefix, read, raw))
        added = asyncio.run(_orders_messages(url)) - before
        rate = n / took
        how = ("one STREAM.MSG.GET per letter, 1000 in flight" if read == "msg_get"
               else "one filtered pull consumer over DEAD_LETTERS (no per-letter GET)")
        how += ", DB rows by raw executemany" if raw else ", DB rows by the ORM"
        print(f"  {how}: {took:.1f}s = {rate:,.0f} msgs/s ({rate / base:.2f}x baseline); "
              f"{'OK' if done == n and added == n else 'MISMATCH'} done={done} ORDERS +{added}",
              flush=True)
        print("    time: " + ", ".join(f"{k} {v:.1f}s" for k, v in parts.items()), flush=True)


def main(n: int, profile_n: int, server, no_sketch: bool = False) -> None:
    url = server.url
    asyncio.run(setup(url, n, profile_n))
    print(f"batch query plan (filters consumer=shipper): {query_plan({'consumer': 'shipper'})}")

    counter = CountConnects()
    bus_log = logging.getLogger("lucent.bus")
    bus_log.addHandler(counter)
    bus_log.setLevel(logging.INFO)
    bus_log.propagate = False  # count the web client's connects without printing each

    base_before = asyncio.run(baseline(url, n, "a"))
    print(f"baseline (raw js.publish_async, {n:,} msgs, before the job): {base_before:,.0f} msgs/s",
          flush=True)
    connects = counter.n
    took, check = replay_job("shipper", n, url, server.proc.pid if server.proc else None)
    connects = counter.n - connects
    sp = check.pop("spent")
    rate = n / took
    print(f"replay job (plans.start_job inline, {n:,} dead letters): {took:.1f}s = {rate:,.0f} msgs/s; "
          f"{'OK' if check['ok'] else 'MISMATCH'} {check}", flush=True)
    if sp["sharded"]:
        print(f"  bus work shared with the helper process (replay.Shard): "
              f"whole batches {sp['sharded']:.1f}s wall ({sp['sharded'] / took:.0%} of the job); "
              f"the line below counts only this process's share of each batch")
    print(f"  split: bus work (replay_batch in the helper thread: read stored copies, publish "
          f"pipelined, PubAcks; {dlq_batches(n)} batches) {sp['replay_batch']:.1f}s "
          f"({sp['replay_batch'] / took:.0%} of the job), of which connecting {sp['connect']:.1f}s; "
          f"recording (record_replays in the job thread, overlapping the next batch's bus work) "
          f"{sp['record']:.1f}s ({sp['record'] / took:.0%})")
    print(f"  CPU during the job: this process (job thread, helper thread, bus loop) "
          f"{sp['cpu_python']:.1f}s = {sp['cpu_python'] / took:.0%} of one core; nats-server "
          f"{sp['cpu_server']:.1f}s = {sp['cpu_server'] / took:.0%} of one core (2 cores in all)")
    print(f"  bus connections opened by the web client during the job: {connects} "
          f"(file descriptors still open afterwards: +{check['fds_added']}, "
          f"web_client._clients +{check['web_clients_added']})")
    base_after = asyncio.run(baseline(url, n, "b"))
    print(f"baseline (raw js.publish_async, {n:,} msgs, after the job): {base_after:,.0f} msgs/s")
    base = max(base_before, base_after)
    by_consumer, by_get = asyncio.run(read_baselines(url, n))
    print(f"read half alone (raw nats-py, {n:,} stored dead letters): one filtered pull consumer "
          f"{by_consumer:,.0f} msgs/s; one STREAM.MSG.GET each, 1000 in flight {by_get:,.0f} msgs/s; "
          f"read+publish in sequence at best ~{1 / (1 / by_consumer + 1 / base):,.0f} msgs/s "
          f"(consumer) / ~{1 / (1 / by_get + 1 / base):,.0f} msgs/s (MSG.GET) before any DB work",
          flush=True)
    print(f"\nRESULT replay {rate:,.0f} msgs/s vs target {TARGET_RATE:,}: "
          f"{'meets' if rate >= TARGET_RATE else 'MISSES'} ({rate / TARGET_RATE:.2f}x of target)")
    print(f"RESULT ratio to raw publish_async baseline ({base:,.0f} msgs/s): {rate / base:.3f}x "
          f"vs target {TARGET_RATIO}x: {'meets' if rate / base >= TARGET_RATIO else 'MISSES'}")
    print(f"RESULT ratio to AWS SQS redrive (~{SQS_REDRIVE} msgs/s): {rate / SQS_REDRIVE:.1f}x",
          flush=True)
    if profile_n:
        profile_job(url, profile_n)
    if not no_sketch:
        prototypes(url, n, base)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--profile-n", type=int, default=10_000, help="0: no profile run")
    ap.add_argument("--sketch", action="store_true",
                    help="also run the bench-side sketches (now implemented in dlq: off by default)")
    args = ap.parse_args()
    header(f"dead-letter bulk replay: {args.n:,} dead letters, against raw publish_async")
    code_note("deadletters/replay.py", "deadletters/jobs.py", "lucent_bus/client.py")
    with environment("dlreplay") as (_tmp, server):
        main(args.n, args.profile_n, server, not args.sketch)
