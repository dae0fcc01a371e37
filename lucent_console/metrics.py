"""/metrics in Prometheus text format, served from the snapshot (never the bus).

Names and labels follow nats-surveyor's JetStream exporter where it has them
(``jetstream_stream_messages``, ``jetstream_consumer_num_pending`` ...), with
a ``lucent_`` prefix for the console's own figures.
"""

from __future__ import annotations

import hmac
import ipaddress

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.core.cache import cache
from django.db.models import Count, Sum
from django.http import HttpResponse
from django.views.decorators.http import require_GET

from agents.registry import instances_of, untracked_of
from alerts.models import Alert, Notification
from deadletters.models import DeadLetter
from kernel import times
from kernel.actions import ActionError
from kernel.models import Quarantined
from lucent_bus import deadletters as dl
from lucent_console.consumers import LiveConsumer
from streams import operations
from traces.indexer import STREAMS, base, positions

STREAM_GAUGES = [
    ("jetstream_stream_messages", "messages", "Messages stored in the stream"),
    ("jetstream_stream_bytes", "bytes", "Bytes stored in the stream"),
    ("jetstream_stream_first_seq", "first_seq", "First sequence in the stream"),
    ("jetstream_stream_last_seq", "last_seq", "Last sequence in the stream"),
    ("jetstream_stream_consumer_count", "consumer_count", "Consumers of the stream"),
    ("jetstream_stream_subjects", "num_subjects", "Distinct subjects in the stream"),
    ("jetstream_stream_deleted", "num_deleted", "Interior deleted messages"),
    ("lucent_stream_msgs_in_per_second", "msgs_in_per_s", "Messages stored per second"),
    ("lucent_stream_usage_percent", "usage_pct", "Usage of max_msgs or max_bytes, whichever is higher"),
]
CONSUMER_GAUGES = [
    ("jetstream_consumer_num_pending", "num_pending", "Messages not yet delivered"),
    ("jetstream_consumer_num_ack_pending", "num_ack_pending", "Delivered, awaiting ack"),
    ("jetstream_consumer_num_redelivered", "num_redelivered", "Messages redelivered"),
    ("jetstream_consumer_num_waiting", "num_waiting", "Pull requests waiting"),
    ("jetstream_consumer_delivered_stream_seq", "delivered_stream_seq", "Last delivered stream sequence"),
    ("jetstream_consumer_ack_floor_stream_seq", "ack_floor_stream_seq", "Ack floor stream sequence"),
    ("lucent_consumer_delivered_per_second", "delivered_per_s", "Deliveries per second"),
    ("lucent_consumer_acked_per_second", "acked_per_s", "Acks per second (ack floor)"),
    ("lucent_consumer_stalled", "stalled", "1 when pending and nothing delivered for a while"),
    ("lucent_consumer_paused", "paused", "1 while the consumer is paused (nats-server 2.11+)"),
    ("lucent_consumer_pause_until_timestamp_seconds", lambda c: _epoch(c.get("pause_until")),
     "When the pause ends (Unix time), while paused"),
]


AGENT_GAUGES = [
    ("lucent_agent_jobs_in_per_second", "msgs_per_s", "Jobs published to the agent per second"),
    ("lucent_agent_msgs_out_per_second", "out_per_s", "Messages the agent published per second"),
    ("lucent_agent_in_flight", "in_flight", "Jobs delivered, awaiting ack"),
    ("lucent_agent_waiting", "waiting", "Jobs not yet delivered"),
    ("lucent_agent_failures_1h", "failures", "Dead letters of the agent in the last hour"),
    ("lucent_agent_redeliveries_1h", "redeliveries", "Redeliveries in the last hour"),
    ("lucent_agent_processing_p95_ms", "p95_ms", "Job stored -> acked, p95 over 5 minutes"),
]
CAPTURE_CONSUMERS = {"capture": "LUCENT_ADVISORIES/deadletter-capture",
                     "index": "DEAD_LETTERS/deadletter-index"}


def _label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return times.parse(iso, "pause_until").timestamp()
    except ActionError:
        return None  # not a time the server would send; the row says paused anyway


