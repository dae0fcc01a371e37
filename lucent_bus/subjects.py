"""NATS subject matching: ``*`` is exactly one token, ``>`` one or more at the end."""

from . import notify_subjects


def matches(pattern: str, subject: str) -> bool:
    """Does the filter ``pattern`` match the literal ``subject``?"""
    return overlap(pattern, subject)


def overlap(a: str, b: str) -> bool:
    """Is there a subject that both filters match?"""
    ta, tb = a.split("."), b.split(".")
    for i in range(max(len(ta), len(tb))):
        if i >= len(ta) or i >= len(tb):
            return False
        x, y = ta[i], tb[i]
        if x == ">" or y == ">":
            return True
        if x != y and x != "*" and y != "*":
            return False
    return True


def is_valid(subject: str, wildcards: bool = True) -> bool:
    if not subject or subject != subject.strip() or " " in subject:
        return False
    tokens = subject.split(".")
    for i, token in enumerate(tokens):
        if not token:
            return False
        if token == ">" and (not wildcards or i != len(tokens) - 1):
            return False
        if token == "*" and not wildcards:
            return False
        if token not in ("*", ">") and ("*" in token or ">" in token):
            return False
    return True


# The bus's own subjects: JetStream's API and acks, KV and object stores, the system
# account, reply inboxes, and the console's own traffic (snapshots, alerts). Nothing the
# console sends on an operator's behalf (a probe, a replay) may land there: a probe to
# `$JS.API.STREAM.DELETE.X` would delete a stream, a replay to `$KV.LUCENT_LEADER.collector`
# would overwrite the collectors' leader lease.
RESERVED = ("$JS.>", "$KV.>", "$O.>", "$SYS.>", "_INBOX.>", notify_subjects.ALL)
DEAD_LETTERS = "lucent.deadletter.>"


def reserved(subject: str, replay: bool = False) -> str | None:
    """Why ``subject`` may not be sent to by the console, or None. ``replay`` also
    refuses the dead letters themselves (a replay there would be captured again)."""
    for pattern in RESERVED + ((DEAD_LETTERS,) if replay else ()):
        if matches(pattern, subject):
            if pattern == DEAD_LETTERS:
                return "replaying into the dead letters themselves is refused"
            return (f"{subject[:80]!r} is one of the bus's own subjects ({pattern}): "
                    "the console does not send there")
    return None
