"""Key-value buckets: list, keys (paged, filtered), values decoded and escaped, every
revision, put and delete for operators (audited, the console's own bucket guarded),
the live watch, the CLI; and the reads on nats-server 2.9."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import uuid

import pytest
from django.core.management import CommandError, call_command
from django.db.models import Q

from kernel.models import AuditRecord
from lucent_bus import embedded, lease

from .conftest import bus, run

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def quick_passwords(settings):
    """The role users' passwords hashed cheaply: this file tests buckets, not logins."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _name(prefix: str = "T") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


async def _bucket(url: str, bucket: str, values: dict[str, list], history: int = 5,
                  ttl: float | None = None, delete: tuple = ()) -> None:
    """A bucket with each key's values put in order, then the keys of ``delete`` deleted."""
    nc = await bus(url)
    try:
        kv = await nc.jetstream().create_key_value(bucket=bucket, history=history, ttl=ttl)
        for key, revisions in values.items():
            for value in revisions:
                await kv.put(key, value if isinstance(value, bytes) else value.encode())
        for key in delete:
            await kv.delete(key)
    finally:
        await nc.close()


def _as(client, users, role: str):
    client.force_login(users[role])
    return client


def _put(client, bucket: str, key: str, body) -> object:
    return client.put(f"/api/v1/kv/{bucket}/keys/{key}/", json.dumps(body),
                      content_type="application/json")


def _delete(client, bucket: str, key: str, body=None) -> object:
    return client.delete(f"/api/v1/kv/{bucket}/keys/{key}/", json.dumps(body or {}),
                         content_type="application/json")


def test_it_lists_buckets_with_their_figures(nats_server, viewer_client):
    bucket = _name("LIST")
    run(_bucket(nats_server.url, bucket, {"a": ["1", "22"], "b": ["333"]}, history=5, ttl=3600))
    response = viewer_client.get("/api/v1/kv/")
    assert response.status_code == 200
    row = next(r for r in response.json() if r["bucket"] == bucket)
    assert (row["values"], row["keys"], row["history"], row["ttl"]) == (3, 2, 5, 3600)
    assert row["bytes"] > 0 and row["own"] is None
    page = viewer_client.get("/kv/")
    assert page.status_code == 200
    assert f'href="/kv/{bucket}/"' in page.content.decode()


def test_keys_are_paged_in_order_and_filtered(nats_server, viewer_client):
    bucket = _name("KEYS")
    keys = {f"orders.eu.{i:02d}": ["x"] for i in range(15)}
    keys.update({f"orders.us.{i:02d}": ["y"] for i in range(8)})
    keys["config/main"] = ["z"]
    run(_bucket(nats_server.url, bucket, keys))
    url = f"/api/v1/kv/{bucket}/keys/"

    first = viewer_client.get(url, {"limit": 10}).json()
    assert first["count"] == 24 and first["next"] and first["previous"] is None
    assert [r["key"] for r in first["results"]] == sorted(keys)[:10]
    rest = viewer_client.get(url, {"limit": 10, "offset": 20}).json()
    assert [r["key"] for r in rest["results"]] == sorted(keys)[20:] and rest["next"] is None
    assert rest["results"][0]["operation"] == "PUT" and rest["results"][0]["revisions"] == 1

    eu = viewer_client.get(url, {"filter": "orders.eu.*", "limit": 100}).json()
    assert eu["count"] == 15 and all(r["key"].startswith("orders.eu.") for r in eu["results"])
    assert viewer_client.get(url, {"filter": "orders.>"}).json()["count"] == 23
    substring = viewer_client.get(url, {"filter": "us.0", "limit": 5}).json()
    assert substring["count"] == 8 and len(substring["results"]) == 5
    assert viewer_client.get(url, {"filter": "main"}).json()["results"][0]["key"] == "config/main"

    bad = viewer_client.get(url, {"filter": "orders.>.eu"})
    assert bad.status_code == 400 and "last token" in bad.json()["error"]
    partial = viewer_client.get(url, {"filter": "ord*"})
    assert partial.status_code == 400 and "not a key pattern" in partial.json()["error"]
    assert viewer_client.get("/api/v1/kv/NO_SUCH_BUCKET/keys/").status_code == 404
    page = viewer_client.get(f"/kv/{bucket}/", {"filter": "orders.us.*"}).content.decode()
    assert "orders.us.07" in page and "orders.eu.01" not in page


