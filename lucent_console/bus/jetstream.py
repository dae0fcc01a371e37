"""The JetStream JSON API as plain dicts.

Raw replies keep every field the server sends (nats-py's dataclasses drop some,
e.g. ``num_subjects``), and list calls page through ``offset`` so they work with
ordinary account credentials and against a cluster.
"""

from __future__ import annotations

import json
from typing import Any

from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

API_PREFIX = "$JS.API"


class JetStreamError(Exception):
    """An error answered by the JetStream API (or the lack of an answer)."""

    def __init__(self, description: str, code: int = 0, err_code: int = 0) -> None:
        super().__init__(description)
        self.description = description
        self.code = code
        self.err_code = err_code

    def __str__(self) -> str:
        if self.err_code:
            return f"{self.description} (err_code {self.err_code})"
        return self.description


# err_code values from nats-server's errors.json that callers test for.
STREAM_NOT_FOUND = 10059
CONSUMER_NOT_FOUND = 10014
REPLICAS_NOT_SUPPORTED = 10074
INSUFFICIENT_RESOURCES = 10023
NO_MESSAGE_FOUND = 10037


async def api(nc: Client, op: str, payload: dict | None = None, timeout: float = 5.0) -> dict:
    """Call ``$JS.API.<op>`` and return the decoded reply, raising on an error reply."""
    data = json.dumps(payload).encode() if payload is not None else b""
    try:
        msg = await nc.request(f"{API_PREFIX}.{op}", data, timeout=timeout)
    except NoRespondersError:
        raise JetStreamError("JetStream is not enabled on this bus (no responders)") from None
    except NatsTimeout:
        raise JetStreamError(f"JetStream API {op} timed out after {timeout}s") from None
    reply = json.loads(msg.data or b"{}")
    error = reply.get("error")
    if error:
        raise JetStreamError(
            error.get("description", "unknown error"),
            error.get("code", 0),
            error.get("err_code", 0),
        )
    return reply


async def account_info(nc: Client) -> dict:
    return await api(nc, "INFO")


async def _paged(nc: Client, op: str, key: str) -> list[dict]:
    items: list[dict] = []
    while True:
        reply = await api(nc, op, {"offset": len(items)})
        page = reply.get(key) or []
        items.extend(page)
        if not page or len(items) >= reply.get("total", 0):
            return items


async def list_streams(nc: Client) -> list[dict]:
    """Every stream's info (config, state, cluster), paged."""
    return await _paged(nc, "STREAM.LIST", "streams")


async def stream_info(nc: Client, name: str, subjects_filter: str | None = None) -> dict:
    payload: dict[str, Any] = {}
    if subjects_filter:
        payload["subjects_filter"] = subjects_filter
    return await api(nc, f"STREAM.INFO.{name}", payload or None)


async def stream_exists(nc: Client, name: str) -> bool:
    try:
        await stream_info(nc, name)
    except JetStreamError as exc:
        if exc.err_code == STREAM_NOT_FOUND:
            return False
        raise
    return True


async def add_stream(nc: Client, config: dict) -> dict:
    return await api(nc, f"STREAM.CREATE.{config['name']}", config)


async def update_stream(nc: Client, config: dict) -> dict:
    return await api(nc, f"STREAM.UPDATE.{config['name']}", config)


async def delete_stream(nc: Client, name: str) -> dict:
    return await api(nc, f"STREAM.DELETE.{name}")


async def list_consumers(nc: Client, stream: str) -> list[dict]:
    return await _paged(nc, f"CONSUMER.LIST.{stream}", "consumers")


async def consumer_info(nc: Client, stream: str, name: str) -> dict:
    return await api(nc, f"CONSUMER.INFO.{stream}.{name}")


async def add_consumer(nc: Client, stream: str, config: dict) -> dict:
    """Create or update a durable consumer (idempotent for an unchanged config)."""
    name = config["durable_name"]
    payload = {"stream_name": stream, "config": config}
    return await api(nc, f"CONSUMER.CREATE.{stream}.{name}", payload)


async def get_message(nc: Client, stream: str, seq: int) -> dict:
    """``STREAM.MSG.GET`` by sequence: works on every retention, work queues included."""
    return await api(nc, f"STREAM.MSG.GET.{stream}", {"seq": seq})


def cluster_size(nc: Client) -> int:
    """How many servers the bus has, from the INFO the server sent us.

    A clustered server names its cluster and gossips the client URLs of all its
    peers (``connect_urls``, itself included); a lone server has neither. The
    INFO of the connect may predate the cluster forming: servers announced
    later (nats-py marks them ``discovered`` in its pool) count too.
    """
    info = getattr(nc, "_server_info", {}) or {}
    if not info.get("cluster"):
        return 1
    urls = {u.split("://")[-1] for u in info.get("connect_urls") or []}
    urls |= {s.uri.netloc for s in getattr(nc, "_server_pool", []) if s.discovered}
    return max(1, len(urls))


def server_summary(nc: Client) -> dict:
    info = getattr(nc, "_server_info", {}) or {}
    return {
        "server_name": info.get("server_name"),
        "version": info.get("version"),
        "cluster": info.get("cluster"),
        "jetstream": bool(info.get("jetstream")),
        "cluster_size": cluster_size(nc),
    }
