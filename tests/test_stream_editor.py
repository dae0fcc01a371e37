"""The stream editor (create, edit, delete) against the pinned nats-server: lint findings
and the diff before anything is applied, only the changes the server allows, the
console's own and declared streams confirmed, roles and audit, the pages and the CLI.

Most tests share the session's server with streams of their own names; the one that
creates the console's own and declared streams has a server of its own."""

import json
import uuid

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.core.management.base import CommandError

from kernel.models import AuditRecord
from lucent_bus import jetstream as js
from lucent_bus import streams_admin
from streams import topology

from .conftest import bus, run

pytestmark = pytest.mark.django_db
API = "/api/v1/streams/"
DAY = 86400 * 10**9


def _name(prefix="ED"):
    return f"{prefix}_{uuid.uuid4().hex[:8].upper()}"


def _info(url, name):
    async def go():
        nc = await bus(url)
        try:
            return await js.stream_info(nc, name)
        except js.JetStreamError as exc:
            if exc.err_code == js.STREAM_NOT_FOUND:
                return None
            raise
        finally:
            await nc.close()
    return run(go())


def _add(url, config):
    async def go():
        nc = await bus(url)
        try:
            await js.add_stream(nc, config)
        finally:
            await nc.close()
    run(go())


@pytest.fixture
def users(db):
    """One user per role, without a password (force_login): hashing four passwords is
    most of a test's time on a loaded machine, and these tests never log in by form."""
    out = {}
    for role in ("viewer", "operator", "admin"):
        user = User(username=role)
        user.set_unusable_password()
        user.save()
        user.groups.add(Group.objects.get_or_create(name=role)[0])
        out[role] = user
    return out


@pytest.fixture
def admin(client, users, nats_server):
    client.force_login(users["admin"])
    return client


def _post(c, body):
    return c.post(API, body, content_type="application/json")


def _put(c, name, body):
    return c.put(f"{API}{name}/", body, content_type="application/json")


def _delete(c, name, body=None):
    return c.delete(f"{API}{name}/", body or {}, content_type="application/json")


def test_create_previews_lint_and_diff_then_creates(admin, nats_server):
    name = _name()
    body = {"name": name, "subjects": [f"{name.lower()}.*"], "max_msgs": 1000, "dry_run": True}
    r = _post(admin, body)
    assert r.status_code == 200, r.content
    plan = r.json()
    assert plan["applied"] is False and _info(nats_server.url, name) is None
    star = [f for f in plan["findings"] if f["code"] == "single-token-wildcard"]
    assert star and star[0]["severity"] == "warning" and f"{name.lower()}.>" in star[0]["fix"]
    assert ["max_msgs", None, 1000] in plan["diff"]
    assert plan["config"]["subjects"] == [f"{name.lower()}.*"]
    body.pop("dry_run")
    r = _post(admin, body)  # a warning does not block
    assert r.status_code == 201, r.content
    info = _info(nats_server.url, name)
    assert info["config"]["max_msgs"] == 1000 and info["config"]["subjects"] == body["subjects"]
    record = AuditRecord.objects.filter(action="stream.create", target=name,
                                        outcome="ok").order_by("id").last()
    assert record.parameters["config"]["max_msgs"] == 1000 and "max_msgs" in record.detail
    again = _post(admin, body)
    assert again.status_code == 400 and "exists already" in again.json()["error"]


def test_replicas_above_the_cluster_are_a_lint_error_and_then_the_servers_refusal(admin, nats_server):
    name = _name()
    body = {"name": name, "subjects": [f"{name.lower()}.>"], "num_replicas": 3}
    r = _post(admin, body)
    assert r.status_code == 400
    assert "declares 3 replicas but the bus has 1 server(s)" in r.json()["error"]
    assert "confirm_lint" in r.json()["error"]
    r = _post(admin, {**body, "confirm_lint": True})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error.startswith("the server refused, nothing changed:") and "replicas" in error
    assert _info(nats_server.url, name) is None
    outcomes = list(AuditRecord.objects.filter(target=name).order_by("id").values_list("outcome", flat=True))
    assert outcomes == ["failed", "failed"]


