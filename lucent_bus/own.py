"""The console's own parts of the bus: streams, buckets and consumers it runs on.

Pages label them as the console's and group them apart from business streams; the
operate-the-bus actions (edit, delete, pause, reset, put) refuse them unless an admin
confirms a warning that names what breaks (``why_own``).

Ordered consumers (the live tails and watches) are ephemeral, unnamed and created by
nats-py: the console recognises its own by their delivery subject, which starts with
``INBOX_PREFIX`` because every console connection is opened with that inbox prefix.
"""

from __future__ import annotations

INBOX_PREFIX = "_INBOX.lucent"

# name -> what breaks if it is edited, deleted or written by hand
STREAMS = {
    "DEAD_LETTERS": "the dead-letter store: every captured dead letter's payload lives "
                    "here; deleting or purging it loses them, editing it can stop capture",
    "LUCENT_ADVISORIES": "the advisories dead-letter capture reads: without it no new "
                         "dead letter is captured",
    "KV_LUCENT_LEADER": "the leader lease of the collector and beat: without it no "
                        "collector sweeps and no scheduled job runs",
}
BUCKETS = {"LUCENT_LEADER": STREAMS["KV_LUCENT_LEADER"]}
# stream -> durable consumer -> what breaks
CONSUMERS = {
    "LUCENT_ADVISORIES": {"deadletter-capture": "dead-letter capture: advisories pile up "
                                                "and no dead letter is recorded"},
    "DEAD_LETTERS": {"deadletter-index": "the dead-letter index: new dead letters are "
                                         "stored but not listed, searched or replayable"},
}


def own_stream(name: str) -> str | None:
    """What breaks if the console's stream ``name`` is changed, or None."""
    return STREAMS.get(name)


def own_bucket(bucket: str) -> str | None:
    return BUCKETS.get(bucket)


def own_consumer(stream: str, name: str | None, config: dict | None = None) -> str | None:
    """What breaks if this consumer is changed, or None if it is not the console's.
    ``config`` (the consumer's config as the server reports it) recognises the
    console's ordered consumers by their delivery subject."""
    reason = CONSUMERS.get(stream, {}).get(name or "")
    if reason:
        return reason
    deliver = (config or {}).get("deliver_subject") or ""
    if deliver.startswith(INBOX_PREFIX + "."):
        return "a live view of the console (an ordered consumer it recreates on its own)"
    if stream in STREAMS:
        return f"a consumer on {stream}, " + STREAMS[stream]
    return None


def is_own_consumer(stream: str, name: str | None, config: dict | None = None) -> bool:
    return own_consumer(stream, name, config) is not None
