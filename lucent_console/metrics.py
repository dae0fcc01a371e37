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
from django.http import HttpResponse
from django.views.decorators.http import require_GET

from streams import services

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
]


def _label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


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
            value = _num(c.get(key))
            if value is not None:
                lines.append(f'{name}{{stream_name="{_label(c["stream"])}",'
                             f'consumer_name="{_label(c["name"])}"}} {value}')
    return "\n".join(lines) + "\n"


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
    snapshot = services.current_snapshot()
    return HttpResponse(render(snapshot, services.live_status()),
                        content_type="text/plain; version=0.0.4; charset=utf-8")
