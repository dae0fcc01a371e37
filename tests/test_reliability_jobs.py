"""Bulk jobs through storms: one runner ever, a killed worker resumed exactly once beyond
the duplicate window, cancel within a second at any rate, the dry run's set and no other.

Each test says what was lost (nothing), what was doubled (nothing) and, where it is a
fault, how long recovery took (printed; docs/RELIABILITY.md keeps the figures).
"""

from __future__ import annotations

import signal
import threading
import time

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.db import connection

from deadletters import jobs as dl_jobs
from deadletters import plans, replay
from deadletters.models import DeadLetter, Replay
from kernel import jobs as job_runner
from kernel.actions import ActionError
from kernel.models import Job
from lucent_bus import deadletters as dl
from lucent_bus import jetstream as js

from .deadletter_bus import explicit_letters
from .support import worker_process

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.suite("faults")]
SECOND = 10**9
TARGET = "replays.in"


async def _target(nc, duplicate_window_s: float = 1.0, retention: str = "limits") -> None:
    """A stream to replay into whose duplicate window is short: past it, only the job's
    own records can keep a letter from arriving twice."""
    await js.add_stream(nc, {"name": "REPLAYS", "subjects": ["replays.>"], "storage": "file",
                             "retention": retention,
                             "duplicate_window": int(duplicate_window_s * SECOND)})


async def _letters_in_target(nc) -> list[str]:
    """The Lucent-Replay-Of of every message in REPLAYS, in order (a repeat = a double)."""
    info = await js.stream_info(nc, "REPLAYS")
    out, seq = [], info["state"]["first_seq"]
    while seq and seq <= info["state"]["last_seq"]:
        msg = await js.next_message(nc, "REPLAYS", seq)
        if msg is None:
            break
        out.append(msg["headers"].get("Lucent-Replay-Of"))
        seq = msg["seq"] + 1
    return out


def _job(n: int, rate: float | None, subject: str | None = TARGET) -> Job:
    return Job.objects.create(kind="replay", total=n, params={
        "filters": {}, "subject": subject, "rate": rate, "upto_id": None})


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def test_two_runners_of_one_job_publish_each_letter_once(fresh_nc, fresh_server, users,
                                                               monkeypatch):
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    await explicit_letters(fresh_nc, 20)
    await _target(fresh_nc, duplicate_window_s=60)
    job = await sync_to_async(_job)(20, 40)
    results = []

    def runner():
        results.append(job_runner.run_job(job.pk))
        connection.close()

    def race():
        threads = [threading.Thread(target=runner) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)

    await sync_to_async(race, thread_sensitive=False)()
    await sync_to_async(job.refresh_from_db)()
    assert sorted(results) == [False, True]  # one claimed it, the other did nothing
    assert (job.state, job.done, job.failed) == ("done", 20, 0)
    arrived = await _letters_in_target(fresh_nc)
    assert len(arrived) == len(set(arrived)) == 20  # nothing lost, nothing doubled
    assert await sync_to_async(Replay.objects.count)() == 20


