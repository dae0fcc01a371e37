"""Acting on the bus in a storm (issue 15 under issue 11's rules): a frozen or crashed
nats-server while operators publish, pause consumers or read the servers pages.

Each test injects the fault against a real nats-server and asserts what was lost
(nothing), what was doubled (nothing) and how long the console took to answer or
recover (printed; docs/RELIABILITY.md keeps the figures).
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager

import pytest

from kernel.models import AuditRecord
from lucent_bus import embedded
from lucent_bus import jetstream as js
from lucent_bus import kv as bus_kv
from servers import overview

from .conftest import bus, run
from .support import crash_and_restart, freeze, thaw, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.suite("faults")]
SECOND = 1_000_000_000


def _setup(url: str) -> None:
    async def go():
        nc = await bus(url)
        try:
            await js.add_stream(nc, {"name": "OPS", "subjects": ["ops.>"], "storage": "file",
                                     "duplicate_window": 120 * SECOND})
            await js.add_consumer(nc, "OPS", {"durable_name": "worker", "ack_policy": "explicit"})
        finally:
            await nc.close()

    run(go())


def _messages(url: str) -> list[dict]:
    async def go():
        nc = await bus(url)
        try:
            info = await js.stream_info(nc, "OPS")
            out = []
            for seq in range(info["state"]["first_seq"], info["state"]["last_seq"] + 1):
                msg = await js.next_message(nc, "OPS", seq)
                if msg is not None and msg["seq"] == seq:
                    out.append(msg)
            return out
        finally:
            await nc.close()

    return run(go())


@pytest.fixture
def ops_bus(fresh_server, monkeypatch, client, users):
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    _setup(fresh_server.url)
    client.force_login(users["admin"])
    return fresh_server


@contextmanager
def _frozen_after(monkeypatch, module, name: str, server):
    """Within the block, the real ``module.name`` runs and then ``server`` is frozen
    (SIGSTOP): the next bus call of the action is on the wire to a frozen server. The
    server is thawed and the function restored afterwards."""
    real = getattr(module, name)

    async def then_freeze(*args, **kwargs):
        result = await real(*args, **kwargs)
        freeze(server)
        return result

    monkeypatch.setattr(module, name, then_freeze)
    try:
        yield
    finally:
        thaw(server)
        monkeypatch.setattr(module, name, real)


def _publish(client, msg_id: str, timeout_ms: int = 1000):
    return client.post("/api/v1/publish/", {"subject": "ops.orders", "payload": "buy 1",
                                            "headers": {"Nats-Msg-Id": msg_id},
                                            "timeout_ms": timeout_ms},
                       content_type="application/json")


def test_a_publish_into_a_frozen_bus_fails_clearly_and_its_retry_stores_it_once(client, ops_bus):
    assert _publish(client, "warm-up").status_code == 200
    freeze(ops_bus)
    try:
        started = time.monotonic()
        frozen = _publish(client, "op-1")
        answered_s = time.monotonic() - started
    finally:
        thaw(ops_bus)
    assert frozen.status_code == 400, frozen.content  # an error, not a hang or a 500
    assert AuditRecord.objects.filter(action="bus.publish", outcome="failed").exists()
    # The operator retries with the same Nats-Msg-Id until the bus takes it.
    thawed = time.monotonic()
    wait_until(lambda: _publish(client, "op-1").status_code == 200, timeout=30,
               what="the retried publish is stored", every=0.5)
    recovered_s = time.monotonic() - thawed
    ids = [m["headers"].get("Nats-Msg-Id") for m in _messages(ops_bus.url)]
    assert ids.count("op-1") == 1 and ids.count("warm-up") == 1  # nothing lost, nothing doubled
    print(f"frozen publish answered in {answered_s:.1f}s; stored {recovered_s:.1f}s after SIGCONT")


def test_a_publish_frozen_on_the_wire_is_recorded_unknown_and_its_retry_is_kept_once(
        client, ops_bus, monkeypatch):
    """The stream was found, then the server froze with the message on the wire: no PubAck
    comes. The answer says the outcome is unknown (not "nothing was done"), the audit
    records ``unknown``, and the retry with the same Nats-Msg-Id that the answer advises
    is kept once by the stream."""
    with _frozen_after(monkeypatch, js, "streams_storing", ops_bus):
        started = time.monotonic()
        frozen = _publish(client, "wire-1")
        answered_s = time.monotonic() - started
    assert frozen.status_code == 400 and "may still be stored" in frozen.json()["error"]
    record = AuditRecord.objects.get(action="bus.publish", outcome="unknown")
    assert "same Nats-Msg-Id" in record.detail
    assert _publish(client, "wire-1").status_code == 200  # as the answer says
    ids = [m["headers"].get("Nats-Msg-Id") for m in _messages(ops_bus.url)]
    assert ids.count("wire-1") == 1  # stored on SIGCONT, its retry deduplicated: once
    print(f"publish frozen on the wire answered in {answered_s:.1f}s (recorded unknown); "
          "its retry kept once")


def test_a_paused_consumer_stays_paused_through_a_server_crash_and_resumes_once(client, ops_bus):
    paused = client.post("/api/v1/streams/OPS/consumers/worker/pause/", {"seconds": 600},
                         content_type="application/json")
    assert paused.status_code == 200, paused.content
    crash_and_restart(ops_bus)
    restarted = time.monotonic()

    def row():
        answer = client.get("/api/v1/streams/OPS/consumers/worker/")
        return answer.json() if answer.status_code == 200 else None

    after = wait_until(row, timeout=30, what="the consumer is readable again", every=0.25)
    recovered_s = time.monotonic() - restarted
    assert after["paused"] is True and after["pause_until"]  # the server kept the pause
    resumed = client.post("/api/v1/streams/OPS/consumers/worker/resume/", {},
                          content_type="application/json")
    assert resumed.status_code == 200, resumed.content
    assert row()["paused"] is False
    actions = list(AuditRecord.objects.filter(target__contains="worker", outcome="ok")
                   .values_list("action", flat=True))
    assert sorted(actions) == sorted(set(actions)) and len(actions) == 2  # one each, no repeats
    print(f"consumer readable {recovered_s:.1f}s after the restart, still paused")


def test_the_servers_page_answers_while_the_monitoring_port_is_frozen(client, users, tmp_path,
                                                                       monkeypatch):
    port, monitor = embedded.free_port(), embedded.free_port()
    args = embedded.server_args(port, tmp_path / "js") + ["-m", str(monitor)]
    server = embedded.Server(port, tmp_path / "js", args, tmp_path / "nats.log").start().wait()
    monkeypatch.setenv("NATS_URL", server.url)
    monkeypatch.setenv("LUCENT_NATS_MONITOR_URLS", f"http://127.0.0.1:{monitor}")
    monkeypatch.setenv("LUCENT_MONITOR_TIMEOUT_S", "1")
    client.force_login(users["viewer"])
    try:
        wait_until(lambda: client.get("/api/v1/servers/").status_code == 200, timeout=15,
                   what="the servers API answers")
        freeze(server)
        try:
            # Open pages share an answer for FRESH_S: the last one, from before the freeze,
            # is shown that long at most.
            time.sleep(overview.FRESH_S)
            started = time.monotonic()
            frozen = client.get("/api/v1/servers/")
            page = client.get("/servers/")
            answered_s = time.monotonic() - started
        finally:
            thaw(server)
        assert frozen.status_code == 503 and "no answer" in frozen.json()["error"]
        assert page.status_code == 200 and "no answer" in page.content.decode()
        thawed = time.monotonic()
        wait_until(lambda: client.get("/api/v1/servers/").status_code == 200, timeout=15,
                   what="the servers API answers again", every=0.25)
        print(f"frozen monitor: API and page answered in {answered_s:.1f}s; "
              f"whole {time.monotonic() - thawed:.1f}s after SIGCONT")
    finally:
        server.stop()



def _kv_history(url: str, bucket: str, key: str) -> list[bytes]:
    """Every stored revision's value of ``key``, oldest first (a repeat = a double)."""

    async def go():
        nc = await bus(url)
        try:
            return [m["data"] for m in await bus_kv.history(nc, bucket, key, 1)]
        finally:
            await nc.close()

    return run(go())


