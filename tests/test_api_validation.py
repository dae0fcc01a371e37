"""Strict request bodies, the bus's own subjects, every attempt audited (issue 12, 1-3).

Each hostile request answers 400 (or 403) naming the reason, and changes nothing:
the streams hold the same messages, no dead letter changes, no job starts, no alert is
acknowledged or silenced, and nothing is sent on the bus but reads (checked on a real
nats-server by a subscription to every subject).
"""

from __future__ import annotations

import asyncio
import json
import threading
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from alerts import defaults
from alerts.models import Alert, Rule, Silence
from deadletters import plans, replay
from deadletters.models import DeadLetter
from kernel.actions import ActionError, audited
from kernel.models import AuditRecord, Job
from lucent_bus import jetstream as js
from streams import replay as stream_replay

from .conftest import bus, run
from .test_deadletter_pages import _letters

pytestmark = pytest.mark.django_db(transaction=True)

RESERVED = ["$JS.API.STREAM.DELETE.DEAD_LETTERS", "$JS.API.STREAM.PURGE.SECTEST",
            "$KV.LUCENT_LEADER.collector", "$O.bucket.x", "$SYS.REQ.SERVER.PING",
            "_INBOX.abc", "lucent.console.live.full"]
# What the console may send while refusing: reads of the bus, replies. Anything else
# (a publish, a purge, a delete, a probe request) means the refusal changed something.
READS = ("$JS.API.INFO", "$JS.API.STREAM.INFO.", "$JS.API.STREAM.NAMES", "$JS.API.STREAM.LIST",
         "$JS.API.CONSUMER.INFO.", "$JS.API.CONSUMER.LIST.", "$JS.API.CONSUMER.NAMES.",
         "_INBOX.", "lucent.console.live.", "$JS.EVENT.ADVISORY.API")


class Watch:
    """Every subject anyone sends on the test's bus, from a thread of its own."""

    def __init__(self, url: str) -> None:
        self.url, self.seen, self.ready = url, [], threading.Event()
        self.loop = asyncio.new_event_loop()
        self.stop = None
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._run(),),
                                       daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    async def _run(self) -> None:
        nc = await bus(self.url)
        self.stop = asyncio.Event()

        async def seen(msg):
            self.seen.append(msg.subject)

        await nc.subscribe(">", cb=seen)
        await nc.flush()
        self.ready.set()
        await self.stop.wait()
        await nc.close()

    def writes(self) -> list[str]:
        return [s for s in self.seen if not s.startswith(READS)]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)


async def _streams(url: str) -> dict:
    nc = await bus(url)
    out = {}
    for name in ("SECTEST", "ORDERS", "PROJ", "DEAD_LETTERS"):
        out[name] = (await js.stream_info(nc, name))["state"]["messages"]
    await nc.close()
    return out


async def _setup(url: str) -> None:
    nc = await bus(url)
    await js.add_stream(nc, {"name": "SECTEST", "subjects": ["sectest.>"], "storage": "file"})
    await js.add_stream(nc, {"name": "PROJ", "subjects": ["proj.>"], "storage": "file"})
    for i in range(15):
        await nc.jetstream().publish(f"sectest.{i % 3}", str(i).encode())
    await nc.close()


@pytest.fixture
def world(fresh_server, monkeypatch, users):
    """A bus with SECTEST (15 messages), dead letters, a queued job and a firing alert."""
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    run(_letters(fresh_server.url))
    run(_setup(fresh_server.url))
    defaults.install(Rule)
    alert = Alert.objects.create(rule=Rule.objects.get(name="consumer-pending"), key="k:S/c",
                                 subject="S/c", severity="warning", message="50 pending")
    job = Job.objects.create(kind="purge", total=0, params={"filters": {"stream": "X"}})
    watch = Watch(fresh_server.url)
    yield {"url": fresh_server.url, "alert": alert, "job": job, "watch": watch,
           "letter": DeadLetter.objects.order_by("pk").first()}
    watch.close()


def _state(world) -> dict:
    alert = Alert.objects.get(pk=world["alert"].pk)
    return {"streams": run(_streams(world["url"])),
            "letters": sorted(DeadLetter.objects.values_list("pk", "status")),
            "jobs": sorted(Job.objects.values_list("pk", "state")),
            "silences": Silence.objects.count(), "acknowledged": alert.acknowledged_by_id}


