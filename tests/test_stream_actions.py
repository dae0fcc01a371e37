"""Purge and delete: admin only, audited, and a refused or bad action changes nothing."""

import pytest

from kernel.models import AuditRecord
from lucent_bus import jetstream as js

from .conftest import bus, run

pytestmark = pytest.mark.django_db


async def _fill(url):
    nc = await bus(url)
    await js.add_stream(nc, {"name": "JOBS", "subjects": ["jobs.>"], "storage": "file"})
    jsn = nc.jetstream()
    for i in range(10):
        await jsn.publish(f"jobs.{'a' if i < 6 else 'b'}", str(i).encode())
    await nc.close()


async def _state(url):
    nc = await bus(url)
    info = await js.stream_info(nc, "JOBS")
    await nc.close()
    return info["state"]


@pytest.fixture
def jobs(collector):
    run(_fill(collector.url))
    collector.wait_for(lambda s: s["streams"].get("JOBS", {}).get("messages") == 10)
    return collector


def _as(client, users, role):
    client.force_login(users[role])
    return client


@pytest.mark.parametrize("role", ["viewer", "operator", "nobody"])
def test_purge_and_delete_are_refused_below_admin(client, users, jobs, role):
    c = _as(client, users, role)
    assert c.post("/api/v1/streams/JOBS/purge/", {}, content_type="application/json").status_code == 403
    assert c.delete("/api/v1/streams/JOBS/messages/3/").status_code == 403
    assert c.post("/streams/JOBS/purge/", {"confirm": "JOBS"}).status_code == 403
    assert c.post("/streams/JOBS/purge/preview/", {}).status_code == 403
    assert c.post("/streams/JOBS/delete/", {"confirm": "JOBS", "seq": "3"}).status_code == 403
    state = run(_state(jobs.url))
    assert state["messages"] == 10 and state.get("num_deleted", 0) == 0
    refused = AuditRecord.objects.filter(outcome="refused", username=role)
    if role == "nobody":  # refused before the service layer (no role), each attempt audited
        assert refused.count() == 5 and all(r.detail == "This needs the viewer role." for r in refused)
        return
    assert refused.count() == 4 and {r.action for r in refused} == {"stream.purge", "stream.delete_message"}


def test_admin_purges_by_subject_and_keep_and_it_is_audited(client, users, jobs):
    c = _as(client, users, "admin")
    r = c.post("/api/v1/streams/JOBS/purge/", {"subject": "jobs.b"}, content_type="application/json")
    assert r.status_code == 200 and r.json()["purged"] == 4
    assert run(_state(jobs.url))["messages"] == 6
    r = c.post("/api/v1/streams/JOBS/purge/", {"keep": 2}, content_type="application/json")
    assert r.json()["purged"] == 4
    assert run(_state(jobs.url))["messages"] == 2
    records = list(AuditRecord.objects.filter(action="stream.purge").order_by("id"))
    assert [(r.outcome, r.parameters, r.detail) for r in records] == [
        ("ok", {"subject": "jobs.b"}, "purged 4"), ("ok", {"keep": 2}, "purged 4")]
    assert records[0].username == "admin" and records[0].target == "JOBS"


def test_admin_purges_up_to_a_sequence_after_a_confirmation_naming_the_count(client, users, jobs):
    c = _as(client, users, "admin")
    preview = c.post("/streams/JOBS/purge/preview/", {"seq": "5"}).content.decode()
    assert "Purge 4 messages from JOBS (below sequence 5)" in preview
    unconfirmed = c.post("/streams/JOBS/purge/", {"seq": "5"})
    assert unconfirmed.status_code == 400 and run(_state(jobs.url))["messages"] == 10
    done = c.post("/streams/JOBS/purge/", {"seq": "5", "confirm": "JOBS"})
    assert done.status_code == 200 and "Purged 4 messages from JOBS" in done.content.decode()
    assert run(_state(jobs.url))["first_seq"] == 5


def test_admin_deletes_one_message(client, users, jobs):
    c = _as(client, users, "admin")
    assert c.delete("/api/v1/streams/JOBS/messages/3/").status_code == 200
    state = run(_state(jobs.url))
    assert state["messages"] == 9 and state["num_deleted"] == 1
    again = c.delete("/api/v1/streams/JOBS/messages/3/")
    assert again.status_code == 400 and "no message 3" in again.json()["error"]
    assert AuditRecord.objects.filter(action="stream.delete_message", outcome="ok").count() == 1
    assert AuditRecord.objects.filter(action="stream.delete_message", outcome="failed").count() == 1


@pytest.mark.parametrize("body,status,message", [
    ({"subject": "jobs..x"}, 400, "not a valid subject"),
    ({"seq": -1}, 400, "at least 1"),
    ({"seq": "ten"}, 400, "whole number"),
    ({"keep": 1, "seq": 3}, 400, "not both"),
])
def test_bad_purge_input_is_a_clear_error_and_changes_nothing(client, users, jobs, body, status,
                                                              message):
    c = _as(client, users, "admin")
    r = c.post("/api/v1/streams/JOBS/purge/", body, content_type="application/json")
    assert r.status_code == status and message in r.json()["error"]
    assert run(_state(jobs.url))["messages"] == 10
    assert AuditRecord.objects.get(action="stream.purge").outcome == "failed"


def test_unknown_streams_and_bad_sequences_are_refused_clearly(client, users, jobs):
    c = _as(client, users, "admin")
    r = c.post("/api/v1/streams/NOPE/purge/", {"all": True}, content_type="application/json")
    assert r.status_code == 404 and "no stream named 'NOPE'" in r.json()["error"]
    assert c.delete("/api/v1/streams/JOBS/messages/abc/").status_code == 400
    assert c.delete("/api/v1/streams/JOBS/messages/0/").status_code == 400
    assert run(_state(jobs.url))["messages"] == 10


def test_wrong_methods_are_refused(client, users, jobs):
    c = _as(client, users, "admin")
    assert c.get("/api/v1/streams/JOBS/purge/").status_code == 405
    assert c.get("/streams/JOBS/purge/").status_code == 405
    assert c.get("/streams/JOBS/delete/").status_code == 405
    assert c.post("/api/v1/streams/JOBS/messages/3/").status_code == 405
    assert run(_state(jobs.url))["messages"] == 10


def test_the_audit_is_listed_in_the_api_and_page(client, users, jobs):
    _as(client, users, "viewer").post("/api/v1/streams/JOBS/purge/", {}, content_type="application/json")
    rows = client.get("/api/v1/audit/").json()["results"]
    assert rows[0]["action"] == "stream.purge" and rows[0]["outcome"] == "refused"
    for key in ("id", "user", "action", "target", "parameters", "outcome", "at"):
        assert key in rows[0]
    assert "stream.purge" in client.get("/audit/").content.decode()
