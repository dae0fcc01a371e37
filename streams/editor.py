"""The stream editor's service layer: create, edit and delete streams (admin, audited).

Every change is planned first: the proposed config (an edit is the live config with
the given fields changed), the diff against the live config (field: old -> new), the
topology lint run on the proposed config, whether the topology declares the stream
and which declared fields the change moves away from, and whether it is one of the
console's own streams. Applying needs the confirmations the plan names
(``confirm_lint`` for lint errors, ``confirm_declared``, ``confirm_own``); changes the
server never allows on an update (storage, retention to or from work queue, lifting
deny_delete ...) are refused up front with the server's own words, and whatever the
server still refuses is shown as it says it. A refused or failed action changes nothing.
"""

from __future__ import annotations

import hashlib
import json

from kernel.actions import ActionError, Conflict, NotFound, Refused, audited
from lucent_bus import jetstream as js
from lucent_bus import own as own_parts
from lucent_bus import streams_admin
from lucent_bus import subjects as subject_rules
from lucent_bus import sync as bus_sync

from . import topology
from .editor_serializers import CONTROLS, StreamConfigSerializer

CLEARABLE = StreamConfigSerializer.clearable

# Features shown on the stream page when the server reports them (newer servers).
FEATURES = (
    ("allow_msg_ttl", "Per-message TTL"),
    ("subject_delete_marker_ttl", "Subject delete markers"),
    ("allow_msg_counter", "Counters"),
    ("allow_msg_schedules", "Message schedules"),
)
NANOS = ("max_age", "duplicate_window", "subject_delete_marker_ttl")


def config_digest(config: dict | None) -> str | None:
    """What an edit was planned on: a digest of the live config (sent back to apply)."""
    if config is None:
        return None
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def config_fields(data: dict) -> dict:
    """The stream config fields of a validated body (its controls left out)."""
    return {k: v for k, v in data.items() if k not in CONTROLS}


def refused_changes(old: dict, new: dict) -> list[str]:
    """What nats-server refuses in an update from ``old`` to ``new`` (its checks in
    server/stream.go ``configUpdateCheck``, its own words)."""
    out = []
    if new.get("storage") != old.get("storage"):
        out.append("stream configuration update can not change storage type")
    retention = old.get("retention"), new.get("retention")
    if retention[0] != retention[1] and "workqueue" in retention:
        out.append("stream configuration update can not change retention policy to/from workqueue")
    for key, words in (("deny_delete", "can not cancel deny message deletes"),
                       ("deny_purge", "can not cancel deny purge"),
                       ("sealed", "can not unseal a sealed stream"),
                       ("allow_msg_ttl", "message TTL status can not be disabled"),
                       ("allow_msg_schedules", "message schedules can not be disabled")):
        if old.get(key) and not new.get(key):
            out.append(words if key.startswith("allow") else
                       f"stream configuration update {words}")
    if bool(old.get("allow_msg_counter")) != bool(new.get("allow_msg_counter")):
        out.append("stream configuration update can not change message counter setting")
    return out


def _same(key: str, a, b) -> bool:
    if key == "subjects":
        return sorted(a or []) == sorted(b or [])
    if key in CLEARABLE:  # an emptied form field on a stream that had none: no change
        return (a or "") == (b or "")
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) == bool(b)
    return a == b


def diff(old: dict, new: dict) -> list[list]:
    """``[field, old, new]`` for each field that changes (old None on a create)."""
    return [[key, old.get(key), new[key]] for key in new if not _same(key, old.get(key), new[key])]


def shown(key: str, value) -> str:
    """A config value as JSON, durations (nanoseconds) also in words: ``3600000000000
    (1 h)``."""
    text = json.dumps(value)
    if key in NANOS and isinstance(value, int) and value > 0:
        seconds = value / 1e9
        for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
            if seconds >= size:
                return f"{text} ({seconds / size:g} {unit})"
        return f"{text} ({seconds:g} s)"
    return text


def diff_text(rows: list[list]) -> str:
    return "; ".join(f"{k}: {json.dumps(o)} -> {json.dumps(n)}" for k, o, n in rows) or "no change"