def test_values_are_decoded_like_messages_and_rendered_escaped(nats_server, viewer_client):
    bucket = _name("DECODE")
    hostile = '<script>alert("kv")</script><img src=x onerror=alert(1)>'
    run(_bucket(nats_server.url, bucket, {"html": [hostile], "doc": ['{"a":{"b":[1,2]}}'],
                                          "bin": [bytes([0, 1, 2, 255, 254])]}))
    page = viewer_client.get(f"/kv/{bucket}/keys/html/")
    html = page.content.decode()
    assert page.status_code == 200
    assert "&lt;script&gt;alert(&quot;kv&quot;)&lt;/script&gt;" in html
    assert "<script>alert" not in html and "<img src=x" not in html
    assert viewer_client.get(f"/kv/{bucket}/").content.decode().count("<script>alert") == 0

    doc = viewer_client.get(f"/api/v1/kv/{bucket}/keys/doc/").json()
    assert doc["value"] == '{"a":{"b":[1,2]}}' and doc["encoding"] == "utf-8"
    assert '&quot;a&quot;: {\n' in viewer_client.get(f"/kv/{bucket}/keys/doc/").content.decode()
    binary = viewer_client.get(f"/api/v1/kv/{bucket}/keys/bin/").json()
    assert binary["encoding"] == "base64"
    assert base64.b64decode(binary["value"]) == bytes([0, 1, 2, 255, 254])
    assert "00 01 02 ff fe" in viewer_client.get(f"/kv/{bucket}/keys/bin/").content.decode()


def test_every_revision_of_a_key_with_a_delete_and_who(nats_server, client, users):
    bucket = _name("HIST")
    run(_bucket(nats_server.url, bucket, {"seed": ["s"]}, history=10))
    operator = _as(client, users, "operator")
    revisions = [_put(operator, bucket, "cfg.limit", {"value": v}).json()["revision"]
                 for v in ("10", "20")]
    deleted = _delete(operator, bucket, "cfg.limit")
    assert deleted.status_code == 200 and deleted.json()["operation"] == "DEL"

    found = operator.get(f"/api/v1/kv/{bucket}/keys/cfg.limit/").json()
    assert found["value"] is None and found["operation"] == "DEL"
    assert [(r["operation"], r["value"]) for r in found["history"]] == [
        ("DEL", None), ("PUT", "20"), ("PUT", "10")]
    assert [r["revision"] for r in found["history"][1:]] == revisions[::-1]
    assert {r["user"] for r in found["history"]} == {"operator"}
    assert all(r["created"] for r in found["history"])
    page = operator.get(f"/kv/{bucket}/keys/cfg.limit/").content.decode()
    assert "Deleted (DEL)" in page
    assert page.count("<td>operator</td>") == 3

    assert _delete(operator, bucket, "cfg.limit").status_code == 404  # already deleted
    assert operator.get(f"/api/v1/kv/{bucket}/keys/never.was/").status_code == 404
    assert operator.get("/api/v1/kv/NO_SUCH_BUCKET/keys/x/").status_code == 404
    assert _put(operator, "NO_SUCH_BUCKET", "x", {"value": "1"}).status_code == 404


@pytest.mark.parametrize("role, status", [("viewer", 403), ("nobody", 403), ("operator", 200),
                                          ("admin", 200)])
