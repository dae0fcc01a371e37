"""The correlation trace: the envelope index filled from the Lucent streams, and one
correlation followed across them, against a real nats-server."""

import asyncio
import contextlib
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import sync_to_async
from django.db import OperationalError
from django.urls import reverse

from deadletters import index as dl_index
from deadletters.models import DeadLetter
from kernel import helper
from kernel.actions import ActionError
from lucent_bus import deadletters as dl
from lucent_bus import envelope
from streams import topology
from traces import indexer, tasks
from traces.models import Cursor, EnvelopeRecord
from traces.trace import trace

from . import support
from .conftest import bus, run

pytestmark = pytest.mark.django_db(transaction=True)
XSS = "<script>alert(1)</script>"


@contextlib.asynccontextmanager
async def indexing(nc, **options):
    """The indexer running on the test's loop, subscribed to every stream."""
    idx = indexer.Indexer(nc, **{"every": 0.05, **options})
    stop = asyncio.Event()
    task = asyncio.create_task(idx.run(stop))
    await _until(lambda: len(idx.following) == len(indexer.STREAMS))
    try:
        yield idx
    finally:
        stop.set()
        await task


async def _until(predicate, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await sync_to_async(predicate)():
        assert asyncio.get_running_loop().time() < deadline, "condition never met"
        await asyncio.sleep(0.05)


def _count(**filters) -> int:
    return EnvelopeRecord.objects.filter(**filters).count()


async def _publish(nc, env: dict, headers: dict | None = None, stream: bool = True):
    data, headers = envelope.encode(env), headers or envelope.headers_for(env)
    await asyncio.sleep(0.005)  # services take a moment; keeps millisecond timestamps apart
    if not stream:  # COMMANDS is no_ack: a JetStream publish would wait for a PubAck
        await nc.publish(env["subject"], data, headers=headers)
        await nc.flush()
        return None
    return await nc.jetstream().publish(env["subject"], data, headers=headers)


async def _flow(nc, cid: str, job_type: str = "OptimizeExecution",
                job_subject: str = "lucent.agents.execution.optimization") -> dict:
    """command -> domain event -> agent job -> dead letter of that job, as services send them."""
    cmd = envelope.make("ExecuteTrade", "lucent.commands.trading.execute", {"qty": 5},
                        correlation_id=cid, sender={"serviceId": "gateway"})
    await _publish(nc, cmd, stream=False)
    event = envelope.make("TradeExecuted", "lucent.events.domain.trade.executed", {"qty": 5},
                          correlation_id=cid, causation_id=cmd["messageId"],
                          sender={"serviceId": "trading"})
    await _publish(nc, event)
    job = envelope.make(job_type, job_subject, {}, correlation_id=cid,
                        causation_id=event["messageId"], sender={"serviceId": "execution-agent"})
    ack = await _publish(nc, job)
    await asyncio.sleep(0.005)
    await nc.jetstream().publish(
        dl.subject("AGENT_COORDINATION", "execution-optimization"), envelope.encode(job),
        headers=dl.headers(envelope.headers_for(job), stream="AGENT_COORDINATION", seq=ack.seq,
                           subject=job_subject, consumer="execution-optimization",
                           deliveries=3, reason=dl.REASON_MAX_DELIVERIES))
    return {"cmd": cmd, "event": event, "job": job, "job_seq": ack.seq}


async def test_a_correlation_is_followed_from_command_to_dead_letter(fresh_nc):
    await topology.apply(fresh_nc)
    async with indexing(fresh_nc):
        sent = await _flow(fresh_nc, "corr-flow-1")
        await _flow(fresh_nc, "corr-other")
        # Also on the bus: a hierarchy event caused by the job, and a message that is
        # no envelope but says its correlation in the ADR's headers.
        node = envelope.make("NodeEvent", "lucent.hierarchy.node.edge-1", {},
                             correlation_id="corr-flow-1", causation_id=sent["job"]["messageId"])
        await _publish(fresh_nc, node)
        await asyncio.sleep(0.005)
        await fresh_nc.jetstream().publish("lucent.agents.legacy.ping", b"ping", headers={
            "X-Correlation-ID": "corr-flow-1", "Nats-Msg-Id": "legacy-1", "X-Event-Type": "Ping"})
        await _until(lambda: _count(correlation_id="corr-flow-1") == 6)
    await dl_index.reindex(fresh_nc)  # the dead-letter index, for the link to its page

    t = await sync_to_async(trace)("corr-flow-1")
    steps = t["steps"]
    assert [(s["stream"], s["message_type"]) for s in steps] == [
        ("COMMANDS", "ExecuteTrade"), ("DOMAIN_EVENTS", "TradeExecuted"),
        ("AGENT_COORDINATION", "OptimizeExecution"), ("DEAD_LETTERS", "OptimizeExecution"),
        ("HIERARCHY", "NodeEvent"), ("AGENT_COORDINATION", "Ping")]
    assert [(s["parent"], s["link"], s["depth"]) for s in steps] == [
        (None, "", 0), (0, "caused by", 1), (1, "caused by", 2), (2, "copy of", 3),
        (2, "caused by", 3), (None, "", 0)]
    assert [s["message_id"] for s in steps[:3]] == [
        sent["cmd"]["messageId"], sent["event"]["messageId"], sent["job"]["messageId"]]
    assert [s["sender"] for s in steps[:4]] == ["gateway", "trading", "execution-agent",
                                                 "execution-agent"]
    assert steps[0]["seq"] == 1 and steps[1]["seq"] is None and steps[4]["seq"] is None
    letter = steps[3]
    assert (letter["origin_stream"], letter["origin_seq"]) == ("AGENT_COORDINATION",
                                                               sent["job_seq"])
    assert steps[5]["message_id"] == "legacy-1"
    assert not any(s["cause_missing"] for s in steps)
    # Envelope timestamps are whole milliseconds: the event may look older than the
    # command it follows, and is still shown after it.
    assert steps[3]["since_first_s"] > 0 and steps[3]["gap"].startswith("+")
    assert steps[0]["url"] == "/streams/COMMANDS/?seq=1#messages"
    dead = await sync_to_async(DeadLetter.objects.get)(dl_seq=letter["seq"])
    assert letter["url"] == f"/deadletters/{dead.pk}/"
    assert steps[1]["url"].startswith("/streams/DOMAIN_EVENTS/?time=") and steps[1]["near"]


async def test_a_restart_indexes_what_was_published_meanwhile_and_nothing_twice(fresh_nc):
    await topology.apply(fresh_nc)

    async def jobs(start: int, end: int) -> None:
        for i in range(start, end):
            job = envelope.make("Assess", f"lucent.agents.risk.assessment.{i}", {"i": i},
                                correlation_id="corr-resume")
            await fresh_nc.jetstream().publish(job["subject"], envelope.encode(job))

    async with indexing(fresh_nc):
        await jobs(0, 10)
        await _until(lambda: _count(correlation_id="corr-resume") == 10)
    await jobs(10, 25)  # the console is down
    cursor = await sync_to_async(Cursor.objects.get)(stream="AGENT_COORDINATION")
    assert cursor.last_seq == 10
    async with indexing(fresh_nc):
        await _until(lambda: _count(correlation_id="corr-resume") == 25)
        await asyncio.sleep(0.5)  # anything read twice would arrive now
    seqs = await sync_to_async(list)(EnvelopeRecord.objects.filter(
        stream="AGENT_COORDINATION").order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, 26))
    cursor = await sync_to_async(Cursor.objects.get)(stream="AGENT_COORDINATION")
    assert cursor.last_seq == 25