def test_edit_shows_the_diff_and_applies_only_the_given_fields(admin, nats_server):
    name = _name()
    _add(nats_server.url, {"name": name, "subjects": [f"{name.lower()}.a.>"], "storage": "file",
                           "duplicate_window": 30 * 10**9, "description": "orders"})
    change = {"max_msgs": 500, "subjects": [f"{name.lower()}.a.>", f"{name.lower()}.b.>"]}
    r = _put(admin, name, {**change, "dry_run": True})
    assert r.status_code == 200
    diff = {row[0]: row[1:] for row in r.json()["diff"]}
    assert diff == {"max_msgs": [-1, 500], "subjects": [[f"{name.lower()}.a.>"], change["subjects"]]}
    assert _info(nats_server.url, name)["config"]["max_msgs"] == -1
    r = _put(admin, name, change)
    assert r.status_code == 200 and r.json()["applied"] is True
    config = _info(nats_server.url, name)["config"]
    assert config["max_msgs"] == 500 and sorted(config["subjects"]) == sorted(change["subjects"])
    assert config["duplicate_window"] == 30 * 10**9 and config["description"] == "orders"
    record = AuditRecord.objects.exclude(detail__startswith="dry run").get(
        action="stream.edit", target=name, outcome="ok")
    assert "max_msgs: -1 -> 500" in record.detail and record.parameters["config"] == change
    same = _put(admin, name, {"max_msgs": 500})
    assert same.status_code == 400 and "nothing to change" in same.json()["error"]


def test_changes_the_server_never_allows_are_refused_and_nothing_changes(admin, nats_server):
    name, other = _name(), _name()
    _add(nats_server.url, {"name": name, "subjects": [f"{name.lower()}.>"], "storage": "file",
                           "deny_delete": True})
    _add(nats_server.url, {"name": other, "subjects": [f"{other.lower()}.>"], "storage": "file"})
    before = _info(nats_server.url, name)["config"]
    for change, words in (({"storage": "memory"}, "can not change storage type"),
                          ({"retention": "workqueue"}, "to/from workqueue"),
                          ({"deny_delete": False}, "can not cancel deny message deletes"),
                          ({"name": other}, "cannot be renamed")):
        r = _put(admin, name, change)
        assert r.status_code == 400 and words in r.json()["error"], (change, r.content)
    # What only the server knows (another stream's subjects) comes back in its words.
    r = _put(admin, name, {"subjects": [f"{other.lower()}.x"]})
    assert r.status_code == 400 and "overlap" in r.json()["error"]
    assert _info(nats_server.url, name)["config"] == before


def test_bad_input_answers_400_or_404_and_changes_nothing(admin, nats_server):
    name = _name()
    cases = [
        ({"name": name, "subjects": ["x.>"], "colour": "red"}, "colour"),
        ({"name": name, "subjects": ["x.>"], "max_msgs": "many"}, "max_msgs"),
        ({"name": name, "subjects": ["x.>"], "no_ack": "yes please"}, "no_ack"),
        ({"name": "A.B", "subjects": ["x.>"]}, "name"),
        ({"name": name, "subjects": ["x..y"]}, "subjects"),
        ({"name": name, "subjects": "x.>"}, "subjects"),
        ({"name": name}, "subjects"),
        ({"name": name, "subjects": ["$JS.API.>"]}, "bus's own subjects"),
        ([name], "JSON object"),
    ]
    for body, words in cases:
        r = _post(admin, body)
        assert r.status_code == 400 and words in r.json()["error"], (body, r.content)
    assert _info(nats_server.url, name) is None
    missing = _name("NONE")
    assert _put(admin, missing, {"max_msgs": 1}).status_code == 404
    assert _delete(admin, missing).status_code == 404
    assert _delete(admin, missing, {"confirm": True}).status_code == 400


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_below_admin_nothing_is_created_edited_or_deleted_and_each_try_is_audited(
        client, users, nats_server, role):
    client.force_login(users[role])
    name = _name()
    _add(nats_server.url, {"name": name, "subjects": [f"{name.lower()}.>"], "storage": "file"})
    assert _post(client, {"name": _name(), "subjects": ["nope.>"]}).status_code == 403
    assert _put(client, name, {"max_msgs": 5}).status_code == 403
    assert _delete(client, name).status_code == 403
    assert client.post("/streams/new/preview/", {"name": "X", "subjects": "x.>"}).status_code == 403
    assert client.post(f"/streams/{name}/delete-stream/", {"confirm": name}).status_code == 403
    assert _info(nats_server.url, name)["config"]["max_msgs"] == -1
    refused = AuditRecord.objects.filter(username=role, outcome="refused")
    assert {r.action for r in refused} == {"stream.create", "stream.edit", "stream.delete"}
    assert refused.count() == 5