def test_put_and_delete_need_an_operator_and_are_audited_with_a_digest(
        nats_server, client, users, role, status):
    bucket = _name("ROLE")
    run(_bucket(nats_server.url, bucket, {"keep": ["1"]}))
    who = _as(client, users, role)
    secret = "s3cret-value"
    put = _put(who, bucket, "k", {"value": secret})
    assert put.status_code == status
    deleted = _delete(who, bucket, "keep")
    assert deleted.status_code == status
    records = AuditRecord.objects.filter(Q(target__startswith=f"{bucket}/")
                                         | Q(target__contains=f"/kv/{bucket}/")).order_by("id")
    actions = ("api.put", "api.delete") if role == "nobody" else ("kv.put", "kv.delete")
    assert [(r.action, r.outcome) for r in records] == [
        (actions[0], "ok" if status == 200 else "refused"),
        (actions[1], "ok" if status == 200 else "refused")]
    assert all(r.username == role for r in records)
    assert secret not in json.dumps([r.parameters for r in records])
    if status == 200:
        assert records[0].parameters["sha256"] == hashlib.sha256(secret.encode()).hexdigest()
        assert records[0].detail == f"revision {put.json()['revision']}"
        value = who.get(f"/api/v1/kv/{bucket}/keys/k/").json()
        assert value["value"] == secret and value["history"][0]["user"] == role
    else:
        assert who.get(f"/api/v1/kv/{bucket}/keys/k/").status_code in (403, 404)
        state = _as(client, users, "viewer").get(f"/api/v1/kv/{bucket}/keys/").json()
        assert [r["key"] for r in state["results"]] == ["keep"]  # nothing changed
        assert state["results"][0]["operation"] == "PUT"


def test_bad_bodies_and_bad_keys_are_clear_400s_and_change_nothing(nats_server, client, users):
    bucket = _name("BAD")
    run(_bucket(nats_server.url, bucket, {"ok": ["1"]}))
    operator = _as(client, users, "operator")
    for key, words in ((".lead", "start or end with a dot"), ("trail.", "start or end with a dot"),
                       ("a..b", "two dots"), ("a%20b", "not a valid key"),
                       ("a*", "not a valid key"), ("caf%C3%A9", "not a valid key")):
        response = _put(operator, bucket, key, {"value": "v"})
        assert response.status_code == 400, key
        assert words in response.json()["error"], (key, response.json())
    for body, field in (({"value": 5}, "value"), ({"value": "v", "extra": 1}, "extra"),
                        ({"value": "v", "encoding": "hex"}, "encoding"), ([1], "non_field_errors"),
                        ({"value": "v", "confirm_own": "maybe"}, "confirm_own")):
        response = _put(operator, bucket, "k", body)
        assert response.status_code == 400 and field in response.json()["fields"], body
    bad64 = _put(operator, bucket, "k", {"value": "not base64!", "encoding": "base64"})
    assert bad64.status_code == 400 and "base64" in bad64.json()["error"]
    good64 = _put(operator, bucket, "bin", {"value": base64.b64encode(b"\x00\xff").decode(),
                                           "encoding": "base64"})
    assert good64.status_code == 200
    assert operator.get(f"/api/v1/kv/{bucket}/keys/bin/").json()["value"] == "AP8="
    keys = operator.get(f"/api/v1/kv/{bucket}/keys/").json()
    assert sorted(r["key"] for r in keys["results"]) == ["bin", "ok"]
    assert operator.get(f"/api/v1/kv/{bucket}/keys/a..b/").status_code == 400
    page = operator.get(f"/kv/{bucket}/keys/a..b/")
    assert page.status_code == 400 and "two dots in a row" in page.content.decode()
    assert operator.get("/kv/NO_SUCH_BUCKET/").status_code == 404
    assert operator.post(f"/api/v1/kv/{bucket}/keys/ok/", {}).status_code == 405


