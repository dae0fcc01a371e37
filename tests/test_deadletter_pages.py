"""Dead letters through the pages, the JSON API and the command line."""

import base64
import json
from io import StringIO

import pytest
from django.core.management import call_command

from deadletters.models import DeadLetter
from kernel.models import AuditRecord
from lucent_bus import deadletters as dl

from .conftest import bus, run
from .deadletter_bus import drain, fail, work_stream

pytestmark = pytest.mark.django_db(transaction=True)
XSS = "<img src=x onerror=alert(1)>"


async def _letters(url):
    nc = await bus(url)
    await work_stream(nc)
    jsn = nc.jetstream()
    await jsn.publish("orders.eu.1", json.dumps({"messageId": "m-1", "messageType": "ShipOrder",
                                                 "correlationId": "corr-1", "payload": XSS}).encode(),
                      headers={"X-Note": XSS})
    await jsn.publish("orders.us.2", b"\xff\xfe binary")
    await fail(nc, set())
    import asyncio

    await asyncio.sleep(0.2)
    await drain(nc)
    await nc.close()


@pytest.fixture
def letters(fresh_server, monkeypatch, users):
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    run(_letters(fresh_server.url))
    assert DeadLetter.objects.count() == 2
    return {d.subject: d for d in DeadLetter.objects.all()}


def test_the_api_lists_filters_and_shows_payloads(client, users, letters):
    client.force_login(users["viewer"])
    body = client.get("/api/v1/deadletters/").json()
    assert body["count"] == 2
    for key in ("id", "stream", "stream_seq", "subject", "consumer", "deliveries", "reason",
                "captured_at", "message_id", "correlation_id", "message_type", "status"):
        assert key in body["results"][0]
    assert client.get("/api/v1/deadletters/?subject=orders.eu.*").json()["count"] == 1
    assert client.get("/api/v1/deadletters/?subject=orders.>").json()["count"] == 2
    assert client.get("/api/v1/deadletters/?correlation_id=corr-1").json()["count"] == 1
    assert client.get("/api/v1/deadletters/?q=onerror").json()["count"] == 1
    assert client.get("/api/v1/deadletters/?status=bogus").status_code == 400
    text = client.get(f"/api/v1/deadletters/{letters['orders.eu.1'].pk}/").json()
    assert text["payload_encoding"] == "text" and XSS in text["payload"]
    assert text["headers"]["X-Note"] == XSS and text["headers"][dl.H_REASON] == "max_deliveries"
    binary = client.get(f"/api/v1/deadletters/{letters['orders.us.2'].pk}/").json()
    assert binary["payload_encoding"] == "base64"
    assert base64.b64decode(binary["payload"]) == b"\xff\xfe binary"
    assert client.get("/api/v1/deadletters/999999/").status_code == 404


def test_viewers_get_403_on_every_action_and_nothing_changes(client, users, letters):
    client.force_login(users["viewer"])
    pk = letters["orders.eu.1"].pk
    for path in (f"/api/v1/deadletters/{pk}/replay/", "/api/v1/deadletters/replay/",
                 "/api/v1/deadletters/purge/"):
        assert client.post(path, {}, content_type="application/json").status_code == 403, path
    assert client.delete(f"/api/v1/deadletters/{pk}/").status_code == 403
    assert client.post(f"/deadletters/{pk}/replay/").status_code == 403
    assert client.post("/deadletters/bulk/", {"action": "purge", "confirm": "1"}).status_code == 403
    assert set(DeadLetter.objects.values_list("status", flat=True)) == {"new"}
    assert client.get(f"/api/v1/deadletters/{pk}/replay/").status_code == 405


