"""Operating consumers: pause/resume, reset, create/edit/delete, the console's own ones,
roles and audit; against the pinned server and against Debian's nats-server 2.9."""

import html
import json
import re
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.core.cache import cache
from django.core.management import call_command

from kernel.models import AuditRecord
from lucent_bus import jetstream as js

from .conftest import bus, run

pytestmark = pytest.mark.django_db
API = "/api/v1/streams"


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _name(prefix="C"):
    return f"{prefix}{uuid.uuid4().hex[:8].upper()}"


async def _setup(url, stream, count=10, retention="limits", consumer="work", **cfg):
    nc = await bus(url)
    try:
        await js.add_stream(nc, {"name": stream, "subjects": [f"{stream.lower()}.>"],
                                 "storage": "memory", "retention": retention})
        for i in range(count):
            await js.publish(nc, f"{stream.lower()}.x", str(i + 1).encode())
        await js.add_consumer(nc, stream, {"durable_name": consumer, "ack_policy": "explicit",
                                           "max_deliver": 5, **cfg})
    finally:
        await nc.close()


async def _info(url, stream, consumer):
    nc = await bus(url)
    try:
        return await js.consumer_info(nc, stream, consumer)
    finally:
        await nc.close()


async def _fetch_acked(url, stream, consumer, n):
    """Pull n messages, ack them, return their payloads as ints."""
    nc = await bus(url)
    try:
        sub = await nc.jetstream().pull_subscribe_bind(consumer, stream)
        got = []
        for m in await sub.fetch(n, timeout=3):
            got.append(int(m.data))
            await m.ack_sync()
        return got
    finally:
        await nc.close()


def _post(client, path, body, method="post"):
    return getattr(client, method)(path, json.dumps(body), content_type="application/json")


def _as(client, users, role):
    client.force_login(users[role])
    return client


# ---------------------------------------------------------------- pinned server

def test_pause_shows_in_info_and_api_rows_then_resume(client, users, collector):
    run(_setup(collector.url, "PAUSED", 3))
    c = _as(client, users, "operator")
    r = _post(c, f"{API}/PAUSED/consumers/work/pause/", {"seconds": 300})
    assert r.status_code == 200, r.content
    assert r.json()["paused"] is True and r.json()["pause_until"]
    info = run(_info(collector.url, "PAUSED", "work"))
    assert info["paused"] is True and info["pause_remaining"] > 0
    snap = collector.wait_for(lambda s: s["consumers"].get("PAUSED/work", {}).get("paused"))
    assert snap["consumers"]["PAUSED/work"]["pause_until"]
    rows = c.get(f"{API}/PAUSED/consumers/").json()
    assert rows[0]["paused"] is True and rows[0]["pause_until"].startswith(
        str(datetime.now(UTC).year))
    cache.clear()
    metrics = c.get("/metrics").content.decode()
    assert 'lucent_consumer_paused{stream_name="PAUSED",consumer_name="work"} 1' in metrics
    until = datetime.fromisoformat(rows[0]["pause_until"].replace("Z", "+00:00")).timestamp()
    exported = float(metrics.split('lucent_consumer_pause_until_timestamp_seconds{stream_name='
                                   '"PAUSED",consumer_name="work"} ')[1].split()[0])
    assert abs(exported - until) < 1 and 200 < exported - time.time() <= 300
    page = c.get("/streams/PAUSED/").content.decode()
    assert "paused, resumes" in page and ("in 4 min" in page or "in 5 min" in page)
    assert "Operate consumers" in page and "Resume…" in page and "Create a consumer" not in page
    r = _post(c, f"{API}/PAUSED/consumers/work/resume/", {})
    assert r.status_code == 200 and r.json() == {"stream": "PAUSED", "name": "work",
                                                 "paused": False, "pause_until": None}
    assert not run(_info(collector.url, "PAUSED", "work")).get("paused")
    collector.wait_for(lambda s: not s["consumers"]["PAUSED/work"]["paused"])
    assert c.get(f"{API}/PAUSED/consumers/").json()[0]["pause_until"] is None
    cache.clear()
    metrics = c.get("/metrics").content.decode()
    assert 'lucent_consumer_paused{stream_name="PAUSED",consumer_name="work"} 0' in metrics
    assert 'pause_until_timestamp_seconds{stream_name="PAUSED"' not in metrics
    actions = list(AuditRecord.objects.filter(target="PAUSED/work").order_by("pk")
                   .values_list("action", "outcome"))
    assert actions == [("consumer.pause", "ok"), ("consumer.resume", "ok")]