def _paths(world) -> dict[str, str]:
    pk, job, alert = world["letter"].pk, world["job"].pk, world["alert"].pk
    return {"purge": "/api/v1/streams/SECTEST/purge/", "replay": "/api/v1/streams/SECTEST/replay/",
            "dl_replay": f"/api/v1/deadletters/{pk}/replay/", "dl_delete": f"/api/v1/deadletters/{pk}/",
            "bulk_replay": "/api/v1/deadletters/replay/", "bulk_purge": "/api/v1/deadletters/purge/",
            "cancel": f"/api/v1/jobs/{job}/cancel/", "probe": "/api/v1/probe/",
            "ack": f"/api/v1/alerts/{alert}/ack/", "silence": f"/api/v1/alerts/{alert}/silence/"}


# (endpoint, raw JSON body, the field the answer names or None for a whole-body error)
HOSTILE = [
    ("purge", "[1, 2, 3]", None), ("purge", '"string"', None), ("purge", "{}", "all"),
    ("purge", '{"all": false}', "all"), ("purge", '{"seq": 1e400}', "seq"),
    ("purge", '{"keep": "NaN"}', "keep"), ("purge", '{"subjet": "sectest.1"}', "subjet"),
    ("purge", '{"all": true, "subject": "sectest.1"}', "all"), ("purge", '{"seq": true}', "seq"),
    ("purge", '{"keep": -1}', "keep"), ("purge", '{"subject": {"a": 1}}', "subject"),
    ("purge", '{"keep": 1, "seq": 3}', None), ("purge", "{", None), ("purge", "null", None),
    ("replay", "[1]", None), ("replay", "{}", "target"),
    ("replay", '{"target": "proj.x", "rate": 1e400}', "rate"),
    ("replay", '{"target": "proj.x", "rate": 0}', "rate"),
    ("replay", '{"target": "proj.x", "rate": "Infinity"}', "rate"),
    ("replay", '{"target": "proj.x", "start_seq": 1e400}', "start_seq"),
    ("replay", '{"target": "proj.x", "extra": 1}', "extra"),
    ("replay", '{"target": "lucent.deadletter.ORDERS.x"}', "target"),
    ("dl_replay", '"string"', None), ("dl_replay", '{"subject": {"a": 1}}', "subject"),
    ("dl_replay", '{"remove_original": "maybe"}', "remove_original"),
    ("dl_replay", '{"subject": "proj.*"}', "subject"),
    ("dl_delete", '{"x": 1}', "x"),
    ("bulk_replay", '"string"', None), ("bulk_replay", "{}", "all"),
    ("bulk_replay", '{"all": false}', "all"), ("bulk_replay", '{"all": true, "rate": 1e400}', "rate"),
    ("bulk_replay", '{"all": true, "rate": -1}', "rate"),
    ("bulk_replay", '{"all": true, "stream": "ORDERS"}', "all"),
    ("bulk_replay", '{"stream": ["ORDERS"]}', "stream"), ("bulk_replay", '{"bogus": 1}', "bogus"),
    ("bulk_replay", '{"subject": "proj.x"}', "all"), ("bulk_replay", '{"dry_run": true}', "all"),
    ("bulk_purge", "[]", None), ("bulk_purge", "{}", "all"), ("bulk_purge", '{"status": "bogus"}', "status"),
    ("bulk_purge", '{"subject": "a..b"}', "subject"), ("bulk_purge", '{"since": "yesterday"}', "since"),
    ("bulk_purge", '{"all": true, "rate": 5}', "rate"),
    ("cancel", '{"x": 1}', "x"), ("cancel", "[1]", None),
    ("probe", "[]", None), ("probe", "{}", "subject"),
    ("probe", '{"subject": "x.y", "count": 1e400}', "count"),
    ("probe", '{"subject": "x.y", "timeout": "inf"}', "timeout"),
    ("probe", '{"subject": "x.y", "timeout": 0}', "timeout"),
    ("probe", '{"subject": "x.y", "count": 0}', "count"), ("probe", '{"subject": "x.*"}', "subject"),
    ("probe", '{"subject": "x.y", "payload": 5}', "payload"),
    ("ack", '{"minutes": 5}', "minutes"), ("ack", "[1]", None),
    ("silence", '{"minutes": 1e400}', "minutes"), ("silence", '{"minutes": 0}', "minutes"),
    ("silence", '{"minutes": "x"}', "minutes"), ("silence", '"string"', None),
    ("silence", '{"minutes": 5, "x": 1}', "x"), ("silence", '{"minutes": 2.5}', "minutes"),
]
ROLE = {"purge": "admin"}