def test_delete_previews_then_deletes_and_the_audit_keeps_the_config(admin, nats_server):
    name = _name()
    _add(nats_server.url, {"name": name, "subjects": [f"{name.lower()}.>"], "storage": "file",
                           "max_msgs": 77})
    r = _delete(admin, name, {"dry_run": True})
    assert r.status_code == 200 and r.json()["applied"] is False
    assert _info(nats_server.url, name) is not None
    r = _delete(admin, name)
    assert r.status_code == 200 and r.json()["applied"] is True
    assert _info(nats_server.url, name) is None
    record = AuditRecord.objects.exclude(detail__startswith="dry run").get(
        action="stream.delete", target=name, outcome="ok")
    assert '"max_msgs": 77' in record.detail


def test_newer_features_are_set_at_create_shown_and_guarded(admin, nats_server):
    name, counter = _name(), _name()
    r = _post(admin, {"name": name, "subjects": [f"{name.lower()}.>"], "allow_msg_ttl": True,
                      "subject_delete_marker_ttl": 5 * 10**9, "allow_msg_schedules": True})
    assert r.status_code == 201, r.content
    config = _info(nats_server.url, name)["config"]
    assert config["allow_msg_ttl"] and config["subject_delete_marker_ttl"] == 5 * 10**9
    assert config["allow_msg_schedules"]
    page = admin.get(f"/streams/{name}/config/").content.decode()
    for words in ("Per-message TTL</dt><dd>on", "Subject delete markers</dt><dd>5 s",
                  "Message schedules</dt><dd>on", "not declared", "Edit this stream…"):
        assert words in page
    r = _put(admin, name, {"allow_msg_ttl": False})
    assert r.status_code == 400 and "message TTL status can not be disabled" in r.json()["error"]
    r = _post(admin, {"name": counter, "subjects": [f"{counter.lower()}.>"],
                      "allow_msg_counter": True})
    assert r.status_code == 201 and _info(nats_server.url, counter)["config"]["allow_msg_counter"]
    r = _put(admin, counter, {"allow_msg_counter": False})
    assert r.status_code == 400 and "message counter setting" in r.json()["error"]
    # An older server ignores what it does not know: the console refuses instead.
    assert streams_admin.unsupported((2, 9, 10), {"allow_msg_ttl": True, "max_msgs": 1}) == [
        "allow_msg_ttl needs nats-server 2.11.0 or newer; the bus runs 2.9.10"]
    assert streams_admin.unsupported((2, 12, 0), {"allow_msg_counter": True}) == []