@pytest.mark.parametrize("body", [
    {}, {"seconds": -5}, {"seconds": 0}, {"seconds": 10, "until": "2099-01-01T00:00:00Z"},
    {"until": "2001-01-01T00:00:00Z"}, {"until": "not a time"}, {"seconds": 10, "bogus": 1},
    {"seconds": "ten"}, {"seconds": True}, [1, 2]])
def test_bad_pause_bodies_answer_400_and_change_nothing(client, users, nats_server, body):
    stream = _name("BADP")
    run(_setup(nats_server.url, stream, 1))
    r = _post(_as(client, users, "operator"), f"{API}/{stream}/consumers/work/pause/", body)
    assert r.status_code == 400, (body, r.content)
    assert "error" in r.json()
    assert not run(_info(nats_server.url, stream, "work")).get("paused")
    assert AuditRecord.objects.get(target__startswith=stream).outcome == "failed"


def test_missing_consumer_or_stream_is_404(client, users, nats_server):
    stream = _name("NF")
    run(_setup(nats_server.url, stream, 1))
    c = _as(client, users, "admin")
    assert _post(c, f"{API}/{stream}/consumers/nope/pause/", {"seconds": 5}).status_code == 404
    assert _post(c, f"{API}/{stream}/consumers/nope/reset/", {"seq": 1}).status_code == 404
    assert _post(c, f"{API}/NOSUCH{stream}/consumers/work/resume/", {}).status_code == 404
    assert c.delete(f"{API}/{stream}/consumers/nope/").status_code == 404
    assert _post(c, f"{API}/{stream}/consumers/nope/", {"description": "x"}, "put").status_code == 404


def test_reset_to_seq_and_to_time_redelivers_from_there(client, users, nats_server):
    stream = _name("RST")
    run(_setup(nats_server.url, stream, 10))
    assert run(_fetch_acked(nats_server.url, stream, "work", 10)) == list(range(1, 11))
    c = _as(client, users, "admin")
    r = _post(c, f"{API}/{stream}/consumers/work/reset/", {"seq": 4})
    assert r.status_code == 200, r.content
    assert r.json() == {"stream": stream, "name": "work", "seq": 4, "recreated": False}
    assert run(_fetch_acked(nats_server.url, stream, "work", 3)) == [4, 5, 6]

    cut = datetime.now(UTC)

    async def more():
        nc = await bus(nats_server.url)
        for i in range(11, 14):
            await js.publish(nc, f"{stream.lower()}.x", str(i).encode())
        await nc.close()

    run(more())
    r = _post(c, f"{API}/{stream}/consumers/work/reset/", {"time": cut.isoformat()})
    assert r.status_code == 200 and r.json()["seq"] == 11, r.content
    assert run(_fetch_acked(nats_server.url, stream, "work", 3)) == [11, 12, 13]
    # past the end, a future time, both, neither, a stranger field: 400, nothing changed
    before = run(_info(nats_server.url, stream, "work"))["delivered"]
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    for body in ({"seq": 99}, {"time": future}, {"seq": 1, "time": cut.isoformat()}, {},
                 {"seq": 2, "fast": True}, {"seq": 0}):
        assert _post(c, f"{API}/{stream}/consumers/work/reset/", body).status_code == 400, body
    assert run(_info(nats_server.url, stream, "work"))["delivered"] == before
    # an operator may not reset
    r = _post(_as(client, users, "operator"), f"{API}/{stream}/consumers/work/reset/", {"seq": 1})
    assert r.status_code == 403
    assert AuditRecord.objects.filter(action="consumer.reset", outcome="refused").count() == 1