async def test_a_killed_worker_is_resumed_and_each_letter_arrives_once_past_the_window(
        fresh_nc, fresh_server, users, monkeypatch, settings):
    """kill -9 of the process running a rate-limited replay while a slice is on the bus;
    the lease runs out, ``resume_stale`` queues it, the next runner finds in the target
    what the dead one sent (the 1 s duplicate window has long passed) and sends the rest."""
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    settings.LUCENT_JOB_LEASE_S = 2
    n = 40
    await explicit_letters(fresh_nc, n)
    await _target(fresh_nc, duplicate_window_s=1)
    job = await sync_to_async(_job)(n, 10)
    worker = worker_process(f"from kernel import jobs; jobs.run_job({job.pk})",
                            LUCENT_JOB_LEASE_S="2")
    try:
        def in_flight():
            job.refresh_from_db()
            return job.done >= 5 and job.params.get("publishing")
        await sync_to_async(_wait, thread_sensitive=False)(in_flight, 30,
                                                           "the worker to be mid-slice")
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    killed_at = time.monotonic()
    await sync_to_async(job.refresh_from_db)()
    sent_before = len(await _letters_in_target(fresh_nc))
    assert job.state == Job.RUNNING and job.params["publishing"]  # died holding a slice
    time.sleep(1.2)  # past the target's duplicate window
    await sync_to_async(_wait, thread_sensitive=False)(
        lambda: job_runner.resume_stale(), 10, "the dead runner's lease to run out")
    recovered = time.monotonic() - killed_at
    await sync_to_async(job.refresh_from_db)()
    arrived = await _letters_in_target(fresh_nc)
    print(f"\nkilled worker: resumed and done {recovered:.1f}s after kill -9 "
          f"(lease {settings.LUCENT_JOB_LEASE_S}s); {sent_before} had arrived before")
    assert (job.state, job.done, job.failed, job.unknown) == ("done", n, 0, 0)
    assert sorted(arrived, key=int) == sorted({str(x) for x in arrived}, key=int)  # no double
    assert len(arrived) == n  # none lost
    assert not job.params.get("publishing")


async def test_a_runner_that_died_after_publishing_is_not_repeated_past_the_window(
        fresh_nc, fresh_server, users, monkeypatch):
    """The worst moment to die: a slice published and acked, not yet recorded. The next
    runner finds those letters in the target (its duplicate window long passed) and
    sends only the rest."""
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    await explicit_letters(fresh_nc, 6)
    await _target(fresh_nc, duplicate_window_s=1)
    job = await sync_to_async(_job)(6, None)
    rows = await sync_to_async(lambda: [
        (x.pk, x.dl_seq, x.stream, x.stream_seq, x.subject, x.generation)
        for x in DeadLetter.objects.order_by("pk")])()

    def die_after_publishing():
        job.claim("dead-runner")
        dl_jobs._mark_publishing(job, "dead-runner", dl_jobs.Targets(), rows[:4])
        replay.replay_batch(rows[:4], job.params, job_runner.RateLimit(None))
        Job.objects.filter(pk=job.pk).update(lease_until=None)  # its lease ran out

    await sync_to_async(die_after_publishing)()
    time.sleep(1.2)  # past the duplicate window: a republish would be stored again
    assert await sync_to_async(job_runner.run_job)(job.pk)
    await sync_to_async(job.refresh_from_db)()
    assert (job.state, job.done, job.failed, job.unknown) == ("done", 6, 0, 0)
    arrived = await _letters_in_target(fresh_nc)
    assert len(arrived) == len(set(arrived)) == 6  # nothing lost, nothing doubled
    assert await sync_to_async(Replay.objects.filter(state="published").count)() == 6


async def test_a_killed_worker_leaves_letters_of_an_uncheckable_target_to_an_operator(
        fresh_nc, fresh_server, users, monkeypatch, settings):
    """A work-queue target may have delivered (and so deleted) what was sent: what the
    dead runner had in flight becomes "outcome unknown", never a silent republish."""
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    await explicit_letters(fresh_nc, 6)
    await _target(fresh_nc, retention="workqueue")
    job = await sync_to_async(_job)(6, None)
    letters = await sync_to_async(lambda: list(DeadLetter.objects.order_by("pk")))()
    rows = [(x.pk, x.dl_seq, x.stream, x.stream_seq, x.subject, x.generation) for x in letters]
    owner = "dead-runner"

    def die_mid_batch():  # what a runner killed right after the publish leaves behind
        job.claim(owner)
        dl_jobs._mark_publishing(job, owner, dl_jobs.Targets(), rows[:3])
        replay.replay_batch(rows[:3], job.params, job_runner.RateLimit(None))
        Job.objects.filter(pk=job.pk).update(lease_until=None)  # its lease ran out

    await sync_to_async(die_mid_batch)()
    assert await sync_to_async(job_runner.run_job)(job.pk)
    await sync_to_async(job.refresh_from_db)()
    assert (job.state, job.done, job.unknown) == ("done", 3, 3)
    statuses = await sync_to_async(lambda: [x.status for x in DeadLetter.objects.order_by("pk")])()
    assert statuses == ["unknown"] * 3 + ["replayed"] * 3
    assert len(await _letters_in_target(fresh_nc)) == 6  # the first three were not sent again


