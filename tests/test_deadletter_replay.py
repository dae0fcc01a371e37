"""Dead letters: one replay is exactly once, a subject no stream stores is refused, and
viewers can neither replay nor purge (each refusal audited, nothing changed)."""

import pytest
from asgiref.sync import sync_to_async

from deadletters import plans, replay
from deadletters.models import DeadLetter
from kernel.actions import ActionError, Refused
from kernel.models import AuditRecord, Job
from lucent_bus import deadletters as dl
from lucent_bus import jetstream as js

from .deadletter_bus import captured, replayed_messages

pytestmark = pytest.mark.django_db(transaction=True)


async def test_replay_is_exactly_once_even_when_asked_twice(fresh_nc, fresh_server, users,
                                                           monkeypatch):
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    await captured(fresh_nc, 1)
    letter = await sync_to_async(DeadLetter.objects.get)()
    operator = users["operator"]
    first = await sync_to_async(replay.replay)(operator, letter.pk)
    second = await sync_to_async(replay.replay)(operator, letter.pk)  # double click / 2nd operator
    assert first["status"] == "replayed" and first["subject"] == "orders.eu.0"
    assert first["duplicate"] is False and second["duplicate"] is True
    assert first["seq"] == second["seq"]
    assert await replayed_messages(fresh_nc) == 1  # the consumer sees it once
    stored = await js.next_message(fresh_nc, "ORDERS", first["seq"])
    assert stored["headers"]["Nats-Msg-Id"] == replay.replay_msg_id(letter.dl_seq, "orders.eu.0",
                                                                 letter.generation)
    assert "Lucent-DL-Reason" not in stored["headers"]
    await sync_to_async(letter.refresh_from_db)()
    assert letter.status == DeadLetter.REPLAYED
    records = await sync_to_async(list)(AuditRecord.objects.filter(action="deadletter.replay"))
    assert [r.outcome for r in records] == ["ok", "ok"]


async def test_replay_to_a_subject_no_stream_stores_is_refused(fresh_nc, fresh_server, users,
                                                              monkeypatch):
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    await captured(fresh_nc, 1)
    letter = await sync_to_async(DeadLetter.objects.get)()
    with pytest.raises(ActionError, match="no stream stores 'nowhere.at.all'"):
        await sync_to_async(replay.replay)(users["operator"], letter.pk, "nowhere.at.all")
    await sync_to_async(letter.refresh_from_db)()
    assert letter.status == DeadLetter.NEW
    assert await replayed_messages(fresh_nc) == 0
    record = await sync_to_async(AuditRecord.objects.get)(action="deadletter.replay")
    assert record.outcome == "failed"


async def test_viewers_cannot_replay_or_purge_and_nothing_changes(fresh_nc, fresh_server,
                                                                 users, monkeypatch):
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    await captured(fresh_nc, 2)
    letter = await sync_to_async(DeadLetter.objects.first)()
    viewer = users["viewer"]
    for call in (lambda: replay.replay(viewer, letter.pk), lambda: plans.purge_one(viewer, letter.pk),
                 lambda: plans.start_job(viewer, "replay", {}), lambda: plans.start_job(viewer, "purge", {})):
        with pytest.raises(Refused):
            await sync_to_async(call)()
    assert await replayed_messages(fresh_nc) == 0
    assert (await js.stream_info(fresh_nc, dl.STREAM))["state"]["messages"] == 2
    assert await sync_to_async(DeadLetter.objects.filter(status="new").count)() == 2
    assert await sync_to_async(AuditRecord.objects.filter(outcome="refused").count)() == 4
    assert await sync_to_async(Job.objects.count)() == 0