def test_create_preview_edit_with_diff_and_delete(client, users, nats_server):
    stream = _name("CED")
    run(_setup(nats_server.url, stream, 2))
    c = _as(client, users, "admin")
    base = f"{API}/{stream}/consumers/"
    body = {"durable_name": "reader", "filter_subject": f"{stream.lower()}.x",
            "ack_wait": 10_000_000_000, "max_deliver": 3}
    r = _post(c, base, {**body, "dry_run": True})
    assert r.status_code == 200 and r.json()["applied"] is False
    assert r.json()["config"] == {"deliver_policy": "all", "ack_policy": "explicit",
                                  "name": "reader", **body}
    assert c.get(f"{base}reader/").status_code == 404  # a preview creates nothing
    r = _post(c, base, body)
    assert r.status_code == 200 and r.json()["applied"] is True, r.content
    assert _post(c, base, body).status_code == 400  # exists already
    info = run(_info(nats_server.url, stream, "reader"))
    assert info["config"]["max_deliver"] == 3 and info["num_pending"] == 2
    for bad in ({"durable_name": "x y"}, {"durable_name": "ok", "mystery": 1},
                {"durable_name": "ok", "ack_policy": "sometimes"},
                {"durable_name": "ok", "deliver_policy": "by_start_sequence"},
                {"durable_name": "ok", "backoff": [-1]}, {"description": "no name"}):
        assert _post(c, base, bad).status_code == 400, bad
    r = _post(c, f"{base}reader/", {"max_deliver": 7, "description": "edited", "dry_run": True},
              "put")
    assert r.status_code == 200, r.content
    assert r.json()["diff"] == [{"field": "description", "from": None, "to": "edited"},
                                {"field": "max_deliver", "from": 3, "to": 7}]
    assert run(_info(nats_server.url, stream, "reader"))["config"]["max_deliver"] == 3
    r = _post(c, f"{base}reader/", {"max_deliver": 7, "description": "edited"}, "put")
    assert r.status_code == 200 and r.json()["applied"]
    assert run(_info(nats_server.url, stream, "reader"))["config"]["max_deliver"] == 7
    for bad in ({"ack_policy": "all"}, {"deliver_policy": "new"}, {"max_waiting": 9},
                {"durable_name": "other"}, {"unknown": 1}):
        r = _post(c, f"{base}reader/", bad, "put")
        assert r.status_code == 400 and r.json()["error"], bad
    assert "ack_policy cannot be changed" in _post(c, f"{base}reader/", {"ack_policy": "all"},
                                                   "put").json()["error"]
    assert c.delete(f"{base}reader/", "{}", content_type="application/json").status_code == 200
    with pytest.raises(js.JetStreamError):
        run(_info(nats_server.url, stream, "reader"))
    ops = list(AuditRecord.objects.filter(target=f"{stream}/reader", outcome="ok")
               .order_by("pk").values_list("action", flat=True))
    assert ops == ["consumer.create", "consumer.create", "consumer.edit", "consumer.edit",
                   "consumer.delete"]


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_admin_actions_are_refused_below_admin(client, users, nats_server, role):
    stream = _name("ROLE")
    run(_setup(nats_server.url, stream, 1))
    c = _as(client, users, role)
    base = f"{API}/{stream}/consumers/"
    assert _post(c, base, {"durable_name": "new"}).status_code == 403
    assert _post(c, f"{base}work/", {"max_deliver": 9}, "put").status_code == 403
    assert c.delete(f"{base}work/").status_code == 403
    assert _post(c, f"{base}work/reset/", {"seq": 1}).status_code == 403
    paused = _post(c, f"{base}work/pause/", {"seconds": 60}).status_code
    assert paused == (403 if role == "viewer" else 200)
    info = run(_info(nats_server.url, stream, "work"))
    assert info["config"]["max_deliver"] == 5
    assert AuditRecord.objects.filter(outcome="refused", username=role).count() == (
        5 if role == "viewer" else 4)