def test_the_consoles_own_bucket_needs_an_admin_who_confirms(nats_server, client, users):
    async def ensure():
        nc = await bus(nats_server.url)
        try:
            await lease.ensure_bucket(nc, 60)
        finally:
            await nc.close()

    run(ensure())
    operator = _as(client, users, "operator")
    refused = _put(operator, "LUCENT_LEADER", "kv-test", {"value": "x", "confirm_own": True})
    assert refused.status_code == 403 and "leader lease" in refused.json()["error"]
    admin = _as(client, users, "admin")
    unconfirmed = _put(admin, "LUCENT_LEADER", "kv-test", {"value": "x"})
    assert unconfirmed.status_code == 403
    assert "leader lease" in unconfirmed.json()["error"] and "confirm_own" in unconfirmed.json()["error"]
    assert admin.get("/api/v1/kv/LUCENT_LEADER/keys/kv-test/").status_code == 404
    assert _put(admin, "LUCENT_LEADER", "kv-test", {"value": "x", "confirm_own": True}).status_code == 200
    assert _delete(admin, "LUCENT_LEADER", "kv-test").status_code == 403
    assert _delete(admin, "LUCENT_LEADER", "kv-test", {"confirm_own": True}).status_code == 200
    row = next(r for r in admin.get("/api/v1/kv/").json() if r["bucket"] == "LUCENT_LEADER")
    assert "leader lease" in row["own"]
    page = admin.get("/kv/LUCENT_LEADER/").content.decode()
    assert 'name="confirm_own"' in page and "leader lease" in page
    outcomes = list(AuditRecord.objects.filter(target="LUCENT_LEADER/kv-test")
                    .order_by("id").values_list("username", "outcome"))
    assert outcomes == [("operator", "refused"), ("admin", "refused"), ("admin", "ok"),
                        ("admin", "refused"), ("admin", "ok")]


def test_the_bucket_page_watches_changes_within_a_second(nats_server, client, users):
    bucket = _name("WATCH")
    run(_bucket(nats_server.url, bucket, {"first": ["1"]}))
    viewer = _as(client, users, "viewer")
    page = viewer.get(f"/kv/{bucket}/").content.decode()
    assert 'hx-trigger="every 1s"' in page and f"/kv/{bucket}/changes/?after=1" in page
    assert viewer.get(f"/kv/{bucket}/changes/", {"after": 1}).status_code == 204  # no change

    async def change():
        nc = await bus(nats_server.url)
        try:
            kv = await nc.jetstream().key_value(bucket)
            await kv.put("second", b"<b>2</b>")
        finally:
            await nc.close()

    run(change())
    fragment = viewer.get(f"/kv/{bucket}/changes/", {"after": 1})
    assert fragment.status_code == 200
    html = fragment.content.decode()
    assert f"/kv/{bucket}/keys/second/" in html and "&lt;b&gt;2&lt;/b&gt;" in html
    assert "after=2" in html  # the next poll asks from the new revision

    # A page's form puts too (operators), and the next poll shows it.
    operator = _as(client, users, "operator")
    result = operator.post(f"/kv/{bucket}/put/", {"key": "third", "value": "3"})
    assert "revision 3" in result.content.decode()
    assert "third" in operator.get(f"/kv/{bucket}/changes/", {"after": 2}).content.decode()
    gone = operator.get("/kv/NO_SUCH_BUCKET/changes/", {"after": 1}).content.decode()
    assert "no bucket" in gone and "hx-trigger" not in gone  # the polling stops, saying why
    refused = _as(client, users, "viewer").post(f"/kv/{bucket}/put/", {"key": "x", "value": "1"})
    assert "needs the operator role" in refused.content.decode()


def test_the_cli_prints_the_apis_rows(nats_server, users):
    bucket = _name("CLI")
    run(_bucket(nats_server.url, bucket, {"a.b": ["one"], "c": ["two"]}))

    def kv(*args) -> str:
        out = io.StringIO()
        call_command("kv", *args, stdout=out)
        return out.getvalue()

    assert any(line.startswith(bucket + "\t2\t") for line in kv("ls").splitlines())
    listed = json.loads(kv("keys", bucket, "--filter", "a.*", "--json"))
    assert listed["count"] == 1 and listed["results"][0]["key"] == "a.b"
    assert kv("get", bucket, "a.b").strip() == "one"
    put = kv("put", bucket, "a.b", "uno", "--user", "operator")
    assert "\tPUT" in put
    assert kv("del", bucket, "c", "--user", "operator").splitlines()[1].endswith("\tDEL")
    history = kv("history", bucket, "a.b").splitlines()
    assert history[0].startswith("revision\tvalue") and "\tuno\t" in history[1]
    assert "\toperator\t" in history[1]
    with pytest.raises(CommandError, match="needs the operator role"):
        kv("put", bucket, "x", "1", "--user", "viewer")
    with pytest.raises(CommandError, match="not a valid key"):
        kv("put", bucket, "bad key", "1", "--user", "operator")
    with pytest.raises(CommandError, match="no bucket"):
        kv("keys", "NO_SUCH_BUCKET")


