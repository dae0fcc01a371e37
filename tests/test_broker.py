"""The embedded Celery broker (lucent_console/broker.py): kombu's filesystem transport
with an atomic writer. Stock kombu 5.7 lets a reader take a message file before its
writer has written it (the worker read it empty and stopped, seen on `make run`). The
race itself is too narrow to reproduce on demand; the tests hold what the fix promises: many writers against a
reader lose and double nothing and leave no partial file, and an empty message file
(what stock kombu's reader met) is kept aside and counted while the next one is read.
The exchange tables: writers in threads of one process lost their first messages
(kombu noted the binding before writing it), and processes binding at once emptied
each other's table (stock kombu creates it with "wb")."""

from __future__ import annotations

import multiprocessing
import threading
import time

from kombu import Connection, Exchange, Queue

from lucent_console import broker

WRITERS, EACH = 3, 700


def _options(tmp_path) -> dict:
    for sub in ("queue", "processed"):
        (tmp_path / sub).mkdir()
    return {"data_folder_in": str(tmp_path / "queue"), "data_folder_out": str(tmp_path / "queue"),
            "processed_folder": str(tmp_path / "processed"), "store_processed": False,
            "control_folder": str(tmp_path / "control")}


def test_writers_racing_a_reader_lose_and_double_nothing(tmp_path):
    options = _options(tmp_path)

    def write(writer: int) -> None:
        with Connection(transport=broker.Transport, transport_options=options) as conn:
            queue = conn.SimpleQueue("race")
            for i in range(EACH):
                queue.put({"writer": writer, "i": i})

    threads = [threading.Thread(target=write, args=(w,), daemon=True) for w in range(WRITERS)]
    for t in threads:
        t.start()
    got = []
    with Connection(transport=broker.Transport, transport_options=options) as conn:
        queue = conn.SimpleQueue("race")
        deadline = time.monotonic() + 120
        while len(got) < WRITERS * EACH and time.monotonic() < deadline:
            try:
                message = queue.get(timeout=1)
            except queue.Empty:
                if not any(t.is_alive() for t in threads):
                    break
                continue
            got.append((message.payload["writer"], message.payload["i"]))
            message.ack()
    assert len(got) == WRITERS * EACH  # nothing lost
    assert len(set(got)) == len(got)  # nothing doubled
    assert not list((tmp_path / "queue").iterdir())  # no .part left behind
    assert not list((tmp_path / "processed").iterdir())


def _bind(options: dict, queue: str, start) -> None:
    start.wait()
    with Connection(transport=broker.Transport, transport_options=options) as conn:
        Queue(queue, Exchange("shared", "direct"), routing_key=queue)(conn.default_channel).declare()


def test_processes_binding_one_exchange_at_once_all_stay_in_its_table(tmp_path):
    from kombu.utils.json import loads

    options = _options(tmp_path)
    context = multiprocessing.get_context("fork")
    for round_ in range(5):
        start = context.Event()
        names = [f"q{round_}-{i}" for i in range(6)]
        procs = [context.Process(target=_bind, args=(options, n, start)) for n in names]
        for p in procs:
            p.start()
        start.set()
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
        table = loads((tmp_path / "control" / "shared.exchange").read_text())
        assert set(names) <= {q for _key, _pattern, q in table}


def test_an_unreadable_message_is_kept_and_counted_and_the_next_one_is_read(tmp_path, db):
    from kernel.models import Quarantined

    options = _options(tmp_path)
    (tmp_path / "queue" / "0_x.poison.msg").write_bytes(b"")  # what a dying writer leaves; sorts first
    with Connection(transport=broker.Transport, transport_options=options) as conn:
        queue = conn.SimpleQueue("poison")
        queue.put({"after": True})
        message = queue.get(timeout=5)
        assert message.payload == {"after": True}
        message.ack()
    kept = Quarantined.objects.get(pipeline="celery-broker")
    assert kept.stream == "poison" and kept.subject == "0_x.poison.msg" and kept.payload_size == 0
    assert [p.name for p in (tmp_path / "processed").iterdir()] == ["0_x.poison.msg.bad"]


def test_celery_uses_it_when_there_is_no_redis(settings):
    import pytest

    from lucent_console.celery import app

    if settings.CELERY_BROKER_URL != "lucentfs://":
        pytest.skip("REDIS_URL is set: Redis is the broker")
    with app.connection_for_write() as conn:
        assert isinstance(conn.transport, broker.Transport)