def test_a_kv_put_into_a_frozen_bus_fails_clearly_and_its_value_is_stored_once(
        client, ops_bus, users, monkeypatch):
    """Two freezes: before the request (the bucket check times out, nothing is sent), and
    with the put itself on the wire (its PubAck never comes: outcome unknown, the server
    stores it when it wakes). Each answers in bounded time and is audited with the reason
    (``failed`` when nothing was sent, ``unknown`` when the server may still store it), and
    no value is stored twice."""

    async def make_bucket():
        nc = await bus(ops_bus.url)
        try:
            await nc.jetstream().create_key_value(bucket="CONFIG", history=10)
        finally:
            await nc.close()

    run(make_bucket())
    client.force_login(users["operator"])
    url = "/api/v1/kv/CONFIG/keys/feature.flag/"

    def put(value: str):
        return client.put(url, json.dumps({"value": value}), content_type="application/json")

    def puts(outcome: str) -> list[str]:
        return list(AuditRecord.objects.filter(action="kv.put", target="CONFIG/feature.flag",
                                               outcome=outcome).order_by("id")
                    .values_list("detail", flat=True))

    assert put("v1").status_code == 200
    # 1. Frozen before the request: the bucket check (STREAM.INFO) gets no answer.
    freeze(ops_bus)
    try:
        started = time.monotonic()
        frozen = put("v2")
        before_s = time.monotonic() - started
    finally:
        thaw(ops_bus)
    assert frozen.status_code == 503, frozen.content  # the bus away, not a hang or a 500
    said = "the bus could not answer: JetStream API STREAM.INFO.KV_CONFIG timed out after 5.0s"
    assert frozen.json()["error"] == said
    assert puts("failed") == [said]
    thawed = time.monotonic()
    wait_until(lambda: put("v2").status_code == 200, timeout=30, every=0.5,
               what="the retried put is stored")
    retried_s = time.monotonic() - thawed
    assert _kv_history(ops_bus.url, "CONFIG", "feature.flag") == [b"v1", b"v2"]  # v2 once

    # 2. Frozen with the put on the wire: the bucket check answered, the PubAck never does.
    with _frozen_after(monkeypatch, bus_kv, "bucket_info", ops_bus):
        started = time.monotonic()
        frozen = put("v3")
        in_flight_s = time.monotonic() - started
    unknown = ("the bus did not confirm in time: the message may still be stored when it "
               "answers: look at the key's history before trying again")
    assert frozen.status_code == 400 and frozen.json()["error"] == unknown, frozen.content
    assert puts("unknown") == [unknown] and puts("failed") == [said]
    # The operator does what the answer says: reads the key, puts again only if v3 is not there.
    current = wait_until(lambda: (r := client.get(url)).status_code == 200 and r.json(),
                         timeout=30, every=0.25, what="the key is readable again")
    if current["value"] != "v3":
        assert put("v3").status_code == 200
    history = _kv_history(ops_bus.url, "CONFIG", "feature.flag")
    assert history[:2] == [b"v1", b"v2"] and history.count(b"v3") == 1  # never doubled
    assert len(history) == 3
    assert put("v4").status_code == 200  # and the bus takes puts as before
    assert _kv_history(ops_bus.url, "CONFIG", "feature.flag") == [b"v1", b"v2", b"v3", b"v4"]
    print(f"\nfrozen kv put answered in {before_s:.1f}s (bucket check, nothing sent; retry "
          f"stored {retried_s:.1f}s after SIGCONT) and {in_flight_s:.1f}s (put in flight: "
          f"{'stored by the server on SIGCONT' if current['value'] == 'v3' else 'not stored; retried'}"
          f", once)")