def test_list_keys_and_history_work_on_nats_server_29(old_server, client, users):
    assert "2.9" in old_server.version
    run(_bucket(old_server.url, "OLD", {f"k.{i}": ["v1", "v2"] for i in range(12)},
                delete=("k.3",)))
    viewer = _as(client, users, "operator")
    row = next(r for r in viewer.get("/api/v1/kv/").json() if r["bucket"] == "OLD")
    assert (row["values"], row["keys"], row["history"]) == (25, 12, 5)
    keys = viewer.get("/api/v1/kv/OLD/keys/", {"limit": 5, "offset": 5}).json()
    assert keys["count"] == 12
    assert [r["key"] for r in keys["results"]] == sorted(f"k.{i}" for i in range(12))[5:10]
    assert viewer.get("/api/v1/kv/OLD/keys/", {"filter": "k.*"}).json()["count"] == 12
    found = viewer.get("/api/v1/kv/OLD/keys/k.3/").json()
    assert [r["operation"] for r in found["history"]] == ["DEL", "PUT", "PUT"]
    assert _put(viewer, "OLD", "k.3", {"value": "back"}).status_code == 200
    assert viewer.get("/api/v1/kv/OLD/keys/k.3/").json()["value"] == "back"


def test_a_bus_that_is_away_is_a_clear_503_not_a_crash(db, client, users, monkeypatch):
    monkeypatch.setenv("NATS_URL", f"nats://127.0.0.1:{embedded.free_port()}")  # nobody there
    viewer = _as(client, users, "viewer")
    for path in ("/api/v1/kv/", "/api/v1/kv/B/keys/", "/api/v1/kv/B/keys/k/"):
        response = viewer.get(path)
        assert response.status_code == 503 and "bus" in response.json()["error"], path
    page = viewer.get("/kv/B/")
    assert page.status_code == 503 and "the bus" in page.content.decode()
    assert "the bus" in viewer.get("/kv/").content.decode()


def test_purge_removes_a_keys_history_for_admins_only_and_is_audited(nats_server, client, users):
    bucket = _name("PRG")
    run(_bucket(nats_server.url, bucket, {"k": ["one", "two", "three"], "gone": ["x"]},
                delete=("gone",)))
    operator = _as(client, users, "operator")
    refused = _delete(operator, bucket, "k", {"purge": True})
    assert refused.status_code == 403
    assert len(operator.get(f"/api/v1/kv/{bucket}/keys/k/").json()["history"]) == 3
    assert "Purge its history" not in operator.get(f"/kv/{bucket}/keys/k/").content.decode()
    admin = _as(client, users, "admin")
    page = admin.get(f"/kv/{bucket}/keys/k/").content.decode()
    assert "Purge its history" in page and '{"purge": "1"}' in page
    done = _delete(admin, bucket, "k", {"purge": True})
    assert done.status_code == 200 and done.json()["operation"] == "PURGE", done.content
    key = admin.get(f"/api/v1/kv/{bucket}/keys/k/").json()
    assert key["value"] is None and [r["operation"] for r in key["history"]] == ["PURGE"]
    assert key["history"][0]["revision"] == done.json()["revision"]
    # A deleted key's history can be purged too; a key never written cannot.
    assert _delete(admin, bucket, "gone").status_code == 404  # a plain delete needs a value
    shown = admin.post(f"/kv/{bucket}/delete/", {"key": "gone", "purge": "1"}).content.decode()
    assert "Purged gone" in shown
    assert [r["operation"] for r in admin.get(f"/api/v1/kv/{bucket}/keys/gone/").json()[
        "history"]] == ["PURGE"]
    assert _delete(admin, bucket, "never", {"purge": True}).status_code == 404
    assert _delete(admin, bucket, "k", {"purge": [1]}).status_code == 400
    out = io.StringIO()
    call_command("kv", "put", bucket, "k", "again", "--user", "operator", stdout=out)
    call_command("kv", "purge", bucket, "k", "--user", "admin", stdout=out)
    assert out.getvalue().splitlines()[-1].endswith("\tPURGE")
    with pytest.raises(CommandError, match="admin"):
        call_command("kv", "purge", bucket, "k", "--user", "operator", stdout=out)
    records = list(AuditRecord.objects.filter(action="kv.purge").order_by("id")
                   .values_list("username", "outcome"))
    assert records[:3] == [("operator", "refused"), ("admin", "ok"), ("admin", "ok")]
    assert records[-2:] == [("admin", "ok"), ("operator", "refused")]