def test_own_consumer_needs_admin_and_confirm(client, users, nats_server):
    run(_setup(nats_server.url, "LUCENT_ADVISORIES", 1, consumer="deadletter-capture"))
    base = f"{API}/LUCENT_ADVISORIES/consumers/deadletter-capture/"
    try:
        r = _post(_as(client, users, "operator"), f"{base}pause/", {"seconds": 60,
                                                                  "confirm_own": True})
        assert r.status_code == 403 and "dead-letter capture" in r.json()["error"], r.content
        admin = _as(client, users, "admin")
        for path, body, method in ((f"{base}pause/", {"seconds": 60}, "post"),
                                   (f"{base}reset/", {"seq": 1}, "post"),
                                   (base, {"max_deliver": 9}, "put")):
            r = _post(admin, path, body, method)
            assert r.status_code == 403 and "confirm_own" in r.json()["error"], path
        assert admin.delete(base).status_code == 403
        info = run(_info(nats_server.url, "LUCENT_ADVISORIES", "deadletter-capture"))
        assert not info.get("paused") and info["config"]["max_deliver"] == 5
        r = _post(admin, f"{base}pause/", {"seconds": 60, "confirm_own": True})
        assert r.status_code == 200 and r.json()["paused"]
        assert _post(admin, f"{base}resume/", {"confirm_own": True}).status_code == 200
    finally:
        async def drop():
            nc = await bus(nats_server.url)
            await js.delete_stream(nc, "LUCENT_ADVISORIES")
            await nc.close()

        run(drop())


def test_cli_prints_the_api_rows(users, nats_server, capsys):
    stream = _name("CLI")
    run(_setup(nats_server.url, stream, 4))
    call_command("consumer", "pause", stream, "work", "--seconds", "120", "--user", "operator")
    call_command("consumer", "info", stream, "work", "--json")
    out = capsys.readouterr().out
    row = json.loads(out[out.index("{"):])
    assert row["paused"] is True and row["num_pending"] == 4 and row["name"] == "work"
    call_command("consumer", "resume", stream, "work", "--user", "operator")
    call_command("consumer", "list", stream, "--json")
    out = capsys.readouterr().out
    rows = json.loads(out[out.index("["):])
    assert [(r["name"], r["paused"], r["pause_until"]) for r in rows] == [("work", False, None)]
    with pytest.raises(Exception, match="admin role"):
        call_command("consumer", "reset", stream, "work", "--seq", "2", "--user", "operator")
    with pytest.raises(Exception, match="seconds"):
        call_command("consumer", "pause", stream, "work", "--seconds", "-3", "--user", "admin")