def test_operators_replay_dry_run_and_jobs_through_the_api(client, users, letters):
    client.force_login(users["operator"])
    pk = letters["orders.eu.1"].pk
    r = client.post(f"/api/v1/deadletters/{pk}/replay/", {}, content_type="application/json")
    assert r.status_code == 200 and r.json()["status"] == "replayed"
    dry = client.post("/api/v1/deadletters/replay/", {"dry_run": True, "stream": "ORDERS"},
                      content_type="application/json").json()
    assert dry["dry_run"] is True and dry["matched"] == 2
    bad = client.post("/api/v1/deadletters/replay/", {"subject": "nowhere.x", "all": True},
                      content_type="application/json")
    assert bad.status_code == 400 and "no stream stores" in bad.json()["error"]
    job = client.post("/api/v1/deadletters/purge/", {"subject": "orders.us.*"},
                      content_type="application/json").json()
    assert job["matched"] == 1
    state = client.get(f"/api/v1/jobs/{job['job']}/").json()
    assert (state["state"], state["total"], state["done"], state["failed"]) == ("done", 1, 1, 0)
    assert DeadLetter.objects.get(subject="orders.us.2").status == "purged"
    actions = set(AuditRecord.objects.values_list("action", "outcome"))
    assert {("deadletter.replay", "ok"), ("deadletter.replay_bulk", "failed"),
            ("deadletter.purge_bulk", "ok")} <= actions


def test_the_pages_group_escape_and_act(client, users, letters):
    client.force_login(users["operator"])
    page = client.get("/deadletters/").content.decode()
    assert "ShipOrder</strong>" not in page and "1</strong> ShipOrder from shipper: max_deliveries" in page
    detail = client.get(f"/deadletters/{letters['orders.eu.1'].pk}/").content.decode()
    assert XSS not in detail and "&lt;img src=x onerror=alert(1)&gt;" in detail
    assert "payload unavailable" not in detail
    binary = client.get(f"/deadletters/{letters['orders.us.2'].pk}/").content.decode()
    assert "ff fe 20 62" in binary
    dry = client.post("/deadletters/bulk/", {"action": "replay", "stream": "ORDERS"}).content.decode()
    assert "Replay 2 dead letters?" in dry and "orders.eu.1" in dry
    done = client.post("/deadletters/bulk/", {"action": "replay", "stream": "ORDERS", "confirm": "1"})
    assert "done" in done.content.decode() and "2 done" in done.content.decode()


def test_the_command_line_uses_the_same_service_layer(letters, users):
    out = StringIO()
    call_command("deadletters", "list", "--json", "--stream", "ORDERS", stdout=out)
    assert json.loads(out.getvalue())["count"] == 2
    out = StringIO()
    call_command("deadletters", "replay", "--id", str(letters["orders.eu.1"].pk), "--user",
                 "operator", stdout=out)
    assert '"status": "replayed"' in out.getvalue()
    with pytest.raises(Exception, match="needs the operator role"):
        call_command("deadletters", "purge", "--id", str(letters["orders.eu.1"].pk), "--user", "viewer")
    assert AuditRecord.objects.filter(username="viewer", outcome="refused").count() == 1


def test_the_django_admin_lists_and_replays_selected(client, users, letters):
    operator = users["operator"]
    operator.is_staff = True
    operator.save()
    from django.contrib.auth.models import Permission

    operator.user_permissions.add(Permission.objects.get(codename="view_deadletter"))
    client.force_login(operator)
    page = client.get("/admin/deadletters/deadletter/")
    assert page.status_code == 200 and "orders.eu.1" in page.content.decode()
    pk = letters["orders.eu.1"].pk
    done = client.post("/admin/deadletters/deadletter/", {"action": "replay_selected",
                                                       "_selected_action": [pk]}, follow=True)
    assert "Replayed 1, failed 0 (audited)" in done.content.decode()
    assert DeadLetter.objects.get(pk=pk).status == "replayed"
    assert AuditRecord.objects.filter(action="deadletter.replay", username="operator").exists()
    assert client.get("/admin/lucent_console/auditrecord/").status_code in (200, 403)
