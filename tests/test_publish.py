"""Publish and request (issue 15 item 5) against a real nats-server.

Operators publish to a subject (stored: the answer names stream and sequence) or send a
request (the reply and its time; a stream's PubAck is called what it is); the bus's own
subjects are refused; every send is audited with the payload's digest, never the
payload; a viewer is refused and nothing is sent.
"""

import asyncio
import hashlib
import threading

import pytest

from kernel.models import AuditRecord
from lucent_bus import jetstream as js

from .conftest import bus, run

pytestmark = pytest.mark.django_db(transaction=True)
XSS = "<script>alert(1)</script>"


class Responder:
    """A service in a thread of its own: answers requests on ``subject``."""

    def __init__(self, url: str, subject: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready, self.stop = threading.Event(), None
        self.thread = threading.Thread(target=self.loop.run_until_complete,
                                       args=(self._serve(url, subject),), daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    async def _serve(self, url, subject):
        nc = await bus(url)
        self.stop = asyncio.Event()

        async def answer(msg):
            await msg.respond(b'{"ok": true, "echo": ' + str(len(msg.data)).encode() + b', '
                              b'"note": "' + XSS.encode() + b'"}')

        await nc.subscribe(subject, cb=answer)
        await nc.flush()
        self.ready.set()
        await self.stop.wait()
        await nc.close()

    def close(self):
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(5)


@pytest.fixture
def bus_with_stream(nats_server):
    async def setup():
        nc = await bus(nats_server.url)
        try:
            await js.add_stream(nc, {"name": "PUBTEST", "subjects": ["pubtest.>"],
                                     "storage": "memory"})
        except js.JetStreamError:
            await js.purge_stream(nc, "PUBTEST")
        await nc.close()

    run(setup())
    return nats_server


def _post(client, **body):
    return client.post("/api/v1/publish/", body, content_type="application/json")


def test_publish_to_a_stored_subject_names_stream_and_seq_and_audits_a_digest(
        client, users, bus_with_stream):
    client.force_login(users["operator"])
    answer = _post(client, subject="pubtest.orders.1", payload=XSS,
                   headers={"Nats-Msg-Id": "pub-1", "X-Why": "test"})
    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert body["stream"] == "PUBTEST" and body["seq"] >= 1 and body["duplicate"] is False
    assert body["sha256"] == hashlib.sha256(XSS.encode()).hexdigest()
    again = _post(client, subject="pubtest.orders.1", payload=XSS, headers={"Nats-Msg-Id": "pub-1"})
    assert again.json()["duplicate"] is True  # the stream's dedup window, by the header given

    async def stored():
        nc = await bus(bus_with_stream.url)
        msg = await js.next_message(nc, "PUBTEST", body["seq"])
        await nc.close()
        return msg

    msg = run(stored())
    assert msg["headers"]["X-Why"] == "test"
    record = AuditRecord.objects.filter(action="bus.publish", outcome="ok").first()
    assert record.parameters["sha256"] == body["sha256"] and record.parameters["bytes"] == len(XSS)
    assert XSS not in str(record.parameters)  # a digest, never the payload


def test_a_request_gets_the_reply_and_a_stored_subject_says_the_reply_is_a_pub_ack(
        client, users, bus_with_stream):
    client.force_login(users["operator"])
    service = Responder(bus_with_stream.url, "pubsvc.ping")
    try:
        answer = _post(client, subject="pubsvc.ping", payload="hello", request=True,
                       timeout_ms=2000)
    finally:
        service.close()
    assert answer.status_code == 200, answer.content
    reply = answer.json()
    assert reply["ms"] > 0 and '"ok": true' in reply["reply"]["payload"] and "pub_ack" not in reply
    trap = _post(client, subject="pubtest.cmd", payload="{}", request=True).json()
    assert trap["pub_ack"]["stream"] == "PUBTEST"  # the ADR's trap, named
    nobody = _post(client, subject="nobody.listens.here", payload="x", request=True,
                   timeout_ms=500)
    assert nobody.status_code == 400 and "no responders" in nobody.json()["error"]


@pytest.mark.parametrize("body, status", [
    ({"subject": "$JS.API.STREAM.DELETE.PUBTEST", "payload": ""}, 400),
    ({"subject": "$KV.LUCENT_LEADER.collector", "payload": "x"}, 400),
    ({"subject": "lucent.console.snapshot", "payload": "x"}, 400),
    ({"subject": "pubtest.*", "payload": "x"}, 400),
    ({"subject": "pubtest.a", "payload": "x", "headers": {"Lucent-DL-Reason": "forged"}}, 400),
    ({"subject": "pubtest.a", "payload": "x", "headers": {"X": "a\nb"}}, 400),
    ({"subject": "pubtest.a", "payload": "x", "timeout_ms": 0}, 400),
    ({"subject": "pubtest.a", "payload": "x", "extra": 1}, 400),
    ({"subject": "pubtest.a", "payload": "%%", "payload_encoding": "base64"}, 400),
])
def test_bad_or_forbidden_sends_are_refused_and_nothing_is_stored(
        client, users, bus_with_stream, body, status):
    client.force_login(users["operator"])

    async def count():
        nc = await bus(bus_with_stream.url)
        info = await js.stream_info(nc, "PUBTEST")
        await nc.close()
        return info["state"]["messages"]

    before = run(count())
    assert _post(client, **body).status_code == status
    assert run(count()) == before


def test_a_viewer_cannot_publish_and_the_page_reviews_before_sending(client, users, bus_with_stream):
    client.force_login(users["viewer"])
    assert _post(client, subject="pubtest.v", payload="x").status_code == 403
    assert AuditRecord.objects.filter(action="bus.publish", outcome="refused").exists()
    client.force_login(users["operator"])
    page = client.get("/publish/").content.decode()
    assert "Fill an ADR envelope" in page
    template = client.get("/publish/template/?subject=pubtest.t&message_type=Ping").content.decode()
    assert "messageId" in template and "correlationId" in template and "Ping" in template
    form = {"subject": "pubtest.page", "payload": XSS, "headers": "X-A: 1", "timeout_ms": "2000"}
    review = client.post("/publish/", form, HTTP_HX_REQUEST="true").content.decode()
    assert "Publish to" in review and "PUBTEST" in review and "<script>alert" not in review
    assert not AuditRecord.objects.filter(action="bus.publish", outcome="ok").exists()
    sent = client.post("/publish/", {**form, "confirm": "1"}, HTTP_HX_REQUEST="true")
    assert "Stored in" in sent.content.decode() and "PUBTEST" in sent.content.decode()


def test_a_confirmed_publish_sent_twice_from_the_page_is_one_message(client, users, bus_with_stream):
    client.force_login(users["operator"])
    form = {"subject": "pubtest.twice", "payload": "once", "timeout_ms": "2000"}
    review = client.post("/publish/", form, HTTP_HX_REQUEST="true").content.decode()
    msg_id = review.split('name="msg_id" value="')[1].split('"')[0]
    assert msg_id.startswith("console-")
    first = client.post("/publish/", {**form, "msg_id": msg_id, "confirm": "1"},
                        HTTP_HX_REQUEST="true").content.decode()
    second = client.post("/publish/", {**form, "msg_id": msg_id, "confirm": "1"},
                         HTTP_HX_REQUEST="true").content.decode()
    assert "Stored in" in first and "a duplicate" in second


def test_writing_into_the_console_s_dead_letters_needs_an_admin_who_confirms(
        client, users, bus_with_stream):
    async def dead_letters():
        nc = await bus(bus_with_stream.url)
        try:
            await js.add_stream(nc, {"name": "DEAD_LETTERS", "subjects": ["lucent.deadletter.>"],
                                     "storage": "memory"})
        except js.JetStreamError:
            pass  # an earlier test's: the same stream
        await nc.close()

    run(dead_letters())
    body = {"subject": "lucent.deadletter.PUBTEST.worker", "payload": "x"}
    client.force_login(users["operator"])
    assert _post(client, **body, confirm_own=True).status_code == 403
    client.force_login(users["admin"])
    unconfirmed = _post(client, **body)
    assert unconfirmed.status_code == 403 and "dead-letter store" in unconfirmed.json()["error"]
    review = client.post("/publish/", {**body, "timeout_ms": "2000"},
                         HTTP_HX_REQUEST="true").content.decode()
    assert 'name="confirm_own"' in review
    done = _post(client, **body, confirm_own=True)
    assert done.status_code == 200 and done.json()["stream"] == "DEAD_LETTERS"
    outcomes = list(AuditRecord.objects.filter(target=body["subject"]).order_by("id")
                    .values_list("username", "outcome"))
    assert outcomes == [("operator", "refused"), ("admin", "refused"), ("admin", "ok")]