def test_hostile_bodies_answer_400_naming_the_field_change_nothing_and_are_audited(
        client, users, world):
    # One bus for all the cases: a fresh one each would cost seconds per case.
    before, paths = _state(world), _paths(world)
    for endpoint, body, field in HOSTILE:
        client.force_login(users[ROLE.get(endpoint, "operator")])
        audits = AuditRecord.objects.count()
        method = client.delete if endpoint == "dl_delete" else client.post
        r = method(paths[endpoint], body, content_type="application/json")
        case = f"{endpoint} {body}: {r.status_code} {r.content[:300]!r}"
        assert r.status_code == 400, case
        answer = r.json()
        assert answer["error"], case
        if field is not None:
            assert field in answer["fields"], case
        # Audited, with the body as sent (clipped text), never the value it parses to.
        assert AuditRecord.objects.count() == audits + 1, case
        record = AuditRecord.objects.order_by("-id").first()
        assert record.outcome == "failed" and "invalid request" in record.detail, case
        assert record.parameters == {"body": body[:500]}, case
        json.dumps(record.parameters, allow_nan=False)
    assert _state(world) == before
    assert world["watch"].writes() == []


def test_a_viewer_is_refused_403_whatever_the_body_and_it_is_audited(client, users, world):
    client.force_login(users["viewer"])
    before = _state(world)
    endpoints = ("purge", "bulk_replay", "bulk_purge", "dl_replay", "probe", "silence", "cancel",
                 "replay")
    for endpoint in endpoints:
        for body in ('{"all": true}', "[1]", '{"rate": 1e400}'):
            r = client.post(_paths(world)[endpoint], body, content_type="application/json")
            assert r.status_code == 403 and r.json()["error"], (endpoint, body)
    assert _state(world) == before and world["watch"].writes() == []
    assert AuditRecord.objects.filter(outcome="refused", username="viewer").count() == (
        3 * len(endpoints))


def test_the_bus_own_subjects_are_refused_for_probe_and_replays(client, users, world):
    client.force_login(users["operator"])
    before = _state(world)
    paths = _paths(world)
    for subject in RESERVED:
        for path, body in ((paths["probe"], {"subject": subject}),
                           (paths["dl_replay"], {"subject": subject}),
                           (paths["bulk_replay"], {"subject": subject, "all": True}),
                           (paths["replay"], {"target": subject})):
            r = client.post(path, body, content_type="application/json")
            assert r.status_code == 400, (path, r.content)
            assert "bus's own subjects" in r.json()["error"], r.json()
        page = client.post("/services/probe/", {"subject": subject, "count": "1"})
        assert page.status_code == 400 and "own subjects" in page.content.decode()
    assert _state(world) == before and world["watch"].writes() == []
    assert AuditRecord.objects.filter(outcome="failed").count() == 5 * len(RESERVED)


def test_the_services_refuse_the_bus_own_subjects_themselves(users, world):
    """Pages, the admin and the CLI call the services with text: the same refusal."""
    from agents.probe import probe

    operator, pk = users["operator"], world["letter"].pk
    for subject in RESERVED:
        with pytest.raises(ActionError, match="own subjects"):
            probe(operator, subject)
        with pytest.raises(ActionError, match="own subjects"):
            replay.replay(operator, pk, subject)
        with pytest.raises(ActionError, match="own subjects"):
            stream_replay.start_stream_replay(operator, "SECTEST", subject)
        with pytest.raises(ActionError, match="own subjects"):
            plans.start_job(operator, "replay", {"stream": "ORDERS"}, subject)
    with pytest.raises(ActionError, match="dead letters themselves"):
        replay.replay(operator, pk, "lucent.deadletter.ORDERS.shipper")
    with pytest.raises(ActionError, match="above 0 and finite"):
        stream_replay.start_stream_replay(operator, "SECTEST", "proj.x", rate="1e400")
    with pytest.raises(ActionError, match="above 0 and finite"):
        plans.start_job(operator, "replay", {"stream": "ORDERS"}, rate=float("nan"))
    assert world["watch"].writes() == []
    for record in AuditRecord.objects.all():
        json.dumps(record.parameters, allow_nan=False)