async def test_rows_wait_and_are_retried_when_the_database_fails(fresh_nc, monkeypatch, caplog):
    await topology.apply(fresh_nc)
    real, calls = indexer.store, []

    def flaky(rows, *args):
        calls.append(len(rows))
        if len(calls) == 1:
            raise OperationalError("database is locked")
        return real(rows, *args)

    monkeypatch.setattr(indexer, "store", flaky)
    async with indexing(fresh_nc):
        for _ in range(5):
            job = envelope.make("Train", "lucent.agents.training.lstm", {}, correlation_id="corr-db")
            await fresh_nc.jetstream().publish(job["subject"], envelope.encode(job))
        await _until(lambda: _count(correlation_id="corr-db") == 5)
    assert len(calls) >= 2 and "could not store" in caplog.text and "database is locked" in caplog.text


def _row(stream: str, seq: int | None, cid: str = "corr-store") -> tuple:
    return (stream, seq, "lucent.agents.x", f"m-{stream}-{seq}", cid, "", "Job", "", datetime.now(UTC),
            "", None)


def test_a_batch_is_stored_once_and_only_after_the_one_it_follows():
    first = [_row("AGENT_COORDINATION", 1), _row("DOMAIN_EVENTS", None)]
    second = [_row("AGENT_COORDINATION", 2)]
    assert indexer.store(first, token=11) == 2
    assert indexer.store(first, token=11) == 0  # its writer died before saying it was stored
    with pytest.raises(indexer.OutOfOrder):
        indexer.store(second, token=12, after=99)  # the batch before it failed
    assert _count(correlation_id="corr-store") == 2
    assert Cursor.objects.get(stream="AGENT_COORDINATION").last_seq == 1
    assert indexer.store(second, token=12, after=11) == 1
    assert indexer.store(first, token=11) == 0  # the last but one is still known
    assert _count(correlation_id="corr-store") == 3
    assert indexer.cursors() == {"AGENT_COORDINATION": 2}
    # Another indexer (a leader handing over) stored up to 2 already: only 3 is new.
    again = [_row("AGENT_COORDINATION", 1), _row("AGENT_COORDINATION", 3)]
    assert indexer.store(again, token=13) == 1
    assert indexer.store([_row("AGENT_COORDINATION", 2)], token=14) == 0
    assert indexer.cursors() == {"AGENT_COORDINATION": 3}
    assert _count(correlation_id="corr-store") == 4