def declared_spec(name: str) -> topology.StreamSpec | None:
    return next((s for s in topology.DECLARED if s.name == name), None)


def declared_drift(name: str, config: dict, cluster_size: int, keys=None) -> list[list] | None:
    """None when the topology does not declare ``name``; else ``[field, declared,
    proposed]`` for the declared fields ``config`` differs in (only ``keys`` if given)."""
    spec = declared_spec(name)
    if spec is None:
        return None
    drift = topology.config_drift(topology.desired_config(spec, cluster_size), config)
    return [[k, want, have] for k, have, want in drift if keys is None or k in keys]


def findings(config: dict, consumers: list[dict], cluster_size: int) -> list[dict]:
    """The topology lint on the proposed config, plus a warning for any one-token ``*``
    subject the ADR check does not already name."""
    info = {"config": config, "state": {"consumer_count": len(consumers)}}
    found = topology.lint_streams([info], {config["name"]: consumers}, cluster_size)
    named = " ".join(f.message for f in found if f.code == "single-token-wildcard")
    for pattern in config.get("subjects") or []:
        if pattern.split(".")[-1] == "*" and repr(pattern) not in named:
            prefix = pattern[:-2] or "the first token"
            found.append(topology.Finding(
                "single-token-wildcard", "warning", config["name"],
                f"{pattern!r} matches exactly one token after {prefix}: {prefix}.a is "
                f"stored, {prefix}.a.b is not", f"use {pattern[:-1] + '>'!r} if deeper "
                "subjects are meant"))
    return [f.as_dict() for f in found]


def plan(name: str, data: dict, ctx: dict, create: bool) -> dict:
    """What applying ``data`` to stream ``name`` would do, judged against ``ctx``
    (``streams_admin.context``). Raises for what can never be applied."""
    live, fields = ctx["live"], config_fields(data)
    if create and live is not None:
        raise ActionError(f"a stream named {name!r} exists already")
    if not create and live is None:
        raise NotFound(f"no stream named {name!r}")
    old = live or {}
    proposed = {**old, **fields, "name": name}
    refused = refused_changes(old, proposed) if not create else []
    refused += streams_admin.unsupported(ctx["version"], proposed)
    for subject in set(proposed.get("subjects") or []) - set(old.get("subjects") or []):
        why = subject_rules.reserved(subject)
        if why:
            refused.append(f"subject {why}")
    if refused:
        raise ActionError("refused, nothing changed: " + "; ".join(refused))
    changes = diff(old, proposed)
    keys = None if create else {row[0] for row in changes}
    declared = declared_drift(name, proposed, ctx["cluster_size"], keys)
    lint = findings(proposed, ctx["consumers"], ctx["cluster_size"])
    own = own_parts.own_stream(name)
    needs = [need for need, why in (("confirm_lint", any(f["severity"] == "error" for f in lint)),
                                    ("confirm_declared", bool(declared)),
                                    ("confirm_own", bool(own))) if why]
    return {"stream": name, "action": "create" if create else "edit", "applied": False,
            "config": proposed, "diff": changes, "findings": lint,
            "declared": declared is not None, "declared_drift": declared or [],
            "own": own, "needs": needs, "based_on": None if create else config_digest(live)}


def unconfirmed(plan_: dict, data: dict) -> None:
    """Raise unless every confirmation the plan needs was given."""
    if "confirm_own" in plan_["needs"] and not data.get("confirm_own"):
        raise Refused(f"{plan_['stream']} is one of the console's own streams: "
                      f"{plan_['own']}. Confirm with \"confirm_own\": true")
    if "confirm_declared" in plan_["needs"] and not data.get("confirm_declared"):
        fields = ", ".join(f"{k} (declared {json.dumps(d)}, proposed {json.dumps(p)})"
                           for k, d, p in plan_["declared_drift"]) or "the whole stream"
        raise ActionError(f"{plan_['stream']} is declared by the topology; this moves it from "
                          f"the declaration in: {fields}. Confirm with \"confirm_declared\": true")
    if "confirm_lint" in plan_["needs"] and not data.get("confirm_lint"):
        errors = "; ".join(f["message"] for f in plan_["findings"] if f["severity"] == "error")
        raise ActionError(f"the topology lint found errors: {errors}. "
                          "Confirm with \"confirm_lint\": true")


