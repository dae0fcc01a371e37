"""Replay a range of any stream to a subject, exactly once, as an operator."""

import pytest

from kernel.models import AuditRecord, Job
from lucent_bus import jetstream as js

from .conftest import bus, run

pytestmark = pytest.mark.django_db(transaction=True)


async def _setup(url):
    nc = await bus(url)
    await js.add_stream(nc, {"name": "EVENTS", "subjects": ["events.>"], "storage": "file"})
    await js.add_stream(nc, {"name": "PROJ", "subjects": ["proj.>"], "storage": "file",
                             "duplicate_window": 60 * 10**9})
    for i in range(1, 21):
        await nc.jetstream().publish(f"events.{'a' if i % 2 else 'b'}", str(i).encode(),
                                     headers={"X-I": str(i)})
    await nc.close()


async def _proj(url):
    nc = await bus(url)
    info = await js.stream_info(nc, "PROJ")
    first = await js.next_message(nc, "PROJ", 1) if info["state"]["messages"] else None
    await nc.close()
    return info["state"]["messages"], first


@pytest.fixture
def events(fresh_server, monkeypatch, users):
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    run(_setup(fresh_server.url))
    return fresh_server.url


def test_an_operator_replays_a_range_once_even_twice(client, users, events):
    client.force_login(users["operator"])
    body = {"target": "proj.rebuild", "start_seq": 5, "end_seq": 14}
    dry = client.post("/api/v1/streams/EVENTS/replay/", {**body, "dry_run": True},
                      content_type="application/json").json()
    assert dry["dry_run"] is True and dry["matched"] == 10 and run(_proj(events))[0] == 0
    first = client.post("/api/v1/streams/EVENTS/replay/", body, content_type="application/json").json()
    assert first["matched"] == 10
    job = Job.objects.get(pk=first["job"])
    assert (job.state, job.done, job.failed) == ("done", 10, 0)
    count, msg = run(_proj(events))
    assert count == 10 and msg["data"] == b"5" and msg["headers"]["X-I"] == "5"
    client.post("/api/v1/streams/EVENTS/replay/", body, content_type="application/json")
    assert run(_proj(events))[0] == 10  # the same range again: deduplicated
    only_a = client.post("/api/v1/streams/EVENTS/replay/", {"target": "proj.a", "subject": "events.a"},
                         content_type="application/json").json()
    assert Job.objects.get(pk=only_a["job"]).done == 10
    assert AuditRecord.objects.filter(action="stream.replay", outcome="ok").count() == 4


def test_replay_refuses_bad_targets_and_viewers(client, users, events):
    client.force_login(users["operator"])
    r = client.post("/api/v1/streams/EVENTS/replay/", {"target": "nowhere.x"},
                    content_type="application/json")
    assert r.status_code == 400 and "no stream stores" in r.json()["error"]
    r = client.post("/api/v1/streams/EVENTS/replay/", {"target": "events.again"},
                    content_type="application/json")
    assert r.status_code == 400 and "stores 'events.again' itself" in r.json()["error"]
    assert client.post("/api/v1/streams/NOPE/replay/", {"target": "proj.x"},
                       content_type="application/json").status_code == 404
    client.force_login(users["viewer"])
    r = client.post("/api/v1/streams/EVENTS/replay/", {"target": "proj.x"}, content_type="application/json")
    assert r.status_code == 403
    assert run(_proj(events))[0] == 0 and Job.objects.count() == 0


def test_the_stream_page_offers_replay_with_a_confirmation(client, users, events, collector):
    client.force_login(users["operator"])
    collector.wait_for(lambda s: "EVENTS" in s["streams"])
    page = client.get("/streams/EVENTS/").content.decode()
    assert "Replay to a subject" in page
    confirm = client.post("/streams/EVENTS/replay/", {"target": "proj.page", "start_seq": "19"})
    assert "Replay 2 messages of EVENTS (sequences 19–20)" in confirm.content.decode()
    done = client.post("/streams/EVENTS/replay/", {"target": "proj.page", "start_seq": "19",
                                                  "confirm": "1"})
    assert "2 done" in done.content.decode()