async def _jobs_and_events(nc, n: int, cid: str) -> None:
    """``n`` agent jobs (read by an ordered consumer) and ``n`` domain events (read
    live: only the batch tokens keep those from being stored twice)."""
    js_ = nc.jetstream()
    for i in range(n):
        job = envelope.make("Assess", f"lucent.agents.risk.assessment.{i}", {"i": i},
                            correlation_id=cid)
        await js_.publish_async(job["subject"], envelope.encode(job), headers=envelope.headers_for(job))
        event = envelope.make("Assessed", "lucent.events.domain.risk.assessed", {"i": i},
                              correlation_id=cid)
        await js_.publish_async(event["subject"], envelope.encode(event),
                                headers=envelope.headers_for(event))
    await js_.publish_async_completed()


def _exactly_once(cid: str, n: int) -> None:
    rows = list(EnvelopeRecord.objects.filter(correlation_id=cid).values_list("stream", "seq",
                                                                            "message_id"))
    assert sorted(seq for stream, seq, _ in rows if stream == "AGENT_COORDINATION") == \
        list(range(1, n + 1))
    assert len({m for _, _, m in rows}) == len(rows) == 2 * n


async def test_under_load_a_writer_process_stores_every_row_once(fresh_nc):
    await topology.apply(fresh_nc)
    async with indexing(fresh_nc, max_batch=150, spawn_at=1) as idx:
        await _jobs_and_events(fresh_nc, 1000, "corr-load")
        await _until(lambda: _count(correlation_id="corr-load") >= 2000, timeout=30)
        writer = idx.writer
        assert writer is not None and writer.alive and idx.writer_failures == 0
        # Each ordered stream is read on a connection of its own, not the collector's (a
        # reader catching up may have 32 MiB in flight: bus.client.sibling).
        conns = [idx.connections[s] for s, ordered in indexer.STREAMS.items() if ordered]
        assert len({id(c) for c in conns} | {id(fresh_nc)}) == len(conns) + 1
        assert all(c.is_connected for c in conns)
    assert writer.proc.poll() is not None and idx.writer is None  # stopped with the indexer
    assert all(c.is_closed for c in conns) and not idx.connections
    await sync_to_async(_exactly_once)("corr-load", 1000)
    cursor = await sync_to_async(Cursor.objects.get)(stream="AGENT_COORDINATION")
    assert cursor.last_seq == 1000


