"""The consumer service layer: pause, resume, reset, create, edit, delete, info.

Web pages, the JSON API and ``manage.py consumer`` call these; each action checks its
role and writes the audit record (``kernel.actions.audited``), and a refused or failed
action changes nothing. Roles: pause and resume need an operator, the rest an admin.
The console's own consumers (``lucent_bus.own``) are refused unless an admin confirms
what breaks (``confirm_own``). Bus calls go through ``lucent_bus.consumers``.
"""

from __future__ import annotations

import time as clock
from datetime import UTC, datetime, timedelta

from kernel import times
from kernel.actions import ActionError, Conflict, NotFound, audited, guard_own
from kernel.roles import has_role
from lucent_bus import consumers as bus
from lucent_bus import jetstream as js
from lucent_bus import own
from lucent_bus import sync as bus_sync

from .consumer_serializers import ConsumerConfigSerializer
from .editor import config_digest
from .snapshot import Tracker

# What an edit may not change: nats-server's server/consumer.go checkNewConsumerConfig
# refuses these on update (deliver_subject only between push and pull).
IMMUTABLE = ("deliver_policy", "opt_start_seq", "opt_start_time", "ack_policy",
             "replay_policy", "idle_heartbeat", "flow_control", "max_waiting", "mem_storage")
ROW_EXTRA = ("paused", "pause_until")
CREATE_DEFAULTS = {"deliver_policy": "all", "ack_policy": "explicit"}
NOT_CONFIG = ("confirm_own", "dry_run", "based_on")


# ------------------------------------------------------------------ reads

async def _fetch(nc, stream: str, name: str) -> tuple[dict, dict]:
    """(stream info, consumer info), NotFound for either."""
    try:
        sinfo = await js.stream_info(nc, stream)
    except js.JetStreamError as exc:
        if exc.err_code == js.STREAM_NOT_FOUND:
            raise NotFound(f"no stream named {stream!r}") from None
        raise
    try:
        return sinfo, await bus.info(nc, stream, name)
    except js.JetStreamError as exc:
        if exc.err_code == js.CONSUMER_NOT_FOUND:
            raise NotFound(f"no consumer named {name!r} on {stream}") from None
        raise


def _check_names(stream: str, name: str | None = None) -> None:
    for kind, value in (("stream", stream), ("consumer", name)):
        if value is not None and (not value or any(c in value for c in " .*>\t/\\")):
            raise NotFound(f"no {kind} named {value!r}")


def record(sinfo: dict, cinfo: dict) -> dict:
    """A consumer's snapshot record (the fields pages and the API show) from live infos."""
    snap = Tracker().build([sinfo], {sinfo["config"]["name"]: [cinfo]}, {})
    return next(iter(snap["consumers"].values()))


def info(stream: str, name: str) -> dict:
    """The consumer's record and config, read from the bus now (the CLI, the detail page)."""
    _check_names(stream, name)
    try:
        sinfo, cinfo = bus_sync.with_client(_fetch, stream, name)
    except ActionError:
        raise
    except Exception as exc:  # the bus away or refusing: said, not a server error
        raise ActionError(f"could not read {stream}/{name}: {type(exc).__name__}: {exc}") from exc
    return {**record(sinfo, cinfo), "config": clean_config(cinfo.get("config") or {}),
            "retention": sinfo["config"].get("retention"),
            "last_seq": sinfo.get("state", {}).get("last_seq", 0)}


def listing(stream: str) -> list[dict]:
    """Every consumer of ``stream`` as a record, read from the bus now (the CLI)."""
    _check_names(stream)

    async def go(nc):
        try:
            sinfo = await js.stream_info(nc, stream)
        except js.JetStreamError as exc:
            if exc.err_code == js.STREAM_NOT_FOUND:
                raise NotFound(f"no stream named {stream!r}") from None
            raise
        return sinfo, await js.list_consumers(nc, stream)

    sinfo, infos = bus_sync.with_client(go)
    return sorted((record(sinfo, c) for c in infos), key=lambda r: r["name"])


def clean_config(config: dict) -> dict:
    """A config as an edit starts from: without the server's own metadata (``_nats.*``,
    set again by the server) and the pause (its own action)."""
    out = {k: v for k, v in config.items() if k != "pause_until"}
    meta = {k: v for k, v in (config.get("metadata") or {}).items() if not k.startswith("_nats.")}
    if meta:
        out["metadata"] = meta
    else:
        out.pop("metadata", None)
    return out