async def test_cancel_takes_effect_within_a_second_at_a_low_rate(fresh_nc, fresh_server, users,
                                                                 monkeypatch):
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    await explicit_letters(fresh_nc, 7)
    await _target(fresh_nc)
    job = await sync_to_async(_job)(7, 0.2)
    runner = threading.Thread(target=lambda: (job_runner.run_job(job.pk), connection.close()))
    runner.start()
    await sync_to_async(_wait, thread_sensitive=False)(
        lambda: Job.objects.filter(pk=job.pk, done=1).exists(), 10, "the first letter")
    time.sleep(1.5)  # waiting for the next slot, 5 s apart
    asked = time.monotonic()
    await sync_to_async(plans.cancel_job)(users["operator"], job.pk)
    assert (await sync_to_async(Job.objects.get)(pk=job.pk)).state in ("cancelling", "cancelled")
    await sync_to_async(_wait, thread_sensitive=False)(
        lambda: Job.objects.filter(pk=job.pk, state="cancelled").exists(), 5, "cancelled")
    took = time.monotonic() - asked
    runner.join(5)
    print(f"\ncancel at 0.2 msgs/s took {took:.2f}s")
    await sync_to_async(job.refresh_from_db)()
    assert took < 2 and job.done == 1  # nothing sent after the cancel
    assert len(await _letters_in_target(fresh_nc)) == 1