async def test_a_writer_process_that_dies_after_storing_loses_nothing_and_stores_nothing_twice(
        fresh_nc, monkeypatch, tmp_path):
    """The writer commits a batch and dies before it can say so, with the next batch
    already in its pipe: both are written again by a new writer, the stored one as a
    no-op."""
    await topology.apply(fresh_nc)
    monkeypatch.setenv("LUCENT_TEST_WRITER_DIES", str(tmp_path / "died"))
    # A test-only helper: registered here and, through its start code, in the child.
    monkeypatch.setitem(helper.HANDLERS, "test-writer-dies-once", support.writer_that_dies_once)
    monkeypatch.setattr(indexer.Writer, "TARGET", "test-writer-dies-once")
    monkeypatch.setattr(indexer.Writer, "CODE", helper.Helper.CODE.replace(
        "helper.serve(", "from tests import support; helper.register("
        "\"test-writer-dies-once\", support.writer_that_dies_once); helper.serve("))
    async with indexing(fresh_nc, max_batch=100, spawn_at=1) as idx:
        await _jobs_and_events(fresh_nc, 600, "corr-die")
        await _until(lambda: _count(correlation_id="corr-die") >= 1200, timeout=30)
        assert (tmp_path / "died").exists()  # the first writer died after storing a batch
        assert idx.writer is not None and idx.writer.alive  # its successor
        await asyncio.sleep(0.3)  # anything stored twice would be there now
    await sync_to_async(_exactly_once)("corr-die", 600)


async def test_an_indexer_cancelled_with_batches_in_flight_stops_and_loses_nothing(fresh_nc):
    """Cancelled (a leader stepping down cancels its work) while the writer process
    holds batches: it stops without hanging, kills the writer, writes what was in
    flight by token; the next indexer goes on from there, nothing twice."""
    await topology.apply(fresh_nc)
    js_ = fresh_nc.jetstream()
    for i in range(1500):
        await js_.publish_async(f"lucent.agents.risk.assessment.{i}", envelope.encode(
            envelope.make("Assess", "lucent.agents.risk.assessment", {}, correlation_id="c-cancel")))
    await js_.publish_async_completed()
    idx = indexer.Indexer(fresh_nc, every=0.05, max_batch=100, spawn_at=1)
    task = asyncio.create_task(idx.run(asyncio.Event()))
    await _until(lambda: idx.owed > 0)
    writer = idx.writer
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 20)
    assert writer.proc.poll() is not None and idx.writer is None and not idx.sent
    async with indexing(fresh_nc):
        await _until(lambda: _count(correlation_id="c-cancel") >= 1500, timeout=30)
        await asyncio.sleep(0.3)
    seqs = await sync_to_async(list)(EnvelopeRecord.objects.filter(
        correlation_id="c-cancel").order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, 1501))


async def test_an_ordered_consumer_recreated_before_its_first_message_does_not_read_again(fresh_nc):
    from lucent_bus import jetstream as js
    from lucent_bus import tail

    await topology.apply(fresh_nc)
    for i in range(10):
        await fresh_nc.jetstream().publish(f"lucent.agents.yield.analysis.{i}", b"old")
    seen = []

    async def cb(msg):
        seen.append(tail.position(msg.reply)[0])

    assert await tail.resume_from(fresh_nc, "AGENT_COORDINATION", 11) == 11
    assert await tail.resume_from(fresh_nc, "AGENT_COORDINATION", 500) == 1  # stream recreated
    sub = await tail.ordered(fresh_nc, "AGENT_COORDINATION", 11, cb, heartbeat=0.2)
    await js.api(fresh_nc, f"CONSUMER.DELETE.AGENT_COORDINATION.{sub._consumer}")
    await asyncio.sleep(1.0)  # no heartbeat for 2 x 0.2 s: nats-py recreates it
    await fresh_nc.jetstream().publish("lucent.agents.yield.analysis.new", b"new")
    await asyncio.sleep(0.5)
    await sub.unsubscribe()
    assert seen == [11]


def test_the_fast_path_reads_what_the_tolerant_decoder_reads():
    env = envelope.make("Trade", "lucent.commands.x", {"a": 1}, correlation_id="c",
                        causation_id="p", sender={"serviceId": "svc"})
    cases = [
        (envelope.encode(env), envelope.headers_for(env)),
        (envelope.encode({**env, "correlationId": None}), {"X-Correlation-ID": "from-header"}),
        (envelope.encode({**env, "correlationId": 42, "messageId": 7}), None),
        (envelope.encode({**env, "sender": {"instanceId": 7}, "causationId": {"x": 1}}), None),
        (envelope.encode({**env, "sender": "svc", "timestamp": None}), None),
        (envelope.encode({**env, "messageType": ""}), {"x-event-type": "FromHeader"}),
        (b'{"just": "json"}', {"X-Correlation-ID": "c2"}),
        (b"plain text", {"Lucent-Correlation-Id": "c3"}),
        (b"\xff\xfe{", None), (b"", None), (b'{"messageId": "m", broken', None),
        ('{"messageType": "T", "correlationId": "c"}'.encode("utf-16-le"), None),
    ]
    for data, headers in cases:
        d = envelope.decode(data, headers)
        assert indexer.fields_of(data, headers) == (
            d.message_id, d.correlation_id, d.causation_id, d.message_type, d.sender_name,
            d.timestamp), data


