"""NATS subject matching: ``*`` is exactly one token, ``>`` one or more at the end."""


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