def test_pages_confirm_first_then_act_and_escape_bus_values(client, users, nats_server):
    stream = _name("PG")
    run(_setup(nats_server.url, stream, 2))
    page = f"/streams/{stream}/consumers/work/"
    op = _as(client, users, "operator")
    body = op.get(page).content.decode()
    assert "Pause…" in body and "Preview changes" not in body and "Reset…" not in body
    r = op.post(f"{page}pause/", {"seconds": "120"})
    assert r.status_code == 200 and f"Pause work on {stream} until" in r.content.decode()
    assert not run(_info(nats_server.url, stream, "work")).get("paused")  # only asked
    r = op.post(f"{page}pause/", {"seconds": "120", "confirm": "1"})
    assert "Paused work until" in r.content.decode()
    assert run(_info(nats_server.url, stream, "work"))["paused"] is True
    assert op.post(f"{page}pause/", {"seconds": "-1"}).status_code == 400
    assert op.post(f"{page}reset/", {"seq": "1", "confirm": "1"}).status_code == 403

    admin = _as(client, users, "admin")
    config = json.dumps({"max_deliver": 9, "description": "<script>alert(1)</script>"})
    r = admin.post(f"{page}edit/", {"config": config})
    text = r.content.decode()
    assert r.status_code == 200 and "max_deliver" in text and "&lt;script&gt;" in text
    assert "<script>alert" not in text
    assert run(_info(nats_server.url, stream, "work"))["config"]["max_deliver"] == 5
    r = admin.post(f"{page}edit/", {"config": config, "confirm": "1"})
    assert "Changed consumer work" in r.content.decode()
    info = run(_info(nats_server.url, stream, "work"))
    assert info["config"]["max_deliver"] == 9 and info["paused"] is True  # an edit keeps the pause
    body = admin.get(page).content.decode()
    assert "&lt;script&gt;" in body and "<script>alert" not in body and "paused, resumes" in body
    shown = html.unescape(re.search(r'<textarea name="config"[^>]*>(.*?)</textarea>', body,
                                    re.S).group(1))
    r = admin.post(f"{page}edit/", {"config": shown})  # the page's own config, unchanged
    assert r.status_code == 200 and "Nothing changes." in r.content.decode(), r.content
    assert admin.post(f"{page}edit/", {"config": '{"ack_policy": "none"}'}).status_code == 400
    assert admin.post(f"{page}edit/", {"config": "not json"}).status_code == 400
    new = json.dumps({"durable_name": "second", "ack_policy": "explicit"})
    assert "Create consumer second" in admin.post(f"/streams/{stream}/consumer-create/",
                                                  {"config": new}).content.decode()
    r = admin.post(f"/streams/{stream}/consumer-create/", {"config": new, "confirm": "1"})
    assert "Created consumer second" in r.content.decode()
    r = admin.post(f"/streams/{stream}/consumers/second/delete/", {})
    assert "Its ack state" in r.content.decode()
    admin.post(f"/streams/{stream}/consumers/second/delete/", {"confirm": "1"})
    with pytest.raises(js.JetStreamError):
        run(_info(nats_server.url, stream, "second"))


# ---------------------------------------------------------------- Debian's 2.9

def test_on_29_pause_and_reset_say_unsupported_and_recreate_works(client, users, old_server):
    run(_setup(old_server.url, "OLD", 6))
    run(_setup(old_server.url, "OLDWQ", 3, retention="workqueue"))
    assert run(_fetch_acked(old_server.url, "OLD", "work", 6)) == [1, 2, 3, 4, 5, 6]
    c = _as(client, users, "admin")
    r = _post(c, f"{API}/OLD/consumers/work/pause/", {"seconds": 30})
    assert r.status_code == 400 and "not supported by this server (2.9." in r.json()["error"]
    r = _post(c, f"{API}/OLD/consumers/work/reset/", {"seq": 3})
    error = r.json()["error"]
    assert r.status_code == 400 and "not supported by this server (2.9." in error
    assert '"recreate": true' in error and "ack state" in error
    r = _post(c, f"{API}/OLD/consumers/work/reset/", {"seq": 3, "recreate": True})
    assert r.status_code == 200 and r.json()["recreated"] is True, r.content
    info = run(_info(old_server.url, "OLD", "work"))
    assert info["config"]["deliver_policy"] == "by_start_sequence"
    assert info["config"]["opt_start_seq"] == 3 and info["config"]["max_deliver"] == 5
    assert run(_fetch_acked(old_server.url, "OLD", "work", 2)) == [3, 4]
    r = _post(c, f"{API}/OLDWQ/consumers/work/reset/", {"seq": 2, "recreate": True})
    assert r.status_code == 400 and "workqueue stream would lose messages" in r.json()["error"]
    assert run(_info(old_server.url, "OLDWQ", "work"))["num_pending"] == 3