def test_own_streams_need_admin_and_confirm_and_declared_edits_name_the_fields(
        client, users, fresh_server, monkeypatch):
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    url = fresh_server.url
    _add(url, topology.desired_config(topology.DECLARED[4], 1))  # DEAD_LETTERS
    _add(url, topology.desired_config(topology.DECLARED[1], 1))  # COMMANDS
    client.force_login(users["admin"])
    before = _info(url, "DEAD_LETTERS")["config"]
    r = _put(client, "DEAD_LETTERS", {"max_msgs": 10})
    assert r.status_code == 403 and "dead-letter store" in r.json()["error"]
    assert _delete(client, "DEAD_LETTERS").status_code == 403
    purge = client.post(f"{API}DEAD_LETTERS/purge/", {"all": True}, content_type="application/json")
    assert purge.status_code == 403 and "confirm_own" in purge.json()["error"]
    assert client.delete(f"{API}DEAD_LETTERS/messages/1/").status_code == 403
    assert client.post("/streams/DEAD_LETTERS/purge/", {"confirm": "DEAD_LETTERS"}).status_code == 403
    assert _info(url, "DEAD_LETTERS")["config"] == before
    # Declared too: a field the declaration names needs both confirmations, named.
    r = _put(client, "DEAD_LETTERS", {"max_age": 400 * DAY, "confirm_own": True})
    assert r.status_code == 400 and "max_age (declared" in r.json()["error"]
    r = _put(client, "DEAD_LETTERS", {"max_age": 400 * DAY, "confirm_own": True,
                                      "confirm_declared": True})
    assert r.status_code == 200 and _info(url, "DEAD_LETTERS")["config"]["max_age"] == 400 * DAY
    purge = client.post(f"{API}DEAD_LETTERS/purge/", {"all": True, "confirm_own": True},
                        content_type="application/json")
    assert purge.status_code == 200
    # COMMANDS: a field the declaration does not name changes freely; a declared one asks.
    assert _put(client, "COMMANDS", {"max_msgs": 100}).status_code == 200
    r = _put(client, "COMMANDS", {"duplicate_window": 60 * 10**9, "dry_run": True})
    assert r.json()["declared"] and r.json()["needs"] == ["confirm_declared"]
    assert r.json()["declared_drift"] == [["duplicate_window", 120 * 10**9, 60 * 10**9]]
    r = _put(client, "COMMANDS", {"duplicate_window": 60 * 10**9})
    assert r.status_code == 400 and "declared by the topology" in r.json()["error"]
    assert "duplicate_window (declared 120000000000, proposed 60000000000)" in r.json()["error"]
    page = client.get("/streams/COMMANDS/config/").content.decode()
    assert "declared by the topology" in page
    r = _delete(client, "COMMANDS")
    assert r.status_code == 400 and "confirm_declared" in r.json()["error"]
    assert _delete(client, "COMMANDS", {"confirm_declared": True}).status_code == 200
    r = _delete(client, "DEAD_LETTERS", {"confirm_own": True, "confirm_declared": True})
    assert r.status_code == 200 and _info(url, "DEAD_LETTERS") is None


def test_pages_preview_then_apply(admin, nats_server):
    name = _name()
    form = admin.get("/streams/new/form/").content.decode()
    assert 'name="subjects"' in form and 'name="allow_msg_ttl"' in form
    post = {"name": name, "subjects": f"{name.lower()}.* {name.lower()}.x.>", "retention": "limits",
            "storage": "file", "num_replicas": "1", "discard": "old", "max_age": "3600",
            "duplicate_window": "120"}
    preview = admin.post("/streams/new/preview/", post).content.decode()
    assert "single-token-wildcard" in preview and "max_age" in preview and "3600000000000" in preview
    assert _info(nats_server.url, name) is None
    body = json.loads(preview.split('name="body" value="')[1].split('"')[0].replace("&quot;", '"'))
    done = admin.post("/streams/new/create/", {"body": json.dumps(body)})
    assert done.status_code == 200 and "Created stream" in done.content.decode()
    assert _info(nats_server.url, name)["config"]["max_age"] == 3600 * 10**9
    edit = admin.get(f"/streams/{name}/edit/").content.decode()
    assert 'value="3600"' in edit and "Edit " + name in edit
    preview = admin.post(f"/streams/{name}/edit/preview/", {**post, "max_age": "60",
                                                            "allow_direct": "on"}).content.decode()
    assert "max_age" in preview and "60000000000" in preview and "allow_direct" in preview
    assert _info(nats_server.url, name)["config"]["max_age"] == 3600 * 10**9
    bad = admin.post(f"/streams/{name}/edit/preview/", {**post, "storage": "memory"})
    assert bad.status_code == 400 and "can not change storage type" in bad.content.decode()
    garbage = admin.post(f"/streams/{name}/edit/preview/", {**post, "max_age": "soon"})
    assert garbage.status_code == 400 and "not a number of seconds" in garbage.content.decode()
    confirm = admin.post(f"/streams/{name}/delete-stream/").content.decode()
    assert f"Delete stream {name}" in confirm and _info(nats_server.url, name) is not None
    gone = admin.post(f"/streams/{name}/delete-stream/", {"confirm": name})
    assert "Deleted stream" in gone.content.decode() and _info(nats_server.url, name) is None