def _guard_own(admin: bool, stream: str, name: str, config: dict, confirm_own: bool) -> None:
    """Refuse the console's own consumer unless ``admin`` (``has_role(user, "admin")``,
    asked before going to the bus loop, where the database may not be read) confirmed."""
    guard_own(admin, f"consumer {stream}/{name}", own.own_consumer(stream, name, config),
              confirm_own)


def _unsupported(exc: bus.Unsupported) -> ActionError:
    return ActionError(str(exc))


# ------------------------------------------------------------------ pause, resume

def pause_until(until: str | None = None, seconds: int | None = None) -> datetime:
    if seconds is not None:
        if seconds <= 0:
            raise ActionError("seconds must be above 0")
        return datetime.now(UTC) + timedelta(seconds=seconds)
    when = times.parse(until, "until")
    if when <= datetime.now(UTC):
        raise ActionError("until is in the past: to resume, use resume")
    return when


def pause(user, stream: str, name: str, until=None, seconds=None, confirm_own=False) -> dict:
    """Pause until a time or for N seconds (operator; audited)."""
    params = {k: v for k, v in {"until": until, "seconds": seconds}.items() if v is not None}
    with audited(user, "consumer.pause", f"{stream}/{name}", params, "operator") as outcome:
        if (until is None) == (seconds is None):
            raise ActionError("give either until or seconds (one of them)")
        when = pause_until(until, seconds)
        reply = _pause(stream, name, when, user, confirm_own)
        outcome.detail = f"paused until {reply['pause_until']}"
    return reply


def resume(user, stream: str, name: str, confirm_own=False) -> dict:
    with audited(user, "consumer.resume", f"{stream}/{name}", {}, "operator") as outcome:
        reply = _pause(stream, name, None, user, confirm_own)
        outcome.detail = "resumed"
    return reply


def _pause(stream, name, when, user, confirm_own) -> dict:
    _check_names(stream, name)
    admin = has_role(user, "admin")

    async def go(nc):
        _, cinfo = await _fetch(nc, stream, name)
        _guard_own(admin, stream, name, cinfo.get("config"), confirm_own)
        return await bus.pause(nc, stream, name, when)

    try:
        reply = bus_sync.with_client(go)
    except bus.Unsupported as exc:
        raise _unsupported(exc) from None
    paused = bool(reply.get("paused"))
    return {"stream": stream, "name": name, "paused": paused,
            "pause_until": reply.get("pause_until") if paused else None}


# ------------------------------------------------------------------ reset

def reset(user, stream: str, name: str, seq=None, time=None, recreate=False,
          confirm_own=False) -> dict:
    """Make the consumer deliver again from ``seq`` (or the first message at or after
    ``time``): the server's reset (2.14+), or with ``recreate`` the durable deleted and
    created again there (any server; refused on interest and work-queue streams). Admin."""
    params = {k: v for k, v in {"seq": seq, "time": time, "recreate": recreate or None}.items()
              if v is not None}
    with audited(user, "consumer.reset", f"{stream}/{name}", params, "admin") as outcome:
        if (seq is None) == (time is None):
            raise ActionError("give either seq or time (one of them)")
        when = times.parse(time, "time") if time is not None else None
        if when is not None and when > datetime.now(UTC):
            raise ActionError("time is in the future: nothing is stored there yet")
        _check_names(stream, name)
        result = bus_sync.with_client(_reset, stream, name, seq, when, recreate,
                                      has_role(user, "admin"), confirm_own)
        outcome.detail = (("recreated" if result["recreated"] else "reset")
                          + f" to sequence {result['seq']}")
    return result