def _num(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    return repr(float(value)) if isinstance(value, float) else str(value)


def render(snapshot: dict | None, status: dict) -> str:
    lines = []
    ok = "1" if status.get("ok") else "0"
    lines += ["# HELP lucent_bus_up 1 when the collector's last sweep of the bus succeeded",
              "# TYPE lucent_bus_up gauge", f"lucent_bus_up {ok}"]
    if status.get("age_s") is not None:
        lines += ["# HELP lucent_snapshot_age_seconds Age of the data served",
                  "# TYPE lucent_snapshot_age_seconds gauge",
                  f"lucent_snapshot_age_seconds {status['age_s']}"]
    if status.get("sweep_ms") is not None:
        lines += ["# HELP lucent_sweep_duration_seconds Duration of the collector's last sweep",
                  "# TYPE lucent_sweep_duration_seconds gauge",
                  f"lucent_sweep_duration_seconds {status['sweep_ms'] / 1000}"]
    snapshot = snapshot or {"streams": {}, "consumers": {}}
    for name, key, help_ in STREAM_GAUGES:
        lines += [f"# HELP {name} {help_}", f"# TYPE {name} gauge"]
        for s in snapshot["streams"].values():
            value = _num(s.get(key))
            if value is not None:
                lines.append(f'{name}{{stream_name="{_label(s["name"])}"}} {value}')
    for name, key, help_ in CONSUMER_GAUGES:
        lines += [f"# HELP {name} {help_}", f"# TYPE {name} gauge"]
        for c in snapshot["consumers"].values():
            value = _num(key(c) if callable(key) else c.get(key))
            if value is not None:
                lines.append(f'{name}{{stream_name="{_label(c["stream"])}",'
                             f'consumer_name="{_label(c["name"])}"}} {value}')
    lines += _agents_and_services(snapshot) + _console(snapshot, status)
    return "\n".join(lines) + "\n"


def _agents_and_services(snapshot: dict) -> list[str]:
    lines = []
    agents = (snapshot.get("agents") or {}).values()
    for name, key, help_ in AGENT_GAUGES:
        lines += [f"# HELP {name} {help_}", f"# TYPE {name} gauge"]
        lines += [f'{name}{{agent="{_label(a["name"])}"}} {_num(a.get(key))}'
                  for a in agents if a.get(key) is not None]
    lines += ["# HELP lucent_agent_status 1 for the agent's status (working, failing, stuck, idle)",
              "# TYPE lucent_agent_status gauge"]
    lines += [f'lucent_agent_status{{agent="{_label(a["name"])}",status="{a["status"]}"}} 1'
              for a in agents]
    lines += ["# HELP lucent_service_instance_up 1 up, 0 stale or down (label status says which)",
              "# TYPE lucent_service_instance_up gauge"]
    for r in instances_of(snapshot.get("services")).values():
        lines.append(f'lucent_service_instance_up{{service="{_label(r["service"])}",'
                     f'instance="{_label(r["instance"])}",status="{r["status"]}"}} '
                     f'{1 if r["status"] == "up" else 0}')
    untracked = untracked_of(snapshot.get("services"))
    lines += ["# HELP lucent_service_instances_untracked Instances heard beyond LUCENT_SERVICE_MAX "
              "(counted, not tracked)", "# TYPE lucent_service_instances_untracked gauge",
              f"lucent_service_instances_untracked {untracked['count'] if untracked else 0}"]
    return lines


def _console(snapshot: dict, status: dict) -> list[str]:
    lines = ["# HELP lucent_websocket_clients Live websockets open on this web process",
             "# TYPE lucent_websocket_clients gauge", f"lucent_websocket_clients {LiveConsumer.open}",
             "# HELP lucent_deadletter_capture_lag Advisories or dead letters not yet captured/indexed",
             "# TYPE lucent_deadletter_capture_lag gauge"]
    for step, key in CAPTURE_CONSUMERS.items():
        c = snapshot.get("consumers", {}).get(key)
        if c is not None:
            lines.append(f'lucent_deadletter_capture_lag{{step="{step}"}} '
                         f'{c["num_pending"] + c["num_ack_pending"]}')
    if snapshot.get("deadletters_1h") is not None:
        lines += ["# HELP lucent_deadletters_last_hour Dead letters that arrived in the last hour",
                  "# TYPE lucent_deadletters_last_hour gauge",
                  f"lucent_deadletters_last_hour {snapshot['deadletters_1h']}"]
    return lines


def _database() -> list[str]:
    """Alert states and dead letters by stream/consumer/reason/status (cached 15 s: a
    scrape every few seconds must not count a million rows each time)."""
    def read() -> list[str]:
        lines = ["# HELP lucent_alert_firing 1 for each firing alert",
                 "# TYPE lucent_alert_firing gauge"]
        for a in Alert.objects.filter(state=Alert.FIRING).select_related("rule"):
            lines.append(f'lucent_alert_firing{{rule="{_label(a.rule.name)}",severity="{a.severity}",'
                         f'subject="{_label(a.subject)}"}} 1')
        lines += ["# HELP lucent_notifications_suppressed_total Alert transitions not notified: "
                  "over the rule's LUCENT_NOTIFY_PER_RULE_PER_MIN",
                  "# TYPE lucent_notifications_suppressed_total counter"]
        suppressed = (Notification.objects.filter(state=Notification.SUPPRESSED).order_by()
                      .values("alert__rule__name").annotate(n=Sum("count")))
        for s in suppressed:
            lines.append(f'lucent_notifications_suppressed_total{{rule="{_label(s["alert__rule__name"])}"}} '
                         f'{s["n"]}')
        lines += ["# HELP lucent_deadletters Dead letters in the index",
                  "# TYPE lucent_deadletters gauge"]
        groups = (DeadLetter.objects.order_by().values("stream", "consumer", "reason", "status")
                  .annotate(n=Count("id")))
        for g in groups:
            lines.append(f'lucent_deadletters{{stream="{_label(g["stream"])}",'
                         f'consumer="{_label(g["consumer"])}",reason="{_label(g["reason"])}",'
                         f'status="{g["status"]}"}} {g["n"]}')
        return lines

    return cache.get_or_set("metrics-database", read, 15)


def _trace_index(snapshot: dict | None) -> list[str]:
    """How far the trace index is behind each stream it reads with an ordered consumer
    (not cached: a handful of rows)."""
    if not snapshot:
        return []
    have = positions()
    lines = ["# HELP lucent_trace_index_lag Messages of the stream not yet in the trace index",
             "# TYPE lucent_trace_index_lag gauge"]
    for name, ordered in STREAMS.items():
        s = (snapshot.get("streams") or {}).get(name)
        if ordered and s is not None:
            gen, seq = have.get(name, ("", 0))
            if gen and base(gen) != dl.generation(s):
                seq = 0  # a point in an earlier life of the stream: all of this one is behind
            done = max(seq, s["first_seq"] - 1)
            lines.append(f'lucent_trace_index_lag{{stream="{name}"}} {max(0, s["last_seq"] - done)}')
    return lines


def _quarantined() -> list[str]:
    """Messages set aside by a pipeline (``streams.Quarantined``): each one is a message
    the console could not index even with its fields emptied."""
    lines = ["# HELP lucent_quarantined_total Messages a pipeline set aside (could not be stored)",
             "# TYPE lucent_quarantined_total gauge"]
    counts = dict(Quarantined.objects.order_by().values_list("pipeline").annotate(n=Count("id")))
    for pipeline in sorted({"deadletter-index", "trace-index", *counts}):
        lines.append(f'lucent_quarantined_total{{pipeline="{_label(pipeline)}"}} '
                     f'{counts.get(pipeline, 0)}')
    return lines


def _allowed(request) -> bool:
    token = settings.LUCENT_METRICS_TOKEN
    if token:
        header = request.headers.get("Authorization", "")
        return hmac.compare_digest(header.encode(), f"Bearer {token}".encode())
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False


@require_GET
@login_not_required
def metrics(request):
    if not _allowed(request):
        return HttpResponse("forbidden: set LUCENT_METRICS_TOKEN and send it as a bearer token\n",
                            status=403, content_type="text/plain")
    snapshot = operations.current_snapshot()
    body = (render(snapshot, operations.live_status())
            + "\n".join(_database() + _trace_index(snapshot) + _quarantined()) + "\n")
    return HttpResponse(body, content_type="text/plain; version=0.0.4; charset=utf-8")