def test_a_step_never_comes_before_its_cause():
    """Clocks differ (stream time, a publisher's time): a reply 1 ms 'older' than its cause."""
    t0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    row = dict(subject="s", correlation_id="c-skew", indexed_at=t0)
    EnvelopeRecord.objects.bulk_create([
        EnvelopeRecord(stream="COMMANDS", seq=7, message_id="a", at=t0, **row),
        EnvelopeRecord(stream="DOMAIN_EVENTS", message_id="b", causation_id="a",
                       at=t0 - timedelta(milliseconds=1), **row),
        EnvelopeRecord(stream="AGENT_COORDINATION", seq=3, message_id="c", causation_id="gone",
                       at=t0 + timedelta(milliseconds=12), **row),
        EnvelopeRecord(stream="COMMANDS", seq=9, message_id="gone", correlation_id="c-elsewhere",
                       subject="s", at=t0, indexed_at=t0)])
    steps = trace("c-skew")["steps"]
    assert [s["message_id"] for s in steps] == ["a", "b", "c"]
    assert [s["gap"] for s in steps] == ["", "-1.0 ms", "+13 ms"]
    assert steps[2]["cause_missing"] and steps[2]["cause_elsewhere"] == "c-elsewhere"


def test_bad_input_gives_a_clear_error(viewer_client):
    with pytest.raises(ActionError, match="give a correlation id"):
        trace("  ")
    with pytest.raises(ActionError, match="at most 256 characters"):
        trace("x" * 300)
    with pytest.raises(ActionError, match="limit must be a number"):
        trace("c", limit="many")
    page = viewer_client.get("/trace/?correlation_id=")
    assert page.status_code == 400 and b"give a correlation id" in page.content
    page = viewer_client.get(f"/trace/{'x' * 300}/")
    assert page.status_code == 400 and b"at most 256 characters" in page.content
    api = viewer_client.get(f"/api/v1/trace/{'x' * 300}/")
    assert api.status_code == 400 and "at most 256" in api.json()["error"]
    assert viewer_client.get("/api/v1/trace/c/?limit=many").status_code == 400
    assert viewer_client.post("/trace/").status_code == 405


def test_the_page_escapes_names_from_subjects_and_payloads(viewer_client, fresh_server, monkeypatch):
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    cid = 'corr-"<b>x</b>'

    async def setup():
        nc = await bus(fresh_server.url)
        await topology.apply(nc)
        async with indexing(nc):
            await _flow(nc, cid, job_type=XSS, job_subject="lucent.agents.<script>.x")
            await _until(lambda: _count(correlation_id=cid) == 4)
        await dl_index.reindex(nc)
        await nc.close()

    run(setup())
    search = viewer_client.get("/trace/", {"correlation_id": cid})
    assert search.status_code == 302 and search["Location"] == reverse("traces:detail", args=[cid])
    page = viewer_client.get(search["Location"])
    html = page.content.decode()
    assert page.status_code == 200 and html.count('id="step-') == 4
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "lucent.agents.&lt;script&gt;.x" in html
    assert "<script>alert" not in html and "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html
    assert "caused by" in html and "copy of" in html and " ms" in html
    # The dead letter's page links its correlation id to the trace.
    letter = DeadLetter.objects.get()
    detail = viewer_client.get(f"/deadletters/{letter.pk}/").content.decode()
    assert f'href="{reverse("traces:detail", args=[cid])}"' in detail
    assert "<b>x</b>" not in detail
    listing = viewer_client.get("/trace/").content.decode()
    assert "&lt;b&gt;x&lt;/b&gt;" in listing and "<b>x</b>" not in listing