async def _reset(nc, stream, name, seq, when, recreate, admin, confirm_own) -> dict:
    """Where (a time mapped to a sequence), whether the server can, or the recreate
    alternative with what it loses; each refusal with its reason."""
    sinfo, cinfo = await _fetch(nc, stream, name)
    config = cinfo.get("config") or {}
    _guard_own(admin, stream, name, config, confirm_own)
    state = sinfo.get("state", {})
    first, last = state.get("first_seq", 0), state.get("last_seq", 0)
    if when is not None:
        found = await bus.seq_at_time(nc, stream, when, first, last)
        seq = found if found is not None else last + 1
    if seq > last + 1:
        raise ActionError(f"sequence {seq} is past the end of {stream} (its last is {last}; "
                          f"{last + 1} means only new messages)")
    lost = (f"its ack state: {cinfo.get('num_ack_pending', 0)} pending acks and "
            f"{cinfo.get('num_redelivered', 0)} redelivery counts")
    if not recreate:
        try:
            reply = await bus.reset(nc, stream, name, seq)
        except bus.Unsupported as exc:
            raise ActionError(f"{exc}. The alternative: recreate the durable at "
                              f"sequence {seq} with its config (deliver_policy "
                              f"by_start_sequence, opt_start_seq {seq}); that loses {lost}. "
                              'Send "recreate": true to do that.') from None
        except js.JetStreamError as exc:
            raise ActionError(f"the server refused the reset: {exc} (it resets consumers that "
                              "deliver all, by_start_sequence or by_start_time, not below their "
                              'start; "recreate": true recreates the durable there instead)'
                              ) from None
        return {"stream": stream, "name": name, "seq": int(reply.get("reset_seq", seq)),
                "recreated": False}
    retention = sinfo["config"].get("retention", "limits")
    if retention != "limits":
        raise ActionError(f"recreating a consumer of a {retention} stream would lose "
                          "messages (deleting it may remove what only it still needed): "
                          "refused")
    if not config.get("durable_name"):
        raise ActionError("only a durable consumer can be recreated")
    await bus.recreate(nc, stream, clean_config(config), seq)
    return {"stream": stream, "name": name, "seq": seq, "recreated": True}


def reset_loses(stream: str, name: str) -> str:
    """What a reset or a recreate drops, in words (the pages' confirmation)."""
    rec = info(stream, name)
    return (f"{rec['num_ack_pending']} pending acks and {rec['num_redelivered']} redelivery "
            "counts are dropped; unacknowledged messages before the point are not redelivered")


# ------------------------------------------------------------------ create, edit, delete

def _check_config(nc, config: dict) -> None:
    if config.get("deliver_policy") == "by_start_sequence" and not config.get("opt_start_seq"):
        raise ActionError("deliver_policy by_start_sequence needs opt_start_seq")
    if config.get("deliver_policy") == "by_start_time" and not config.get("opt_start_time"):
        raise ActionError("deliver_policy by_start_time needs opt_start_time")
    if config.get("opt_start_seq") and config.get("deliver_policy") != "by_start_sequence":
        raise ActionError("opt_start_seq goes with deliver_policy by_start_sequence")
    if config.get("opt_start_time") and config.get("deliver_policy") != "by_start_time":
        raise ActionError("opt_start_time goes with deliver_policy by_start_time")
    if nc is not None and not bus.supports(nc, bus.FILTERS_SINCE):
        for key in ("filter_subjects", "metadata"):
            if config.get(key):
                raise ActionError(f"{key} is not supported by this server "
                                  f"({bus.version_text(nc)}): it needs nats-server 2.10")


def create_config(stream: str, data: dict) -> dict:
    """The config a create sends: the fields given, the console's defaults for the rest."""
    config = {**CREATE_DEFAULTS, **{k: v for k, v in data.items() if k not in NOT_CONFIG}}
    if not config.get("durable_name"):
        raise ActionError("durable_name is required")
    config.setdefault("name", config["durable_name"])
    _check_names(stream)
    _check_config(None, config)
    return config


def create(user, stream: str, data: dict) -> dict:
    """Create a durable consumer (admin; audited). ``dry_run``: only the preview (the
    config that would be sent), audited like the action."""
    preview = bool(data.get("dry_run"))
    with audited(user, "consumer.create", f"{stream}/{data.get('durable_name', '')}", data,
                 "admin") as outcome:
        config = create_config(stream, data)
        admin = has_role(user, "admin")

        async def go(nc):
            _check_config(nc, config)
            _guard_own(admin, stream, config["name"], config, bool(data.get("confirm_own")))
            try:
                await bus.info(nc, stream, config["name"])
            except js.JetStreamError as exc:
                if exc.err_code == js.STREAM_NOT_FOUND:
                    raise NotFound(f"no stream named {stream!r}") from None
                if exc.err_code != js.CONSUMER_NOT_FOUND:
                    raise
            else:
                raise ActionError(f"{stream} already has a consumer named {config['name']!r}")
            if not preview:
                await _send(nc, stream, config, "create")

        bus_sync.with_client(go)
        outcome.detail = "preview only" if preview else f"created {config['name']}"
    return {"stream": stream, "name": config["name"], "config": config, "applied": not preview}