def test_1e400_is_refused_and_leaves_an_audit_record_everywhere(client, users, world):
    client.force_login(users["admin"])
    paths = _paths(world)
    for path, body in ((paths["purge"], '{"seq": 1e400}'),
                       (paths["bulk_replay"], '{"all": true, "rate": 1e400}'),
                       (paths["silence"], '{"minutes": 1e400}'),
                       (paths["probe"], '{"subject": "x.y", "count": 1e400}')):
        r = client.post(path, body, content_type="application/json")
        assert r.status_code == 400 and "fields" in r.json()
        record = AuditRecord.objects.order_by("-id").first()
        assert record.outcome == "failed" and "1e400" in record.parameters["body"]
    assert AuditRecord.objects.count() == 4


def test_valid_bodies_still_act_and_everything_takes_all(client, users, world):
    client.force_login(users["admin"])
    paths = _paths(world)
    r = client.post(paths["purge"], {"subject": "sectest.1"}, content_type="application/json")
    assert r.status_code == 200 and r.json()["purged"] == 5
    r = client.post(paths["purge"], {"all": True}, content_type="application/json")
    assert r.status_code == 200 and r.json()["purged"] == 10
    assert run(_streams(world["url"]))["SECTEST"] == 0
    dry = client.post(paths["bulk_replay"], {"all": True, "dry_run": True},
                      content_type="application/json").json()
    assert dry["dry_run"] is True and dry["matched"] == 2
    r = client.post(paths["bulk_purge"], {"stream": "ORDERS", "plan": dry["plan"]},
                    content_type="application/json")
    assert r.status_code == 400 and "differ" in r.json()["error"]  # not what the dry run counted
    r = client.post(paths["silence"], {"minutes": 5}, content_type="application/json")
    assert r.status_code == 200 and r.json()["silenced_until"]
    r = client.post(paths["cancel"], {}, content_type="application/json")
    assert r.status_code == 200 and r.json()["state"] in ("cancelling", "cancelled")
    records = AuditRecord.objects.filter(action="stream.purge").order_by("id")
    assert [r.parameters for r in records] == [{"subject": "sectest.1"}, {"all": True}]


def test_the_cli_validates_with_the_api_serializers(users, world):
    before, audits = _state(world), AuditRecord.objects.count()
    with pytest.raises(CommandError, match="rate"):
        call_command("deadletters", "replay", "--all", "--rate", "1e400", "--user", "operator")
    with pytest.raises(CommandError, match="own subjects"):
        call_command("deadletters", "replay", "--stream", "ORDERS", "--to",
                     "$KV.LUCENT_LEADER.collector", "--user", "operator")
    with pytest.raises(CommandError, match="own subjects"):
        call_command("deadletters", "replay", "--id", str(world["letter"].pk), "--to",
                     "_INBOX.x", "--user", "operator")
    with pytest.raises(CommandError, match="give a filter, or --all"):
        call_command("deadletters", "purge", "--user", "operator")
    assert _state(world) == before and world["watch"].writes() == []
    assert AuditRecord.objects.filter(outcome="failed").count() == audits + 4
    out = StringIO()
    call_command("deadletters", "list", "--json", stdout=out)
    api_like = json.loads(out.getvalue())["results"]
    assert {r["id"] for r in api_like} == set(DeadLetter.objects.values_list("pk", flat=True))


def test_the_audit_stores_any_parameters_json_safe_and_clipped(users):
    nested: dict = {}
    cursor = nested
    for _ in range(50):
        cursor["x"] = {}
        cursor = cursor["x"]
    params = {"rate": float("inf"), "nan": float("nan"), "big": "x" * 100_000, "deep": nested,
              "many": list(range(10_000)), "bytes": b"\xff\x00", "obj": object(), "huge": 10**40}
    with audited(users["operator"], "test.action", "t" * 2000, params, "operator"):
        pass
    record = AuditRecord.objects.get(action="test.action")
    text = json.dumps(record.parameters, allow_nan=False)
    assert len(text) <= 4100 and record.target == "t" * 512


def test_the_schema_describes_every_body_without_warnings():
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", "/dev/null")