def test_viewer_reads_the_api_and_anonymous_may_not(client, users):
    t0 = datetime.now(UTC)
    EnvelopeRecord.objects.create(stream="COMMANDS", seq=1, subject="lucent.commands.a",
                                  message_id="m1", correlation_id="c-api", message_type="A",
                                  at=t0, indexed_at=t0)
    assert client.get("/trace/c-api/").status_code == 302
    assert client.get("/trace/c-api/")["Location"].startswith("/login/")
    assert client.get("/api/v1/trace/c-api/").status_code in (401, 403)
    client.force_login(users["viewer"])
    body = client.get("/api/v1/trace/c-api/").json()
    assert body["count"] == 1 and body["steps"][0]["message_type"] == "A"
    assert body["steps"][0]["at"] == t0.isoformat() and body["truncated"] is False
    assert client.get("/trace/c-api/").status_code == 200
    assert client.get("/api/v1/trace/nothing-here/").json()["count"] == 0


def test_prune_removes_rows_older_than_the_retention():
    now = datetime.now(UTC)
    EnvelopeRecord.objects.bulk_create([
        EnvelopeRecord(stream="COMMANDS", seq=i, subject="s", correlation_id="c", at=now,
                       indexed_at=now - timedelta(days=10 if i < 7 else 1)) for i in range(10)])
    assert indexer.prune(days=7, chunk=3) == 7
    assert sorted(EnvelopeRecord.objects.values_list("seq", flat=True)) == [7, 8, 9]
    assert tasks.prune_traces() is False  # LUCENT_TRACE_DAYS (7): nothing more to do


def test_a_bad_retention_setting_is_refused_clearly(tmp_path):
    def setup(days: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "LUCENT_TRACE_DAYS": days, "LUCENT_VAR_DIR": str(tmp_path),
               "DJANGO_SETTINGS_MODULE": "lucent_console.settings"}
        return subprocess.run([sys.executable, "-c", "import django; django.setup()"],
                              env=env, capture_output=True, text=True)

    assert "LUCENT_TRACE_DAYS='a week' is not an integer" in setup("a week").stderr
    assert "LUCENT_TRACE_DAYS=0 must be at least 1" in setup("0").stderr
    assert setup("30").returncode == 0


def test_the_message_browser_links_each_correlation_to_its_trace(viewer_client, collector):
    async def publish():
        nc = await bus(collector.url)
        await topology.apply(nc)
        cmd = envelope.make("ExecuteTrade", "lucent.commands.trading.execute", {},
                            correlation_id="c-link")
        await _publish(nc, cmd, stream=False)
        await nc.close()

    run(publish())
    collector.wait_for(lambda s: (s["streams"].get("COMMANDS") or {}).get("messages") == 1)
    messages = viewer_client.get("/streams/COMMANDS/messages/?seq=1").content.decode()
    assert 'href="/trace/c-link/"' in messages and "correlation c-link" in messages
    # A trace's link to a stream message opens the stream page reading from it.
    page = viewer_client.get("/streams/COMMANDS/?seq=1").content.decode()
    assert 'hx-trigger="submit, load"' in page and 'name="seq" inputmode="numeric"' in page
    assert 'value="1"' in page


@pytest.mark.collector_without_trace_index  # "the indexer is down" below: the collector's too
def test_metrics_say_how_far_the_index_is_behind_each_stream(client, collector):
    async def publish():
        nc = await bus(collector.url)
        await topology.apply(nc)
        async with indexing(nc):
            for i in range(5):
                job = envelope.make("Assess", f"lucent.agents.risk.assessment.{i}", {})
                await nc.jetstream().publish(job["subject"], envelope.encode(job))
            await _until(lambda: _count(stream="AGENT_COORDINATION") == 5)
        for i in range(3):  # the indexer is down
            await nc.jetstream().publish(f"lucent.agents.risk.assessment.{i}", b"{}")
        await nc.close()

    run(publish())
    collector.wait_for(lambda s: (s["streams"].get("AGENT_COORDINATION") or {}).get("last_seq") == 8)
    text = client.get("/metrics").content.decode()
    assert 'lucent_trace_index_lag{stream="AGENT_COORDINATION"} 3' in text
    assert 'lucent_trace_index_lag{stream="COMMANDS"} 0' in text