async def _send(nc, stream, config, action) -> dict:
    try:
        return await bus.create(nc, stream, config, action)
    except js.JetStreamError as exc:
        raise ActionError(f"the server refused the config: {exc}") from None


def _same(key: str, a, b) -> bool:
    if key in ConsumerConfigSerializer.clearable:  # "" clears: none before is no change
        return (a or "") == (b or "")
    return a == b


def edit_config(current: dict, data: dict, name: str) -> tuple[dict, list[dict]]:
    """The merged config an edit sends and its diff [{field, from, to}] against the current
    one; an immutable field changed is refused with the server's rule."""
    base = clean_config(current)
    changes = {k: v for k, v in data.items() if k not in NOT_CONFIG}
    for key in ("durable_name", "name"):
        if key in changes and changes[key] != name:
            raise ActionError(f"{key} cannot be changed (it is {name!r}): create another "
                              "consumer instead")
    for key in IMMUTABLE:
        if key in changes and changes[key] != base.get(key):
            raise ActionError(f"{key} cannot be changed on an existing consumer (nats-server "
                              "refuses it): delete and create it instead")
    if "deliver_subject" in changes and bool(changes["deliver_subject"]) != bool(
            base.get("deliver_subject")):
        raise ActionError("deliver_subject cannot turn a pull consumer into a push one or "
                          "back: delete and create it instead")
    merged = {**base, **changes}
    diff = [{"field": k, "from": base.get(k), "to": merged.get(k)}
            for k in sorted(set(base) | set(merged)) if not _same(k, base.get(k), merged.get(k))]
    if current.get("pause_until"):
        merged["pause_until"] = current["pause_until"]  # an edit does not end a pause
    return merged, diff


def edit(user, stream: str, name: str, data: dict) -> dict:
    """Change what the server allows on a durable (admin; audited). ``dry_run``: only the
    preview (the config that would be sent and its diff), audited like the action."""
    preview = bool(data.get("dry_run"))
    with audited(user, "consumer.edit", f"{stream}/{name}", data, "admin") as outcome:
        _check_names(stream, name)
        admin = has_role(user, "admin")

        async def go(nc):
            _, cinfo = await _fetch(nc, stream, name)
            _guard_own(admin, stream, name, cinfo.get("config"), bool(data.get("confirm_own")))
            # A pause by someone else is its own action, not a change of what was previewed.
            based_on = config_digest(clean_config(cinfo.get("config") or {}))
            if not preview and data.get("based_on") and data["based_on"] != based_on:
                raise Conflict(f"consumer {name} has changed since this edit was previewed "
                               "(someone else changed it): nothing changed; preview again to "
                               "see the change against its config now")
            merged, diff = edit_config(cinfo.get("config") or {}, data, name)
            _check_config(nc, merged)
            if diff and not preview:
                await _send(nc, stream, merged, "update")
            return merged, diff, based_on

        merged, diff, based_on = bus_sync.with_client(go)
        changed = ", ".join(d["field"] for d in diff) or "nothing"
        outcome.detail = f"preview: would change {changed}" if preview else f"changed {changed}"
    return {"stream": stream, "name": name, "config": merged, "diff": diff,
            "applied": not preview, "based_on": based_on}


def delete(user, stream: str, name: str, confirm_own=False) -> dict:
    with audited(user, "consumer.delete", f"{stream}/{name}", {}, "admin") as outcome:
        _check_names(stream, name)
        admin = has_role(user, "admin")

        async def go(nc):
            _, cinfo = await _fetch(nc, stream, name)
            _guard_own(admin, stream, name, cinfo.get("config"), confirm_own)
            await bus.delete(nc, stream, name)

        bus_sync.with_client(go)
        outcome.detail = f"deleted {name}"
    return {"stream": stream, "name": name, "deleted": True}


def pause_text(rec: dict, now: float | None = None) -> str:
    """"paused, resumes in 4 min" for the CLI (pages use the live ``|ago`` tag)."""
    if not rec.get("paused"):
        return "running"
    until = js.parse_time(rec.get("pause_until"))
    if until is None:
        return "paused"
    left = until.timestamp() - (now or clock.time())
    if left >= 60:
        return f"paused, resumes in {round(left / 60)} min"
    return f"paused, resumes in {max(0, round(left))} s"
