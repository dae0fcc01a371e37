"""Dead letters: a purge job empties DEAD_LETTERS of what it matched and marks the rows."""

import pytest
from asgiref.sync import sync_to_async

from deadletters import plans
from deadletters.models import DeadLetter
from kernel.models import AuditRecord
from lucent_bus import deadletters as dl
from lucent_bus import jetstream as js

from .deadletter_bus import captured

pytestmark = pytest.mark.django_db(transaction=True)


async def test_a_purge_job_empties_the_stream_and_marks_every_letter_purged(
        fresh_nc, fresh_server, users, monkeypatch):
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    await captured(fresh_nc, 5)
    assert (await js.stream_info(fresh_nc, dl.STREAM))["state"]["messages"] == 5
    purge = await sync_to_async(plans.start_job)(users["operator"], "purge", {"stream": "ORDERS"})
    assert purge["matched"] == 5
    assert (await js.stream_info(fresh_nc, dl.STREAM))["state"]["messages"] == 0
    assert await sync_to_async(DeadLetter.objects.filter(status="purged").count)() == 5
    assert await sync_to_async(AuditRecord.objects.filter(
        action="deadletter.purge_bulk", outcome="ok").count)() == 1
