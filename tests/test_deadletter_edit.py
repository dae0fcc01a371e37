"""Edit a dead letter and send it again (issue 15 item 6), on a real bus.

The replay's Nats-Msg-Id comes from (letter, generation, digest of the edit, target): the
same edit sent twice is one message in the target stream, a different edit is another;
the replay row keeps the edit whole and the audit record both versions; a bad edit is
refused and nothing is sent.
"""

import base64
import json

import pytest

from deadletters.models import DeadLetter, Replay
from kernel.models import AuditRecord
from lucent_bus import jetstream as js

from .conftest import bus, run
from .test_deadletter_pages import letters  # noqa: F401 - the fixture: two real dead letters

pytestmark = pytest.mark.django_db(transaction=True)


def _orders(url) -> list[dict]:
    async def read():
        nc = await bus(url)
        try:
            info = await js.stream_info(nc, "ORDERS")
            out = []
            for seq in range(info["state"]["first_seq"], info["state"]["last_seq"] + 1):
                msg = await js.next_message(nc, "ORDERS", seq)
                if msg is not None and msg["seq"] == seq:
                    out.append(msg)
            return out
        finally:
            await nc.close()

    return run(read())


def _replay(client, pk, **body):
    return client.post(f"/api/v1/deadletters/{pk}/replay/", body,
                       content_type="application/json")


def test_an_edit_is_sent_once_a_different_edit_again_and_both_versions_are_kept(
        client, users, letters, fresh_server):  # noqa: F811
    client.force_login(users["operator"])
    letter = letters["orders.eu.1"]
    fixed = json.dumps({"messageId": "m-1", "messageType": "ShipOrder", "payload": "fixed"})

    first = _replay(client, letter.pk, payload=fixed, headers={"X-Note": "mended"})
    assert first.status_code == 200, first.content
    again = _replay(client, letter.pk, payload=fixed, headers={"X-Note": "mended"})
    assert again.status_code == 200 and again.json()["duplicate"] is True
    other = _replay(client, letter.pk, payload=fixed.replace("fixed", "fixed twice"))
    assert other.status_code == 200 and other.json()["duplicate"] is False
    assert first.json()["edit_sha256"] != other.json()["edit_sha256"]

    # The replays (only they carry Lucent-Replay-Of), whatever else ORDERS holds meanwhile.
    sent = [m for m in _orders(fresh_server.url) if "Lucent-Replay-Of" in m["headers"]]
    assert [m["data"] for m in sent] == [fixed.encode(), fixed.replace("fixed", "fixed twice").encode()]
    assert sent[0]["headers"]["X-Note"] == "mended"
    assert sent[0]["headers"]["Nats-Msg-Id"] != sent[1]["headers"]["Nats-Msg-Id"]
    # Without headers in the edit the stored ones travel (the hostile one, as data).
    assert sent[1]["headers"]["X-Note"].startswith("<img")

    rows = Replay.objects.filter(dead_letter=letter).order_by("pk")
    assert rows[0].edit["payload"] == fixed and rows[0].edit["headers"] == {"X-Note": "mended"}
    record = AuditRecord.objects.filter(action="deadletter.replay_edited",
                                        outcome="ok").order_by("id").first()  # the first edit
    assert record.parameters["edited"]["payload"] == fixed
    assert "onerror" in record.parameters["original"]["payload"]
    assert record.parameters["edited"]["sha256"] == first.json()["edit_sha256"]


def test_an_edit_that_changes_nothing_is_the_plain_replay(client, users, letters, fresh_server):  # noqa: F811
    client.force_login(users["operator"])
    letter = letters["orders.eu.1"]
    before = len(_orders(fresh_server.url))
    plain = _replay(client, letter.pk)
    assert plain.status_code == 200
    stored = client.get(f"/api/v1/deadletters/{letter.pk}/").json()
    same = _replay(client, letter.pk, payload=stored["payload"])
    assert same.status_code == 200 and same.json()["duplicate"] is True
    assert len(_orders(fresh_server.url)) == before + 1


@pytest.mark.parametrize("body, says", [
    ({"headers": {"Nats-Msg-Id": "forged"}}, "set by the bus"),
    ({"headers": {"bad name": "x"}}, "not a valid token"),
    ({"headers": {"X-A": "one\r\ntwo"}}, "one line"),
    ({"headers": ["X-A"]}, "headers"),
    ({"payload": "%%%", "payload_encoding": "base64"}, "base64"),
    ({"payload": 7}, "payload"),
    ({"payload": "x", "payload_encoding": "rot13"}, "payload_encoding"),
])
def test_a_bad_edit_is_refused_and_nothing_is_sent(client, users, letters, fresh_server, body, says):  # noqa: F811
    client.force_login(users["operator"])
    before = len(_orders(fresh_server.url))
    answer = _replay(client, letters["orders.eu.1"].pk, **body)
    assert answer.status_code == 400 and says in answer.content.decode()
    assert len(_orders(fresh_server.url)) == before
    assert not Replay.objects.exists()
    assert DeadLetter.objects.get(pk=letters["orders.eu.1"].pk).status == DeadLetter.NEW


def test_a_binary_letter_is_edited_as_base64_and_viewers_cannot(client, users, letters, fresh_server):  # noqa: F811
    letter = letters["orders.us.2"]
    client.force_login(users["viewer"])
    refused = _replay(client, letter.pk, payload="aGk=", payload_encoding="base64")
    assert refused.status_code == 403 and not Replay.objects.exists()
    client.force_login(users["operator"])
    page = client.get(f"/deadletters/{letter.pk}/").content.decode()
    assert 'name="encoding" value="base64"' in page
    answer = _replay(client, letter.pk, payload=base64.b64encode(b"\x00ok").decode(),
                     payload_encoding="base64")
    assert answer.status_code == 200, answer.content
    assert _orders(fresh_server.url)[-1]["data"] == b"\x00ok"


def test_the_page_asks_with_what_changed_then_sends_the_edit(client, users, letters, fresh_server):  # noqa: F811
    client.force_login(users["operator"])
    letter = letters["orders.eu.1"]
    page = client.get(f"/deadletters/{letter.pk}/").content.decode()
    assert "Edit and replay" in page and "X-Note: &lt;img" in page  # escaped in the form
    form = {"edit": "1", "subject": letter.subject, "encoding": "text",
            "payload": '{"payload": "<b>fixed</b>"}', "headers": "X-Note: mended\nX-New: 1"}
    ask = client.post(f"/deadletters/{letter.pk}/replay/", form, HTTP_HX_REQUEST="true")
    text = ask.content.decode()
    assert ask.status_code == 200 and "Replay 1 edited dead letter" in text
    assert "added X-New" in text and "changed X-Note" in text and "<b>fixed" not in text
    assert not Replay.objects.exists()  # asking sends nothing
    done = client.post(f"/deadletters/{letter.pk}/replay/", {**form, "confirm": "1"},
                       HTTP_HX_REQUEST="true")
    assert "Edited letter replayed" in done.content.decode()
    assert _orders(fresh_server.url)[-1]["data"] == b'{"payload": "<b>fixed</b>"}'
    bad = client.post(f"/deadletters/{letter.pk}/replay/", {**form, "headers": "no colon"},
                      HTTP_HX_REQUEST="true")
    assert bad.status_code == 400 and "Name: value" in bad.content.decode()