async def test_two_operators_cancelling_one_running_job_at_once_end_it_once(
        fresh_nc, fresh_server, users, monkeypatch):
    """Two cancels of the same running job through the API at the same instant (two
    operators, two clients, two threads): both answer, the job ends ``cancelled`` once,
    nothing is sent after that and no letter twice."""
    from django.contrib.auth.models import Group, User
    from django.test import Client

    from kernel.models import AuditRecord

    monkeypatch.setenv("NATS_URL", fresh_server.url)
    await explicit_letters(fresh_nc, 8)
    await _target(fresh_nc)
    job = await sync_to_async(_job)(8, 2)

    def operators() -> list[Client]:
        second = User.objects.create_user("operator2", password="pw-operator2")
        second.groups.add(Group.objects.get(name="operator"))
        clients = []
        for user in (users["operator"], second):
            clients.append(Client())
            clients[-1].force_login(user)
            assert clients[-1].get(f"/api/v1/jobs/{job.pk}/").status_code == 200  # warm
        return clients

    clients = await sync_to_async(operators)()
    runner = threading.Thread(target=lambda: (job_runner.run_job(job.pk), connection.close()))
    runner.start()
    await sync_to_async(_wait, thread_sensitive=False)(
        lambda: Job.objects.filter(pk=job.pk, done__gte=2).exists(), 10, "two letters")
    answers: list = [None, None]
    start = threading.Barrier(2)

    def cancel(i: int) -> None:
        start.wait(5)
        answers[i] = clients[i].post(f"/api/v1/jobs/{job.pk}/cancel/", {},
                                     content_type="application/json")
        connection.close()

    def race() -> None:
        threads = [threading.Thread(target=cancel, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)

    asked = time.monotonic()
    await sync_to_async(race, thread_sensitive=False)()
    answered = time.monotonic() - asked
    await sync_to_async(_wait, thread_sensitive=False)(
        lambda: Job.objects.filter(pk=job.pk, state="cancelled").exists(), 5, "cancelled")
    took = time.monotonic() - asked
    at_cancel = len(await _letters_in_target(fresh_nc))
    runner.join(5)
    assert not runner.is_alive()
    time.sleep(1.5)  # three more rate slots: a runner still going would have sent more
    await sync_to_async(job.refresh_from_db)()
    arrived = await _letters_in_target(fresh_nc)
    print(f"\ntwo cancels at once: answered {[a.status_code for a in answers]} in "
          f"{answered:.2f}s, job cancelled {took:.2f}s after they were sent, {job.done} of 8 sent")
    # Both answer (no 500). The first to write turns the job to cancelling; the other sees
    # it cancelling too, unless the runner ended it in between (then 200 "cancelled", or a
    # clear 400 when it read the row after the end): both are what cancel_job does.
    ended = f"job {job.pk} has ended (cancelled)"
    seen = []
    for answer in answers:
        if answer.status_code == 200:
            seen.append(("ok", f"job {job.pk}: {answer.json()['state']}"))
        else:
            assert answer.status_code == 400 and answer.json()["error"] == ended, answer.content
            seen.append(("failed", ended))
    assert ("ok", f"job {job.pk}: cancelling") in seen, seen
    assert set(seen) <= {("ok", f"job {job.pk}: cancelling"),
                                 ("ok", f"job {job.pk}: cancelled"), ("failed", ended)}
    assert (job.state, job.failed, job.unknown) == ("cancelled", 0, 0)
    assert job.cancel_requested and 2 <= job.done < 8 and job.finished_at is not None
    assert len(arrived) == at_cancel == job.done  # nothing sent after the cancel took effect
    assert len(set(arrived)) == len(arrived)  # no letter twice
    assert await sync_to_async(Replay.objects.filter(job=job).count)() == job.done
    # The audit: one record per request, by its operator, saying what that request answered.
    records = await sync_to_async(lambda: list(AuditRecord.objects.filter(
        action="job.cancel", target=str(job.pk)).values_list("username", "outcome", "detail")))()
    assert sorted(records) == sorted([(user, *row) for user, row in
                                      zip(("operator", "operator2"), seen, strict=True)])
    # ...and a third cancel, after the end, is refused clearly and audited as failed.
    late = await sync_to_async(clients[0].post)(f"/api/v1/jobs/{job.pk}/cancel/", {},
                                                content_type="application/json")
    assert late.status_code == 400 and late.json()["error"] == ended
    assert await sync_to_async(lambda: list(AuditRecord.objects.filter(
        action="job.cancel", target=str(job.pk)).values_list("outcome", "detail")[:1]))() == [
        ("failed", ended)]


async def test_a_rate_limited_job_shows_progress_per_letter(fresh_nc, fresh_server, users,
                                                            monkeypatch):
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    await explicit_letters(fresh_nc, 4)
    await _target(fresh_nc)
    job = await sync_to_async(_job)(4, 2)
    seen = set()
    runner = threading.Thread(target=lambda: (job_runner.run_job(job.pk), connection.close()))
    runner.start()

    def watch():
        seen.add(Job.objects.get(pk=job.pk).done)
        return Job.objects.filter(pk=job.pk, state="done").exists()

    await sync_to_async(_wait, thread_sensitive=False)(watch, 15, "the job to end")
    runner.join(5)
    assert {1, 2, 3} <= seen  # not 0 then 4


async def test_a_job_started_from_a_dry_run_replays_exactly_what_it_counted(
        fresh_nc, fresh_server, users, monkeypatch):
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    await explicit_letters(fresh_nc, 5)
    await _target(fresh_nc, duplicate_window_s=60)
    preview = await sync_to_async(plans.dry_run)({"consumer": "shipper"}, TARGET)
    assert preview["matched"] == 5
    for i in range(2):  # failures indexed after the dry run
        await fresh_nc.jetstream().publish(
            dl.subject("ORDERS", "shipper"), b"late",
            headers=dl.headers({}, stream="ORDERS", seq=100 + i, subject="orders.eu.late",
                               consumer="shipper", deliveries=2, reason=dl.REASON_MAX_DELIVERIES))
    from .deadletter_bus import drain

    await drain(fresh_nc)
    assert await sync_to_async(DeadLetter.objects.count)() == 7
    started = await sync_to_async(plans.start_job)(users["operator"], "replay", {"consumer": "shipper"},
                                                 TARGET, None, False, preview["plan"])
    job = await sync_to_async(Job.objects.get)(pk=started["job"])
    assert started["matched"] == 5 and (job.state, job.done) == ("done", 5)
    assert len(await _letters_in_target(fresh_nc)) == 5
    with pytest.raises(ActionError, match="differ"):  # a plan is for its own filters
        await sync_to_async(plans.start_job)(users["operator"], "replay", {"consumer": "other"},
                                           TARGET, None, False, preview["plan"])


def test_the_api_cancels_a_job_and_refuses_viewers(client, users):
    job = Job.objects.create(kind="replay", total=3, params={"filters": {}})
    client.force_login(users["viewer"])
    assert client.post(f"/api/v1/jobs/{job.pk}/cancel/").status_code == 403
    assert Job.objects.get(pk=job.pk).state == "pending"
    client.force_login(users["operator"])
    reply = client.post(f"/api/v1/jobs/{job.pk}/cancel/", {}, content_type="application/json")
    assert reply.status_code == 200 and reply.json()["state"] == "cancelled"  # nobody ran it
    running = Job.objects.create(kind="replay", total=3, params={"filters": {}}, state="running",
                                 lease_owner="w", lease_until=None)
    reply = client.post(f"/api/v1/jobs/{running.pk}/cancel/", {}, content_type="application/json")
    assert reply.json()["state"] == "cancelling"
    assert client.post(f"/api/v1/jobs/{job.pk}/cancel/").status_code == 400  # ended already
    assert client.get(f"/api/v1/jobs/{running.pk}/").json()["state"] == "cancelling"


def test_the_cli_waits_for_a_worker_and_says_when_none_takes_the_job(users, settings,
                                                                     monkeypatch, capsys):
    """The CLI queues the job and follows it; it never runs it itself as well."""
    from deadletters.management.commands import deadletters as command
    from kernel import tasks

    settings.LUCENT_JOBS_INLINE = False
    queued = []
    monkeypatch.setattr(tasks.run_job, "delay", queued.append)
    monkeypatch.setattr(command, "NO_WORKER_S", 0.3)
    DeadLetter.objects.create(dl_seq=1, dl_subject="lucent.deadletter.ORDERS.shipper",
                              stream="ORDERS", subject="orders.eu.1", consumer="shipper",
                              reason="explicit", captured_at="2026-11-30T10:00:00Z")

    def cancel_soon():
        _wait(lambda: queued, 5, "the job to be queued")
        time.sleep(0.6)
        plans.cancel_job(users["operator"], queued[0])
        connection.close()

    threading.Thread(target=cancel_soon).start()
    call_command("deadletters", "purge", "--all", "--user", "operator")
    out = capsys.readouterr()
    assert "no worker has taken job" in out.err
    job = Job.objects.get(pk=queued[0])
    assert job.state == "cancelled" and job.done == 0
    assert DeadLetter.objects.get().status == "new"  # the CLI did not run it itself


async def test_a_bulk_replay_to_original_subjects_refuses_the_bus_own_ones(
        fresh_nc, fresh_server, users, monkeypatch):
    """A letter's original subject is bus data too: one naming a $KV subject is not sent."""
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    await explicit_letters(fresh_nc, 3, lambda i: "$KV.LUCENT_LEADER.collector" if i == 1
                            else f"orders.eu.{i}")
    await js.add_stream(fresh_nc, {"name": "KV_LUCENT_LEADER", "subjects": ["$KV.LUCENT_LEADER.>"],
                                   "storage": "memory"})  # a stream that would store it
    result = await sync_to_async(plans.start_job)(users["operator"], "replay", {"consumer": "shipper"})
    job = await sync_to_async(Job.objects.get)(pk=result["job"])
    assert (job.state, job.done, job.failed) == ("done", 2, 1)
    leader = await js.stream_info(fresh_nc, "KV_LUCENT_LEADER")
    assert leader["state"]["messages"] == 0  # nothing written into the leader bucket
