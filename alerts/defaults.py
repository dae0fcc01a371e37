"""The rules a new console starts with, after the ADR's health checks. Edit them in
the admin (thresholds, durations, targets, severity) or add narrower ones.

Every rule waits (``for_s`` > 0) before it fires: a condition that lasts one sweep
(a heartbeat a little late, a burst of dead letters, a consumer recreated by a
deploy) is no reason to wake anyone, and with no wait a figure hovering at its
threshold fired and resolved on every other sweep. Threshold rules also resolve only
well below their threshold (``rules.CLEAR``). Migration 0005 moves the rows of older
databases still at their old values to these."""

DEFAULT_RULES = [
    # name, kind, threshold, for_s, severity, description
    ("consumer-pending", "consumer_pending", 1000, 60, "warning",
     "A consumer has more than `threshold` messages pending (the ADR's queue-depth warning) "
     "for `for_s` seconds."),
    ("consumer-stalled", "consumer_stalled", None, 30, "critical",
     "Pending > 0 and nothing delivered or acked for 30 s (then `for_s` more)."),
    ("ack-pending-near-max", "ack_pending_near_max", 0.9, 30, "warning",
     "Ack pending at or above `threshold` (a share) of the consumer's max_ack_pending."),
    ("deadletters-rate", "deadletter_rate", 10, 120, "warning",
     "Dead letters arriving faster than `threshold` a minute for `for_s` seconds; resolves "
     "below half of it."),
    ("stream-usage-80", "stream_usage", 80, 60, "warning",
     "A stream at `threshold`% of its max_msgs or max_bytes."),
    ("stream-usage-95", "stream_usage", 95, 30, "critical",
     "A stream at `threshold`% of its max_msgs or max_bytes."),
    ("interest-without-consumers", "interest_no_consumers", None, 30, "critical",
     "An interest-retention stream with no consumer drops every message."),
    ("replica-offline", "replica", None, 5, "critical",
     "A replica of a stream is offline or lagging, or the stream has no leader."),
    ("agent-failing", "agent", None, 30, "warning",
     "An agent is stuck (a consumer stalled) or failing (over 10% of its jobs dead-lettered "
     "in 5 minutes)."),
    ("service-stale", "service_stale", None, 15, "warning",
     "A service instance sent no heartbeat for 2 of its intervals."),
    ("service-down", "service_down", None, 10, "critical",
     "A service instance sent no heartbeat for 5 intervals, or said it is down."),
    ("bus-unreachable", "bus", None, 5, "critical",
     "The collector cannot sweep the bus."),
] + [
    # Issue 15: from the servers' monitoring data (servers.overview; only when a
    # monitoring source is configured) and the consumers' pause state.
    ("slow-consumers", "slow_consumers", 0, 30, "warning",
     "A server counted more than `threshold` new slow consumers in the last 5 minutes "
     "(clients that could not keep up: the server dropped their messages or them)."),
    ("server-js-limit-90", "server_js_limit", 90, 60, "critical",
     "A server's JetStream memory or storage use at `threshold`% of its max_memory or "
     "max_storage; resolves 5 points below."),
    ("consumer-pause-ending", "consumer_pause", 60, 10, "warning",
     "A paused consumer resumes within `threshold` seconds, or resumed with a backlog that "
     "grew during the pause (held until it is back to where it was when paused)."),
]

def install(rule_model) -> int:
    made = 0
    for name, kind, threshold, for_s, severity, description in DEFAULT_RULES:
        _, created = rule_model.objects.get_or_create(name=name, defaults={
            "kind": kind, "threshold": threshold, "for_s": for_s, "severity": severity,
            "description": description})
        made += created
    return made