def test_two_operators_editing_one_key_from_the_same_read_store_one_edit(ops_bus, users):
    """Two people edit the value they both read (revision N) and save at the same moment:
    the server stores the first and refuses the second (409, nothing stored, audited), so
    neither edit silently undoes the other; the one refused says which revision won."""
    import threading

    from django.test import Client

    async def make_bucket():
        nc = await bus(ops_bus.url)
        try:
            kv = await nc.jetstream().create_key_value(bucket="SHARED", history=10)
            await kv.put("limits.max", b"10")
        finally:
            await nc.close()

    run(make_bucket())
    url = "/api/v1/kv/SHARED/keys/limits.max/"
    clients = {}
    for role in ("operator", "admin"):
        clients[role] = Client()
        clients[role].force_login(users[role])
    read = clients["operator"].get(url).json()["revision"]
    start, answers = threading.Barrier(2), {}

    def save(role: str, value: str) -> None:
        start.wait()
        answers[role] = clients[role].put(url, json.dumps({"value": value, "revision": read}),
                                          content_type="application/json")

    threads = [threading.Thread(target=save, args=(r, v)) for r, v in
               (("operator", "20"), ("admin", "30"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    codes = sorted(a.status_code for a in answers.values())
    assert codes == [200, 409], {r: a.content for r, a in answers.items()}
    won = next(r for r, a in answers.items() if a.status_code == 200)
    lost = next(r for r, a in answers.items() if a.status_code == 409)
    stored = answers[won].json()["revision"]
    assert f"revision {stored} is the latest" in answers[lost].json()["error"]
    history = _kv_history(ops_bus.url, "SHARED", "limits.max")
    assert history == [b"10", {"operator": b"20", "admin": b"30"}[won]]  # one edit, none lost silently
    outcomes = dict(AuditRecord.objects.filter(action="kv.put", target="SHARED/limits.max")
                    .values_list("username", "outcome"))
    assert outcomes == {won: "ok", lost: "failed"}
