"""Webhook notifications through storms: what an alert tells whoever is on call is never
lost with its Celery task, and two runners of one notification send it once.

The row is the record (``alerts.Notification``, pending until sent or given up on); a
runner holds it for its attempt (``notify._claim``); ``notify.resume_pending`` (beat,
every 15 s) queues again what is pending well past due and held by nobody. Each test
injects the fault (the broker away when the task is queued, two runners at once, the
worker killed -9 in the middle of its request) against a real HTTP receiver and prints
the recovery time for docs/RELIABILITY.md.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from kombu.exceptions import OperationalError

from alerts import defaults, notify, tasks
from alerts.models import Alert, Notification, Rule, Webhook

from .support import WebhookReceiver, wait_until, worker_process

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.suite("faults")]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def alert(settings):
    defaults.install(Rule)
    settings.LUCENT_WEBHOOK_BACKOFF_S = 0.05
    return Alert.objects.create(rule=Rule.objects.get(name="service-down"), key="service-down:pay/1",
                                subject="pay/1", severity="critical", message="no heartbeat")


def _one_webhook() -> Notification:
    return Notification.objects.get(channel="webhook:oncall")


def test_a_notification_queued_while_the_broker_is_away_is_sent_once_by_the_sweep(
        alert, settings, monkeypatch, caplog):
    settings.LUCENT_JOBS_INLINE = False  # through Celery's broker, which is away
    monkeypatch.setattr(notify, "RESUME_AFTER_S", 0.5)
    receiver = WebhookReceiver()
    Webhook.objects.create(name="oncall", url=receiver.url)

    def broker_away(*args, **kwargs):
        raise OperationalError("[Errno 111] Connection refused")

    try:
        with monkeypatch.context() as away:
            away.setattr(tasks.deliver_notification, "delay", broker_away)
            with caplog.at_level(logging.ERROR, logger="lucent.alerts"):
                made = notify.record(alert, "firing")  # commits: the task is "queued" now
        assert {n.channel for n in made} == {"bus", "webhook:oncall"}
        assert "not queued" in caplog.text  # said loudly, not swallowed
        n = _one_webhook()
        assert (n.state, n.attempts, receiver.calls) == (Notification.PENDING, 0, 0)
        assert notify.resume_pending() == 0  # not overdue yet: a slow worker is not a lost task

        back = time.monotonic()  # the broker is back; a worker runs what is queued
        settings.LUCENT_JOBS_INLINE = True
        wait_until(lambda: notify.resume_pending() > 0, 5, "the sweep to queue it again")
        wait_until(lambda: receiver.calls == 1, 10, "the receiver to get it")
        recovered = time.monotonic() - back
        wait_until(lambda: _one_webhook().state == Notification.SENT, 5, "it recorded sent")
        time.sleep(1.0)  # past RESUME_AFTER_S again: nothing more is queued or sent
        assert notify.resume_pending() == 0
        n = _one_webhook()
        print(f"\nbroker away at queueing: sent {recovered:.2f}s after it came back "
              f"(sweep after {notify.RESUME_AFTER_S}s overdue in the test, 30 s by default)")
        assert (n.state, n.attempts, receiver.calls) == (Notification.SENT, 1, 1)  # once
        assert receiver.keys == [f"lucent-notification-{n.pk}"]
    finally:
        receiver.shutdown()


def test_two_runners_of_one_notification_send_it_once(alert, settings):
    settings.LUCENT_JOBS_INLINE = False  # the runners below are the only ones
    receiver = WebhookReceiver(slow=0.5)  # both runners start while the first is sending
    Webhook.objects.create(name="oncall", url=receiver.url)
    try:
        notify.record(alert, "firing")
        pk = _one_webhook().pk
        start, results = threading.Barrier(2), []

        def runner():
            start.wait()
            results.append(notify.deliver(pk))

        threads = [threading.Thread(target=runner) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        n = _one_webhook()
        assert results == [True, True]  # one sent it; the other found it held and stopped
        assert (n.state, n.attempts, receiver.calls) == (Notification.SENT, 1, 1)
        assert n.claimed_until is None
    finally:
        receiver.shutdown()


def test_a_worker_killed_in_the_middle_of_sending_is_resumed_and_the_receiver_can_tell(
        alert, settings, monkeypatch):
    """kill -9 of the process sending a notification while the receiver holds its request:
    its claim runs out (``CLAIM_S``), the sweep queues it again, it is sent and recorded
    once. The receiver got the dead runner's request too (nothing can know whether it
    arrived), with the same ``Idempotency-Key``."""
    settings.LUCENT_JOBS_INLINE = False
    monkeypatch.setattr(notify, "RESUME_AFTER_S", 0.5)
    receiver = WebhookReceiver(slow=60)  # holds the first request until after the kill
    Webhook.objects.create(name="oncall", url=receiver.url)
    try:
        notify.record(alert, "firing")
        pk = _one_webhook().pk
        worker = worker_process(f"from alerts import notify; notify.deliver({pk})")
        try:
            wait_until(lambda: receiver.calls == 1, 30, "the worker's request to arrive")
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
        killed = time.monotonic()
        n = _one_webhook()
        assert (n.state, n.attempts) == (Notification.PENDING, 0) and n.claimed_until
        assert notify.resume_pending() == 0  # still held: the dead runner's claim
        settings.LUCENT_JOBS_INLINE = True
        wait_until(lambda: notify.resume_pending() > 0, notify.CLAIM_S + 10,
                   "the dead runner's claim to run out and the sweep to queue it")
        wait_until(lambda: _one_webhook().state == Notification.SENT, 10, "it was sent")
        recovered = time.monotonic() - killed
        n = _one_webhook()
        print(f"\nworker killed mid-request: sent and recorded {recovered:.1f}s after kill -9 "
              f"(claim {notify.CLAIM_S:.0f}s)")
        assert (n.state, n.attempts, receiver.calls) == (Notification.SENT, 1, 2)
        assert receiver.keys == [f"lucent-notification-{pk}"] * 2  # the receiver can tell
        assert notify.resume_pending() == 0
    finally:
        receiver.shutdown()


def test_an_attempt_that_outlives_its_claim_does_not_undo_the_next_runners_send(
        alert, settings, monkeypatch):
    """A receiver that takes longer than the claim (a dripping answer): another runner
    claims the row meanwhile and sends it; the slow attempt's failure, recorded last,
    must not turn the sent notification back into a pending one (sent a third time)."""
    settings.LUCENT_JOBS_INLINE = False
    monkeypatch.setattr(notify, "CLAIM_S", 0.3)
    monkeypatch.setattr(notify, "RESUME_AFTER_S", 0.0)
    receiver = WebhookReceiver(fail=1, slow=1.0)  # the first request: slow, then a 500
    Webhook.objects.create(name="oncall", url=receiver.url)
    try:
        notify.record(alert, "firing")
        pk = _one_webhook().pk
        first = []
        slow = threading.Thread(target=lambda: first.append(notify.deliver(pk)))
        slow.start()
        wait_until(lambda: receiver.calls == 1, 10, "the slow attempt to be on the wire")
        time.sleep(0.4)  # its claim has run out
        assert notify.deliver(pk) is True  # the second runner claims it and sends it
        slow.join(10)
        n = _one_webhook()
        assert first == [True]  # the slow one found its claim gone and recorded nothing
        assert (n.state, n.attempts, n.last_error) == (Notification.SENT, 1, "")
        time.sleep(0.1)
        assert notify.resume_pending() == 0 and receiver.calls == 2
    finally:
        receiver.shutdown()


def _raw_receiver(answer: bytes):
    """A TCP server answering every request with ``answer`` (not necessarily HTTP)."""
    import socketserver

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            self.request.recv(65536)
            self.request.sendall(answer)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("answer, says", [
    (b"garbage\r\n", "BadStatusLine"),
    (b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:9/elsewhere\r\nContent-Length: 0\r\n\r\n",
     "302"),
])
def test_a_receiver_answering_garbage_or_a_redirect_is_a_failed_attempt_recorded(
        alert, settings, answer, says):
    """Every failure is an attempt recorded and its claim let go (an http.client error is
    no OSError: it once left the claim held and the notification retried forever)."""
    settings.LUCENT_JOBS_INLINE = False
    server = _raw_receiver(answer)
    Webhook.objects.create(name="oncall", url=f"http://127.0.0.1:{server.server_address[1]}/hook")
    try:
        notify.record(alert, "firing")
        pk = _one_webhook().pk
        for attempt in range(1, notify.MAX_ATTEMPTS + 1):
            done = notify.deliver(pk)
            n = _one_webhook()
            assert n.attempts == attempt and says in n.last_error and n.claimed_until is None
            assert done is (attempt == notify.MAX_ATTEMPTS)
        assert n.state == Notification.FAILED  # given up on, not retried forever
    finally:
        server.shutdown()


def test_a_lost_firing_notice_is_not_sent_after_its_resolved_one_nor_hours_late(
        alert, settings, monkeypatch):
    settings.LUCENT_JOBS_INLINE = False
    monkeypatch.setattr(notify, "RESUME_AFTER_S", 0.0)
    receiver = WebhookReceiver()
    Webhook.objects.create(name="oncall", url=receiver.url)
    try:
        firing = [n for n in notify.record(alert, "firing") if n.webhook_id][0]  # its task lost
        resolved = [n for n in notify.record(alert, "resolved") if n.webhook_id][0]
        assert notify.deliver(resolved.pk) is True
        assert notify.deliver(firing.pk) is True  # the sweep's late run of the lost one
        firing.refresh_from_db()
        assert firing.state == Notification.FAILED and "resolved" in firing.last_error
        assert [b["state"] for b in receiver.bodies] == ["resolved"]  # never "firing" after it

        old = [n for n in notify.record(alert, "firing") if n.webhook_id][0]
        Notification.objects.filter(pk=old.pk).update(
            created_at=old.created_at - timedelta(seconds=notify.RESUME_MAX_AGE_S + 60))
        assert notify.resume_pending() == 0  # not sent hours late: given up on, loudly
        old.refresh_from_db()
        assert old.state == Notification.FAILED and "over 1 h old" in old.last_error
        assert len(receiver.bodies) == 1
    finally:
        receiver.shutdown()