def test_an_edit_clears_a_filter_and_a_description_with_empty_values(client, users, nats_server):
    stream = _name("CCL")
    run(_setup(nats_server.url, stream, 3, filter_subject=f"{stream.lower()}.x",
               description="only x"))
    run(_publish_other(nats_server.url, stream))
    c = _as(client, users, "admin")
    path = f"{API}/{stream}/consumers/work/"
    assert run(_info(nats_server.url, stream, "work"))["num_pending"] == 3
    r = _post(c, path, {"filter_subject": "", "description": "", "dry_run": True}, "put")
    assert r.status_code == 200, r.content
    assert {row["field"]: row["to"] for row in r.json()["diff"]} == {
        "filter_subject": "", "description": ""}
    r = _post(c, path, {"filter_subject": "", "description": ""}, "put")
    assert r.status_code == 200 and r.json()["applied"], r.content
    info = run(_info(nats_server.url, stream, "work"))
    assert not info["config"].get("filter_subject") and not info["config"].get("description")
    assert info["num_pending"] == 4  # the message on the other subject is its now too
    # Left out (or null), a field is kept: only "" clears.
    _post(c, path, {"description": "back"}, "put")
    _post(c, path, {"max_deliver": 4, "description": None}, "put")
    assert run(_info(nats_server.url, stream, "work"))["config"]["description"] == "back"


async def _publish_other(url, stream):
    nc = await bus(url)
    try:
        await js.publish(nc, f"{stream.lower()}.y", b"other")
    finally:
        await nc.close()


def test_an_edit_is_applied_only_to_the_config_it_was_previewed_on(client, users, nats_server):
    """Two admins preview edits of one consumer; the first applies; the second's apply,
    previewed on the config before that, is refused (409, nothing changed) instead of
    sending a diff nobody saw; a pause meanwhile is not a change of the config."""
    stream = _name("CBO")
    run(_setup(nats_server.url, stream, 2))
    c = _as(client, users, "admin")
    url = f"{API}/{stream}/consumers/work/"
    first = _post(c, url, {"max_deliver": 4, "dry_run": True}, "put").json()
    second = _post(c, url, {"max_ack_pending": 50, "dry_run": True}, "put").json()
    assert first["based_on"] and first["based_on"] == second["based_on"]
    assert _post(c, url, {"max_deliver": 4, "based_on": first["based_on"]}, "put").status_code == 200
    late = _post(c, url, {"max_ack_pending": 50, "based_on": second["based_on"]}, "put")
    assert late.status_code == 409 and "changed since this edit was previewed" in late.json()["error"]
    config = run(_info(nats_server.url, stream, "work"))["config"]
    assert config["max_deliver"] == 4 and config.get("max_ack_pending") != 50  # nothing changed
    again = _post(c, url, {"max_ack_pending": 50, "dry_run": True}, "put").json()
    paused = _post(c, f"{url}pause/", {"seconds": 60})
    assert paused.status_code == 200, paused.content
    assert _post(c, url, {"max_ack_pending": 50, "based_on": again["based_on"]}, "put").status_code == 200

    # The page: the preview carries what it was made on; a stale apply says so.
    page_url = f"/streams/{stream}/consumers/work/edit/"
    preview = c.post(page_url, {"config": json.dumps({"max_deliver": 9})}).content.decode()
    based_on = preview.split('name="based_on" value="')[1].split('"')[0]
    assert _post(c, url, {"description": "someone else"}, "put").status_code == 200
    stale = c.post(page_url, {"config": json.dumps({"max_deliver": 9}), "confirm": "1",
                              "based_on": based_on})
    assert stale.status_code == 409 and "changed since this edit was previewed" in stale.content.decode()
    assert run(_info(nats_server.url, stream, "work"))["config"]["max_deliver"] == 4


def test_an_empty_description_or_filter_on_a_consumer_without_one_is_no_change(
        client, users, nats_server):
    stream = _name("CND")
    run(_setup(nats_server.url, stream, 1))
    c = _as(client, users, "admin")
    r = _post(c, f"{API}/{stream}/consumers/work/", {"description": "", "dry_run": True}, "put")
    assert r.status_code == 200 and r.json()["diff"] == [], r.content