def test_the_cli_creates_edits_shows_and_deletes_with_the_same_checks(users, nats_server, capsys):
    name = _name()
    call_command("stream", "create", name, config=json.dumps({"subjects": [f"{name.lower()}.>"]}))
    assert "created" in capsys.readouterr().out and _info(nats_server.url, name)
    call_command("stream", "edit", name, config='{"max_msgs": 9}', dry_run=True)
    assert "max_msgs: -1 -> 9" in capsys.readouterr().out
    assert _info(nats_server.url, name)["config"]["max_msgs"] == -1
    call_command("stream", "edit", name, config='{"max_msgs": 9}')
    assert _info(nats_server.url, name)["config"]["max_msgs"] == 9
    with pytest.raises(CommandError, match="storage"):
        call_command("stream", "edit", name, config='{"storage": "memory"}')
    with pytest.raises(CommandError, match="unknown field"):
        call_command("stream", "edit", name, config='{"colour": 1}')
    with pytest.raises(CommandError, match="needs the admin role"):
        call_command("stream", "delete", name, user="viewer")
    call_command("stream", "info", name)
    assert "declared by the topology: no" in capsys.readouterr().out
    call_command("stream", "delete", name)
    assert _info(nats_server.url, name) is None


def test_on_nats_server_29_newer_features_are_refused_not_silently_dropped(
        client, users, old_server):
    client.force_login(users["admin"])
    name = _name()
    r = _post(client, {"name": name, "subjects": [f"{name.lower()}.>"], "allow_msg_ttl": True})
    assert r.status_code == 400
    assert "allow_msg_ttl needs nats-server 2.11.0 or newer; the bus runs 2.9" in r.json()["error"]
    assert _info(old_server.url, name) is None
    assert _post(client, {"name": name, "subjects": [f"{name.lower()}.>"]}).status_code == 201
    r = _put(client, name, {"max_msgs": 10, "allow_msg_schedules": True})
    assert r.status_code == 400 and "allow_msg_schedules needs nats-server 2.12.0" in r.json()["error"]
    assert _put(client, name, {"max_msgs": 10}).status_code == 200
    assert _info(old_server.url, name)["config"]["max_msgs"] == 10


def test_an_empty_description_clears_it_by_api_and_page_and_an_absent_one_keeps_it(
        admin, nats_server):
    name = _name()
    _add(nats_server.url, {"name": name, "subjects": [f"{name.lower()}.>"], "storage": "file",
                           "description": "orders"})
    kept = _put(admin, name, {"max_msgs": 5})
    assert kept.status_code == 200 and _info(nats_server.url, name)["config"]["description"] == "orders"
    preview = _put(admin, name, {"description": "", "dry_run": True})
    assert preview.status_code == 200 and preview.json()["diff"] == [["description", "orders", ""]]
    assert _put(admin, name, {"description": ""}).json()["applied"] is True
    assert not _info(nats_server.url, name)["config"].get("description")
    # The page: a description emptied in the edit form is a change; other empty boxes are not.
    _put(admin, name, {"description": "again"})
    post = {"subjects": f"{name.lower()}.>", "retention": "limits", "storage": "file",
            "num_replicas": "1", "discard": "old", "description": "", "max_age": ""}
    page = admin.post(f"/streams/{name}/edit/preview/", post).content.decode()
    body = json.loads(page.split('name="body" value="')[1].split('"')[0].replace("&quot;", '"'))
    assert body["description"] == "" and "max_age" not in body
    assert "Created" not in page and "description" in page
    done = admin.post(f"/streams/{name}/edit/apply/", {"body": json.dumps(body)})
    assert done.status_code == 200, done.content
    assert not _info(nats_server.url, name)["config"].get("description")