def test_an_edit_is_stored_only_on_the_revision_it_was_read_at(nats_server, client, users):
    """``revision`` (API, the key page's edit form, ``kv put --revision``): stored only if
    the key is still there, else a 409 naming the latest revision, nothing stored, audited
    (the JetStream header ``Nats-Expected-Last-Subject-Sequence``, as ``nats kv update``)."""
    bucket = _name("REV")
    run(_bucket(nats_server.url, bucket, {"k": ["1"]}))
    op = _as(client, users, "operator")
    read = op.get(f"/api/v1/kv/{bucket}/keys/k/").json()["revision"]
    saved = _put(op, bucket, "k", {"value": "2", "revision": read})
    assert saved.status_code == 200, saved.content
    latest = saved.json()["revision"]
    stale = _put(op, bucket, "k", {"value": "3", "revision": read})
    assert stale.status_code == 409, stale.content
    assert f"since you read revision {read}: revision {latest} is the latest" in stale.json()["error"]
    assert op.get(f"/api/v1/kv/{bucket}/keys/k/").json()["value"] == "2"  # nothing stored
    exists = _put(op, bucket, "k", {"value": "x", "revision": 0})
    assert exists.status_code == 409 and f"exists already (revision {latest})" in exists.json()["error"]
    assert _put(op, bucket, "fresh", {"value": "x", "revision": 0}).status_code == 200
    for bad in (-1, "a", True, 1.5):
        answer = _put(op, bucket, "k", {"value": "x", "revision": bad})
        assert answer.status_code == 400 and "revision" in answer.json()["fields"], bad
    records = list(AuditRecord.objects.filter(action="kv.put", target=f"{bucket}/k")
                   .order_by("id").values_list("outcome", "parameters"))
    assert [o for o, _ in records][:3] == ["ok", "failed", "failed"]
    assert records[1][1]["revision"] == read

    # The key page: an edit form at the revision shown; a stale one says what happened.
    page = op.get(f"/kv/{bucket}/keys/k/").content.decode()
    assert f'name="revision" value="{latest}"' in page and f"Save if still revision {latest}" in page
    shown = op.post(f"/kv/{bucket}/put/", {"key": "k", "value": "4", "revision": str(read)})
    assert "changed since you read" in shown.content.decode()
    assert f"/kv/{bucket}/keys/k/" in shown.content.decode()  # a link to the latest
    done = op.post(f"/kv/{bucket}/put/", {"key": "k", "value": "4", "revision": str(latest)})
    assert "Stored k as revision" in done.content.decode()
    for odd in ("x1", "²", "-1"):
        assert op.post(f"/kv/{bucket}/put/", {"key": "k", "value": "5", "revision": odd}
                       ).content.decode().count("whole number") == 1
    # The CLI: the same check.
    now = op.get(f"/api/v1/kv/{bucket}/keys/k/").json()["revision"]
    with pytest.raises(CommandError, match="changed since you read"):
        call_command("kv", "put", bucket, "k", "6", "--revision", str(read), "--user", "operator",
                     stdout=io.StringIO())
    out = io.StringIO()
    call_command("kv", "put", bucket, "k", "6", "--revision", str(now), "--user", "operator",
                 stdout=out)
    assert op.get(f"/api/v1/kv/{bucket}/keys/k/").json()["value"] == "6"