def _server(fn, *args):
    try:
        return bus_sync.with_client(fn, *args)
    except js.JetStreamError as exc:
        raise ActionError(f"the server refused, nothing changed: {exc}") from exc


def create(user, data: dict) -> dict:
    """Create a stream from a validated ``StreamConfigSerializer`` body (admin)."""
    name = data.get("name") or ""
    params = {"config": config_fields(data), "dry_run": bool(data.get("dry_run"))}
    with audited(user, "stream.create", name, params, "admin") as outcome:
        ctx = _server(streams_admin.context, name)
        result = plan(name, data, ctx, create=True)
        if data.get("dry_run"):
            outcome.detail = "dry run, nothing applied"
            return result
        unconfirmed(result, data)
        _server(streams_admin.create, result["config"])
        result["applied"] = True
        outcome.detail = f"created: {diff_text(result['diff'])}"
    return result


def edit(user, name: str, data: dict) -> dict:
    """Change the given fields of stream ``name`` (admin); the diff goes to the audit."""
    params = {"config": config_fields(data), "dry_run": bool(data.get("dry_run"))}
    with audited(user, "stream.edit", name, params, "admin") as outcome:
        ctx = _server(streams_admin.context, name)
        result = plan(name, data, ctx, create=False)
        if data.get("dry_run"):
            outcome.detail = f"dry run, nothing applied: {diff_text(result['diff'])}"
            return result
        if data.get("based_on") and data["based_on"] != result["based_on"]:
            raise Conflict(f"{name} has changed since this edit was previewed (someone else "
                           "edited it): nothing changed; preview again to see the change "
                           "against its config now")
        if not result["diff"]:
            raise ActionError(f"nothing to change: {name} already has this config")
        unconfirmed(result, data)
        _server(streams_admin.update, result["config"])
        result["applied"] = True
        outcome.detail = f"edited: {diff_text(result['diff'])}"
    return result


def delete(user, name: str, data: dict) -> dict:
    """Delete stream ``name`` and every message in it (admin); its config goes to the
    audit. The console's own and declared streams need their confirmation."""
    with audited(user, "stream.delete", name, {k: v for k, v in data.items() if v}, "admin") \
            as outcome:
        ctx = _server(streams_admin.context, name)
        if ctx["live"] is None:
            raise NotFound(f"no stream named {name!r}")
        own = own_parts.own_stream(name)
        declared = declared_spec(name) is not None
        result = {"stream": name, "action": "delete", "applied": False, "config": ctx["live"],
                  "diff": [], "findings": [], "declared": declared, "declared_drift": [],
                  "own": own, "messages": ctx["state"].get("messages", 0),
                  "consumers": len(ctx["consumers"]),
                  "needs": [n for n, why in (("confirm_declared", declared),
                                             ("confirm_own", bool(own))) if why]}
        if data.get("dry_run"):
            outcome.detail = "dry run, nothing deleted"
            return result
        unconfirmed(result, data)
        _server(streams_admin.delete, name)
        result["applied"] = True
        outcome.detail = (f"deleted with {result['messages']} messages and "
                          f"{result['consumers']} consumers; config: {json.dumps(ctx['live'])}")
    return result


def describe(name: str) -> dict:
    """The live config of ``name`` with what the editor knows of it (a read: any role):
    declared or not (and how it drifts), the console's own, the newer features the
    server reports."""
    ctx = _server(streams_admin.context, name)
    if ctx["live"] is None:
        raise NotFound(f"no stream named {name!r}")
    config = ctx["live"]
    features = []
    for key, label in FEATURES:
        if key in config:
            value = config[key]
            shown = (f"{value / 1e9:g} s" if value else "off") if key in NANOS else \
                ("on" if value else "off")
            features.append({"key": key, "label": label, "value": shown})
    return {"stream": name, "config": config, "state": ctx["state"],
            "consumers": len(ctx["consumers"]), "own": own_parts.own_stream(name),
            "declared": declared_spec(name) is not None,
            "declared_drift": declared_drift(name, config, ctx["cluster_size"]) or [],
            "features": features, "version": ".".join(map(str, ctx["version"]))}
