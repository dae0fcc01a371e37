"""Creating, editing and deleting streams: what the editor needs from the bus.

The requests themselves are ``jetstream.add_stream``/``update_stream``/``delete_stream``;
this module adds what the editor must know before it sends one: the live config (or
that there is none), the consumers the lint needs, the cluster size and which newer
stream features the connected server understands. An older server ignores a config
field it does not know, so a feature it lacks is refused here rather than silently
dropped.
"""

from __future__ import annotations

from nats.aio.client import Client

from . import jetstream as js

# Stream config fields of newer servers -> the first nats-server version that honours them.
FEATURES = {
    "allow_msg_ttl": (2, 11, 0),
    "subject_delete_marker_ttl": (2, 11, 0),
    "allow_msg_counter": (2, 12, 0),
    "allow_msg_schedules": (2, 12, 0),
}


def unsupported(version: tuple[int, int, int], config: dict) -> list[str]:
    """The newer features ``config`` turns on that a server of ``version`` does not
    have, each as a sentence."""
    out = []
    for key, needs in FEATURES.items():
        if config.get(key) and version < needs:
            out.append(f"{key} needs nats-server {'.'.join(map(str, needs))} or newer; "
                       f"the bus runs {'.'.join(map(str, version))}")
    return out


async def context(nc: Client, name: str) -> dict:
    """What a create or edit of stream ``name`` is judged against: ``live`` (its config,
    or None when there is no such stream), ``state``, ``consumers`` (CONSUMER.LIST
    replies), ``cluster_size`` and ``version``."""
    try:
        info = await js.stream_info(nc, name)
    except js.JetStreamError as exc:
        if exc.err_code != js.STREAM_NOT_FOUND:
            raise
        info = None
    consumers = await js.list_consumers(nc, name) if info else []
    return {"live": info["config"] if info else None, "state": (info or {}).get("state", {}),
            "consumers": consumers, "cluster_size": js.cluster_size(nc),
            "version": js.server_version(nc)}


async def create(nc: Client, config: dict) -> dict:
    """Create the stream; refuses features the server lacks. Returns the server's info."""
    missing = unsupported(js.server_version(nc), config)
    if missing:
        raise js.JetStreamError("; ".join(missing))
    return await js.add_stream(nc, config)


async def update(nc: Client, config: dict) -> dict:
    missing = unsupported(js.server_version(nc), config)
    if missing:
        raise js.JetStreamError("; ".join(missing))
    return await js.update_stream(nc, config)


async def delete(nc: Client, name: str) -> None:
    reply = await js.delete_stream(nc, name)
    if not reply.get("success", True):
        raise js.JetStreamError(f"the server did not delete {name}")
