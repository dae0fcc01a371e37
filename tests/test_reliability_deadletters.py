"""Issue 11: the dead-letter index and the trace index survive streams declared again,
another bus, a restored backup and hostile messages; nothing lost, nothing doubled,
nothing stalled. Against real nats-servers."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import pytest
from asgiref.sync import sync_to_async

from deadletters import capture as dl_capture
from deadletters import index as dl_index
from deadletters import rows as dl_rows
from deadletters.models import DeadLetter
from kernel import quarantine
from kernel.models import Quarantined
from lucent_bus import deadletters as dl
from lucent_bus import embedded
from lucent_bus import jetstream as js
from streams import topology

from .conftest import bus
from .deadletter_bus import drain, fail, work_stream
from .malformed import CASES, HUGE, publish_raw

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.suite("faults")]


async def _letters(nc, tag: str, n: int) -> None:
    """``n`` dead letters published by a service itself (explicit), payload ``<tag> <i>``."""
    for i in range(n):
        await js.publish(nc, dl.subject("ORDERS", "shipper"), f"{tag} {i}".encode(),
                         dl.headers({"X-Tag": tag}, stream="ORDERS", seq=i + 1,
                                    subject=f"orders.{tag}.{i}", consumer="shipper",
                                    deliveries=2, reason=dl.REASON_MAX_DELIVERIES))


async def _index(nc) -> None:
    """Index DEAD_LETTERS until nothing is left (as the collector's loop does)."""
    sub = await nc.jetstream().pull_subscribe_bind(dl_index.INDEX_CONSUMER, dl.STREAM)
    while await dl_index.index_batch(nc, sub):
        pass
    await sub.unsubscribe()


def _rows() -> list[tuple]:
    return list(DeadLetter.objects.order_by("id").values_list("generation", "dl_seq", "search_text"))


async def _generation(nc) -> str:
    return dl.generation(await js.stream_info(nc, dl.STREAM))


async def _settled(nc, consumer: str = dl_index.INDEX_CONSUMER, stream: str = dl.STREAM) -> None:
    info = await js.consumer_info(nc, stream, consumer)
    assert (info["num_pending"], info["num_ack_pending"]) == (0, 0), info


@contextlib.asynccontextmanager
async def _pipeline(nc):
    """The collector's capture and index loops (``dl_index.run``)."""
    stop = asyncio.Event()
    task = asyncio.create_task(dl_index.run(nc, stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def _until(predicate, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await sync_to_async(predicate)():
        assert asyncio.get_running_loop().time() < deadline, "condition never met"
        await asyncio.sleep(0.1)


# ---------------------------------------------------------------- generations

async def test_dead_letters_declared_again_are_all_stored_and_the_old_rows_kept(fresh_nc):
    await topology.apply(fresh_nc)
    await _letters(fresh_nc, "old", 3)
    await _index(fresh_nc)
    first = await _generation(fresh_nc)
    await js.delete_stream(fresh_nc, dl.STREAM)
    await topology.apply(fresh_nc)  # declared again (its consumer too): counts from 1 again
    second = await _generation(fresh_nc)
    assert first and second and first != second
    await _letters(fresh_nc, "new", 5)
    await _index(fresh_nc)
    await _index(fresh_nc)  # again: nothing doubles
    rows = await sync_to_async(_rows)()
    assert rows == [(first, i + 1, f"old {i}") for i in range(3)] + \
        [(second, i + 1, f"new {i}") for i in range(5)]
    await _settled(fresh_nc)
    # A rebuild from the stream adds nothing: the same messages, the same digests.
    assert await dl_index.reindex(fresh_nc) == 0
    assert len(await sync_to_async(_rows)()) == 8


async def test_a_stream_declared_again_without_its_consumer_gets_it_back(fresh_nc):
    await topology.apply(fresh_nc)
    async with _pipeline(fresh_nc):
        await _letters(fresh_nc, "old", 2)
        await _until(lambda: DeadLetter.objects.count() == 2)
        config = (await js.stream_info(fresh_nc, dl.STREAM))["config"]
        await js.delete_stream(fresh_nc, dl.STREAM)
        await js.add_stream(fresh_nc, config)  # by hand: no consumer
        await _letters(fresh_nc, "new", 4)
        await _until(lambda: DeadLetter.objects.count() == 6)
    rows = await sync_to_async(_rows)()
    assert [r[2] for r in rows] == ["old 0", "old 1"] + [f"new {i}" for i in range(4)]
    assert len({r[0] for r in rows[:2]}) == len({r[0] for r in rows[2:]}) == 1
    assert rows[0][0] != rows[2][0]
    await _settled(fresh_nc)


async def test_the_same_database_on_another_bus_stores_its_dead_letters(fresh_nc, tmp_path):
    await topology.apply(fresh_nc)
    await _letters(fresh_nc, "bus-a", 3)
    await _index(fresh_nc)
    server = embedded.single(tmp_path / "other" / "js").start().wait()
    other = await bus(server.url)
    try:
        await topology.apply(other)
        await _letters(other, "bus-b", 4)
        await _index(other)
        rows = await sync_to_async(_rows)()
        a, b = await _generation(fresh_nc), await _generation(other)
        assert rows == [(a, i + 1, f"bus-a {i}") for i in range(3)] + \
            [(b, i + 1, f"bus-b {i}") for i in range(4)]
        await _settled(other)
    finally:
        await other.close()
        server.stop()


def test_a_different_message_at_a_known_key_is_stored_under_a_generation_of_its_own(caplog):
    """A restored backup: the same ``created`` time, another message at sequence 2."""
    now = datetime.now(UTC)

    def row(seq: int, body: bytes):
        return dl_rows.row_from(dl.subject("ORDERS", "shipper"), seq, {dl.H_SEQ: str(seq)}, body,
                                now, "2026-01-01T00:00:00Z")

    assert dl_rows.store_rows([row(1, b"one"), row(2, b"two")]) == 2
    assert dl_rows.store_rows([row(2, b"two"), row(2, b"two")]) == 0  # repeats
    assert dl_rows.store_rows([row(2, b"restored two"), row(3, b"three")]) == 2
    assert dl_rows.store_rows([row(2, b"restored two")]) == 0  # and that one repeated
    rows = _rows()
    assert [(g[:20], s, t) for g, s, t in rows] == [
        ("2026-01-01T00:00:00Z", 1, "one"), ("2026-01-01T00:00:00Z", 2, "two"),
        ("2026-01-01T00:00:00Z", 2, "restored two"), ("2026-01-01T00:00:00Z", 3, "three")]
    assert rows[2][0].startswith("2026-01-01T00:00:00Z#r") and rows[3][0] == rows[0][0]
    assert "a different message" in caplog.text
    # A row indexed before digests existed (generation ""): the same message is a repeat.
    legacy = row(9, b"legacy")
    legacy.generation, legacy.digest = "", ""
    assert dl_rows.store_rows([legacy]) == 1
    again = row(9, b"legacy")
    again.generation = ""
    assert dl_rows.store_rows([again]) == 0


# ---------------------------------------------------------------- hostile messages

async def test_no_message_stalls_the_index_and_every_one_is_stored(fresh_nc, fresh_server):
    await topology.apply(fresh_nc)
    messages, expected = [], []
    for i, case in enumerate(CASES):
        messages.append((dl.subject("ORDERS", "shipper"), {dl.H_SEQ: str(i + 1)}, f"good {i}".encode()))
        expected.append(("good", f"good {i}", set()))
        messages.append((dl.subject("X", "y"), case.headers, case.payload))
        expected.append((case.name, None, case.bad))
    messages.append((dl.subject("ORDERS", "shipper"), {}, b"good last"))
    expected.append(("good", "good last", set()))
    async with _pipeline(fresh_nc):
        acks = await publish_raw(fresh_server.url, messages)
        assert [a.get("seq") for a in acks] == list(range(1, len(messages) + 1)), acks
        await _until(lambda: DeadLetter.objects.count() == len(messages), timeout=30)
        await asyncio.sleep(0.3)  # anything stored twice would be there now
    assert (await js.stream_info(fresh_nc, dl.STREAM))["state"]["messages"] == len(messages)
    rows = await sync_to_async(list)(DeadLetter.objects.order_by("dl_seq"))
    assert [r.dl_seq for r in rows] == list(range(1, len(messages) + 1))  # nothing lost or doubled
    for row, (name, text, bad) in zip(rows, expected, strict=True):
        malformed = set(filter(None, row.malformed.split(",")))
        assert malformed == bad, (name, row.malformed)
        if text is not None:
            assert (row.search_text, row.stream, row.consumer) == (text, "ORDERS", "shipper"), name
        for header in bad & {dl.H_SEQ, dl.H_DELIVERIES, dl.H_AT}:
            assert getattr(row, {dl.H_SEQ: "stream_seq", dl.H_DELIVERIES: "deliveries",
                                 dl.H_AT: "failed_at"}[header]) is None, name
    big = next(r for r in rows if r.payload_size == 1_000_000)
    assert len(big.search_text) == dl_rows.SEARCH_BYTES
    assert await sync_to_async(Quarantined.objects.count)() == 0
    await _settled(fresh_nc)


def test_a_row_the_database_refuses_is_stored_emptied_or_quarantined_and_the_rest_go_on():
    now = datetime.now(UTC)
    gen = "2026-02-02T00:00:00Z"

    def row(seq: int, body: bytes):
        return dl_rows.row_from(dl.subject("ORDERS", "shipper"), seq, {}, body, now, gen)

    refused = row(2, b"refused")
    refused.stream_seq = 2**70  # past what the column holds (as a reader bug would leave it)
    hopeless = row(3, b"hopeless")
    hopeless.captured_at = None  # even emptied, this row cannot be written
    assert dl_rows.store_rows([row(1, b"one"), refused, hopeless, row(4, b"four")]) == 3
    rows = {r.dl_seq: r for r in DeadLetter.objects.all()}
    assert sorted(rows) == [1, 2, 4]
    assert rows[2].malformed == "all" and rows[2].stream_seq is None and rows[2].stream == "ORDERS"
    assert rows[1].malformed == rows[4].malformed == ""
    q = Quarantined.objects.get()
    assert (q.pipeline, q.stream, q.generation, q.seq) == ("deadletter-index", dl.STREAM, gen, 3)
    assert "IntegrityError" in q.reason
    # Redelivered: stored once, quarantined once.
    assert dl_rows.store_rows([row(1, b"one"), hopeless]) == 0
    assert Quarantined.objects.count() == 1 and DeadLetter.objects.count() == 3


# ---------------------------------------------------------------- capture

async def test_a_source_stream_declared_again_has_its_new_failures_captured(fresh_nc):
    await work_stream(fresh_nc)
    for i in range(3):
        await fresh_nc.jetstream().publish(f"orders.eu.{i}", f"first life {i}".encode())
    await fail(fresh_nc, set())
    await asyncio.sleep(0.2)
    await drain(fresh_nc)
    assert await sync_to_async(DeadLetter.objects.count)() == 3
    await js.delete_stream(fresh_nc, "ORDERS")
    # No wait for the cache to age: these are stored after the capture last read ORDERS,
    # so it reads its generation again.
    await work_stream(fresh_nc)  # declared again: sequences 1, 2, 3 again
    for i in range(3):
        await fresh_nc.jetstream().publish(f"orders.eu.{i}", f"second life {i}".encode())
    await fail(fresh_nc, set())
    await asyncio.sleep(0.2)
    await drain(fresh_nc)
    rows = await sync_to_async(list)(DeadLetter.objects.order_by("dl_seq"))
    # captured concurrently: in any order within a life
    assert sorted((r.search_text, r.stream_seq) for r in rows) == \
        [(f"first life {i}", i + 1) for i in range(3)] + [(f"second life {i}", i + 1) for i in range(3)]
    gens = [r.headers[dl.H_GENERATION] for r in rows]
    assert len(set(gens[:3])) == len(set(gens[3:])) == 1 and gens[0] != gens[3]
    assert all(f"@{r.headers[dl.H_GENERATION]}:" in r.headers["Nats-Msg-Id"] for r in rows)
    await _settled(fresh_nc)
    await _settled(fresh_nc, dl_capture.CAPTURE_CONSUMER, dl_capture.ADVISORY_STREAM)


# ---------------------------------------------------------------- the trace index

@contextlib.asynccontextmanager
async def _trace_indexing(nc):
    from traces import indexer

    idx = indexer.Indexer(nc, every=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(idx.run(stop))
    await _until(lambda: len(idx.following) == len(indexer.STREAMS))
    try:
        yield idx
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def _jobs(nc, cid: str, n: int) -> None:
    from lucent_bus import envelope

    for i in range(n):
        job = envelope.make("Assess", f"lucent.agents.risk.assessment.{i}", {"i": i},
                            correlation_id=cid)
        await nc.jetstream().publish(job["subject"], envelope.encode(job))


def _seqs(cid: str) -> list[int]:
    from traces.models import EnvelopeRecord

    return sorted(EnvelopeRecord.objects.filter(correlation_id=cid).values_list("seq", flat=True))


def _point(stream: str = "AGENT_COORDINATION") -> tuple[str, int]:
    from traces.models import Cursor

    return Cursor.objects.values_list("generation", "last_seq").get(stream=stream)


async def _declare_again(nc, stream: str = "AGENT_COORDINATION") -> str:
    await js.delete_stream(nc, stream)
    await topology.apply(nc)
    return dl.generation(await js.stream_info(nc, stream))


async def test_the_trace_index_reads_a_stream_declared_again_from_its_start(fresh_nc):
    await topology.apply(fresh_nc)
    first = dl.generation(await js.stream_info(fresh_nc, "AGENT_COORDINATION"))
    async with _trace_indexing(fresh_nc):
        await _jobs(fresh_nc, "c-life-1", 5)
        await _until(lambda: _seqs("c-life-1") == [1, 2, 3, 4, 5])
        assert await sync_to_async(_point)() == (first, 5)
        second = await _declare_again(fresh_nc)  # while it is followed
        await _jobs(fresh_nc, "c-life-2", 3)
        await _until(lambda: _seqs("c-life-2") == [1, 2, 3])
        await _until(lambda: _point() == (second, 3))
    # Declared again while the console is down, and longer than the old point this time.
    third = await _declare_again(fresh_nc)
    await _jobs(fresh_nc, "c-life-3", 7)
    async with _trace_indexing(fresh_nc):
        await _until(lambda: _seqs("c-life-3") == list(range(1, 8)))
        await asyncio.sleep(0.5)  # anything read twice would be there now
    assert await sync_to_async(_seqs)("c-life-1") == [1, 2, 3, 4, 5]
    assert await sync_to_async(_seqs)("c-life-2") == [1, 2, 3]
    assert await sync_to_async(_point)() == (third, 7)


async def test_no_envelope_stalls_the_trace_index(fresh_nc, fresh_server):
    from traces.models import EnvelopeRecord

    await topology.apply(fresh_nc)
    messages = []
    for i, case in enumerate(CASES):
        for subject in ("lucent.agents.x.poison", dl.subject("X", "y")):
            messages.append((subject, {"X-Correlation-ID": f"c-good-{i}"}, b"{}"))
            messages.append((subject, case.headers, case.payload))
    acks = await publish_raw(fresh_server.url, messages)
    assert all(a.get("seq") for a in acks), acks
    n = len(messages) // 2
    async with _trace_indexing(fresh_nc):
        await _until(lambda: _point()[1] == n, timeout=30)
        await _until(lambda: _point(dl.STREAM)[1] == n, timeout=30)
        await asyncio.sleep(0.3)
    for stream in ("AGENT_COORDINATION", dl.STREAM):
        seqs = await sync_to_async(lambda s=stream: sorted(
            EnvelopeRecord.objects.filter(stream=s).values_list("seq", flat=True)))()
        assert seqs == list(range(1, n + 1)), stream  # every one, once
    good = await sync_to_async(lambda: EnvelopeRecord.objects.filter(
        correlation_id__startswith="c-good-").count())()
    assert good == len(CASES) * 2
    assert await sync_to_async(Quarantined.objects.count)() == 0


def test_a_trace_row_the_database_refuses_is_emptied_or_quarantined_and_the_point_moves(monkeypatch):
    from traces import indexer
    from traces import store as trace_store
    from traces.models import EnvelopeRecord

    now = datetime.now(UTC)
    gen = "2026-03-03T00:00:00Z"

    def row(seq, origin_seq=None):
        return ("AGENT_COORDINATION", seq, f"lucent.agents.{seq}", f"m-{seq}", "c-refused", "", "T",
                "", now, "", origin_seq, gen)

    assert indexer.store([row(1), row(2, 2**70), row(3)]) == 3
    assert _point() == (gen, 3)
    refused = EnvelopeRecord.objects.get(seq=2)
    assert (refused.message_id, refused.correlation_id, refused.origin_seq) == ("", "", None)
    monkeypatch.setattr(trace_store, "_emptied", lambda r: r)  # as if even emptied it were refused
    assert indexer.store([row(4), row(5, 2**70), row(6)]) == 2
    assert _point() == (gen, 6)
    q = Quarantined.objects.get()
    assert (q.pipeline, q.stream, q.generation, q.seq) == ("trace-index", "AGENT_COORDINATION", gen, 5)
    assert sorted(EnvelopeRecord.objects.values_list("seq", flat=True)) == [1, 2, 3, 4, 6]


async def test_a_term_that_ends_stops_its_trace_indexer_even_while_writes_fail(fresh_nc, monkeypatch):
    from django.db import OperationalError

    from lucent_console import collector
    from traces import indexer

    await topology.apply(fresh_nc)

    def locked(*args):
        raise OperationalError("database is locked")

    monkeypatch.setattr(indexer, "store", locked)
    monkeypatch.setattr(indexer, "backoff_delay", lambda *a, **kw: 0.05)
    stop = asyncio.Event()
    started: list[asyncio.Task] = []

    async def term():
        started.append(asyncio.create_task(indexer.run(fresh_nc, stop)))
        started.append(asyncio.create_task(asyncio.sleep(3600)))
        collector._end_with_term(*started)
        await asyncio.sleep(3600)

    task = asyncio.create_task(term())
    await _jobs(fresh_nc, "c-locked", 3)
    await asyncio.sleep(1.0)  # the indexer is retrying a write that keeps failing
    stop.set()  # the term ends: the indexer gives up after a few tries
    await asyncio.wait_for(asyncio.shield(started[0]), 10)
    task.cancel()  # and whatever the term started ends with it
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0)
    assert started[1].cancelled()


# ---------------------------------------------------------------- pages and /metrics

def test_pages_api_and_metrics_say_earlier_generation_malformed_and_quarantined(client, users,
                                                                                collector):
    async def declare():
        nc = await bus(collector.url)
        await topology.apply(nc)
        gen = dl.generation(await js.stream_info(nc, dl.STREAM))
        await nc.close()
        return gen

    from .conftest import run

    current = run(declare())
    collector.wait_for(lambda s: dl.STREAM in s["streams"])
    now = datetime.now(UTC)
    for gen, seq, body in (("", 1, b"before generations"), ("2020-01-01T00:00:00Z", 1, b"old bus"),
                           (current, 1, b"now"), (current + "#rabc", 1, b"restored")):
        dl_rows.store_rows([dl_rows.row_from(dl.subject("ORDERS", "shipper"), seq,
                                             {dl.H_SEQ: HUGE}, body, now, gen)])
    quarantine.set_aside("deadletter-index", dl.STREAM, current, 7, "lucent.deadletter.X.y",
                       "OverflowError: test", {}, 3)
    client.force_login(users["viewer"])
    page = client.get("/deadletters/").content.decode()
    assert page.count("earlier generation</span>") == 2
    assert "1 message could not be indexed" in page and "deadletter-index: 1" in page
    rows = {r["search_text"] if "search_text" in r else r["generation"]: r
            for r in client.get("/api/v1/deadletters/").json()["results"]}
    flags = {r["generation"]: r["earlier_generation"] for r in rows.values()}
    assert flags == {"": True, "2020-01-01T00:00:00Z": True, current: False, current + "#rabc": False}
    assert all(r["malformed"] == [dl.H_SEQ] and r["stream_seq"] is None for r in rows.values())
    old = DeadLetter.objects.get(generation="2020-01-01T00:00:00Z")
    detail = client.get(f"/deadletters/{old.pk}/").content.decode()
    assert 'id="dl-earlier"' in detail and "Lucent-DL-Seq (stored empty)" in detail
    metrics = client.get("/metrics").content.decode()
    assert 'lucent_quarantined_total{pipeline="deadletter-index"} 1' in metrics
    assert 'lucent_quarantined_total{pipeline="trace-index"} 0' in metrics