def test_an_edit_is_applied_only_to_the_config_it_was_previewed_on(admin, nats_server):
    """Two admins preview edits of one stream; the first applies; the second's apply,
    planned on the config before that, is refused (409, nothing changed, audited) instead
    of applying a diff nobody saw. Its preview again shows the change against now."""
    name = _name()
    _add(nats_server.url, {"name": name, "subjects": [f"{name.lower()}.>"], "storage": "file"})
    first = _put(admin, name, {"max_msgs": 100, "dry_run": True}).json()
    second = _put(admin, name, {"max_bytes": 4096, "dry_run": True}).json()
    assert first["based_on"] and first["based_on"] == second["based_on"]
    assert _put(admin, name, {"max_msgs": 100, "based_on": first["based_on"]}).status_code == 200
    late = _put(admin, name, {"max_bytes": 4096, "based_on": second["based_on"]})
    assert late.status_code == 409 and "changed since this edit was previewed" in late.json()["error"]
    config = _info(nats_server.url, name)["config"]
    assert (config["max_msgs"], config["max_bytes"]) == (100, -1)  # nothing changed
    assert AuditRecord.objects.filter(action="stream.edit", target=name, outcome="failed",
                                      detail__contains="changed since").count() == 1
    again = _put(admin, name, {"max_bytes": 4096, "dry_run": True}).json()
    assert again["based_on"] != second["based_on"]
    assert _put(admin, name, {"max_bytes": 4096, "based_on": again["based_on"]}).status_code == 200
    assert _put(admin, name, {"max_msgs": 5, "based_on": "x" * 65}).status_code == 400

    # The pages: the preview carries what it was planned on; a stale apply says so.
    post = {"subjects": f"{name.lower()}.>", "retention": "limits", "storage": "file",
            "num_replicas": "1", "discard": "old", "max_age": "60"}
    preview = admin.post(f"/streams/{name}/edit/preview/", post).content.decode()
    based_on = preview.split('name="based_on" value="')[1].split('"')[0]
    body = preview.split('name="body" value="')[1].split('"')[0].replace("&quot;", '"')
    assert _put(admin, name, {"max_msgs": 7}).status_code == 200  # someone else, meanwhile
    stale = admin.post(f"/streams/{name}/edit/apply/", {"body": body, "based_on": based_on})
    assert stale.status_code == 409 and "changed since this edit was previewed" in stale.content.decode()
    assert _info(nats_server.url, name)["config"]["max_age"] == 0


def test_an_empty_description_on_a_stream_without_one_is_no_change(admin, nats_server):
    """The edit form always posts its (empty) description field: on a stream that has none
    that is no change (it once showed `description: null -> ""` in every diff, and asked a
    declared stream's editor to confirm moving it from its declaration)."""
    name = _name()
    _add(nats_server.url, {"name": name, "subjects": [f"{name.lower()}.>"], "storage": "file"})
    post = {"subjects": f"{name.lower()}.>", "retention": "limits", "storage": "file",
            "num_replicas": "1", "discard": "old", "description": "", "max_msgs": "50"}
    preview = admin.post(f"/streams/{name}/edit/preview/", post).content.decode()
    assert "<code>max_msgs</code>" in preview and "<code>description</code>" not in preview
    assert _put(admin, name, {"description": "", "dry_run": True}).json()["diff"] == []
