"""A leader lease on the bus: one holder at a time among processes on any machines.

The lease is a key in a JetStream key-value bucket (stream ``KV_LUCENT_LEADER``,
readable with ``nats kv get LUCENT_LEADER collector``) that keeps one message per
key (history 1) for ``ttl`` seconds: the stream's ``max_age``, since per-key TTLs
need nats-server 2.11 and this must work on 2.9. Holding the lease means having
written the key's last message:

1. acquire: read the key's last message; when there is none (it aged out, or was
   never written), it is a delete marker or our own, write it with
   ``Nats-Expected-Last-Subject-Sequence`` set to what was read. Of several
   processes trying at once the server accepts exactly one.
2. renew (every ttl/3, by the caller) the same way, expecting our last revision;
   "wrong last sequence" means someone else holds it now (``LeaseLost``).
3. release (a clean stop): a delete marker, again expecting our revision, so a
   standby takes over at once instead of after the TTL.

A holder may trust its lease until ``valid_until``: when it *sent* its last
accepted write plus the TTL. The server stored that write later, so the key ages
out later still. If the holder dies, the key ages out and a standby acquires it.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from datetime import UTC, datetime

from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from . import jetstream as js

BUCKET = "LUCENT_LEADER"
STREAM_NAME_IN_USE = 10058
WRONG_LAST_SEQUENCE = 10071


class LeaseLost(Exception):
    """Someone else holds the lease now."""


def identity() -> str:
    """``host:pid:random``: unique even for pid 1 in containers with the same name."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"


def bucket_config(bucket: str, ttl: float, replicas: int) -> dict:
    ttl_ns = int(ttl * 1e9)
    return {"name": f"KV_{bucket}", "subjects": [f"$KV.{bucket}.>"], "retention": "limits",
            "storage": "memory", "num_replicas": replicas, "max_msgs_per_subject": 1,
            "max_age": ttl_ns, "duplicate_window": ttl_ns, "discard": "old",
            "allow_rollup_hdrs": True, "deny_delete": True}


async def ensure_bucket(nc: Client, ttl: float, bucket: str = BUCKET) -> None:
    """Create the bucket (replicated like the cluster, up to 3), or bring its TTL up to date."""
    config = bucket_config(bucket, ttl, min(3, js.cluster_size(nc)))
    try:
        await js.add_stream(nc, config)
    except js.JetStreamError as exc:
        if exc.err_code != STREAM_NAME_IN_USE:
            raise
        await js.update_stream(nc, config)


async def read(nc: Client, key: str, bucket: str = BUCKET) -> dict | None:
    """The key's last entry: ``{"seq", "holder", ...}``; ``holder`` None when released;
    None when there is none (aged out, never written, or no bucket yet)."""
    try:
        reply = await js.api(nc, f"STREAM.MSG.GET.KV_{bucket}", {"last_by_subj": f"$KV.{bucket}.{key}"})
    except js.JetStreamError as exc:
        if exc.err_code in (js.NO_MESSAGE_FOUND, js.STREAM_NOT_FOUND):
            return None
        raise
    msg = js.decode_stored(reply["message"])
    if msg["headers"].get("KV-Operation") in ("DEL", "PURGE"):
        return {"seq": msg["seq"], "holder": None}
    try:
        value = json.loads(msg["data"])
    except ValueError:
        value = {}
    return {**value, "seq": msg["seq"], "holder": value.get("holder") or "?"}


class Lease:
    def __init__(self, nc: Client, key: str, ttl: float, holder: str | None = None,
                 bucket: str = BUCKET) -> None:
        self.nc, self.key, self.ttl, self.bucket = nc, key, ttl, bucket
        self.holder = holder or identity()
        self.revision = 0
        self.valid_until = 0.0  # time.monotonic()
        self.since = ""
        self.seen: dict | None = None  # the last entry read while not holding it
        self._bucket_ok = False

    @property
    def held(self) -> bool:
        return self.revision > 0 and time.monotonic() < self.valid_until

    async def _write(self, expect: int, data: bytes, headers: dict | None = None) -> None:
        sent = time.monotonic()
        try:
            reply = await self.nc.request(
                f"$KV.{self.bucket}.{self.key}", data, timeout=max(0.5, self.ttl / 4),
                headers={"Nats-Expected-Last-Subject-Sequence": str(expect), **(headers or {})})
        except NoRespondersError:
            self._bucket_ok = False
            raise js.JetStreamError(f"no lease bucket KV_{self.bucket}") from None
        except NatsTimeout:
            raise js.JetStreamError(f"lease write timed out after {self.ttl / 4:.1f}s") from None
        ack = json.loads(reply.data or b"{}")
        if "error" in ack:
            error = ack["error"]
            raise js.JetStreamError(error.get("description", "?"), error.get("code", 0),
                                    error.get("err_code", 0))
        self.revision, self.valid_until = int(ack["seq"]), sent + self.ttl

    def _value(self) -> bytes:
        return json.dumps({"holder": self.holder, "since": self.since, "ttl": self.ttl}).encode()

    async def acquire(self) -> bool:
        """Take the lease if nobody holds it. Raises on bus errors."""
        if not self._bucket_ok:
            await ensure_bucket(self.nc, self.ttl, self.bucket)
            self._bucket_ok = True
        current = await read(self.nc, self.key, self.bucket)
        if current is not None and current["holder"] not in (None, self.holder):
            self.seen = current
            return False
        # Free, or still ours (we stepped down while the bus was away): nobody else can
        # have written since the revision we read, which the write expects.
        self.since = datetime.now(UTC).isoformat(timespec="seconds")
        try:
            await self._write(current["seq"] if current else 0, self._value())
        except js.JetStreamError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                return False  # another process was quicker
            raise
        self.seen = None
        return True

    async def renew(self) -> None:
        """Extend the lease; ``LeaseLost`` when someone else holds it. Raises on bus errors."""
        for _ in range(2):
            try:
                return await self._write(self.revision, self._value())
            except js.JetStreamError as exc:
                if exc.err_code != WRONG_LAST_SEQUENCE:
                    raise
            current = await read(self.nc, self.key, self.bucket)
            if not current or current["holder"] != self.holder:
                self.seen = current
                break
            self.revision = current["seq"]  # an earlier renew was stored, its answer lost
        self.revision, self.valid_until = 0, 0.0
        raise LeaseLost(f"held by {(self.seen or {}).get('holder') or 'nobody'}")

    async def release(self) -> None:
        """Let a standby take over now. Never raises: the TTL does it otherwise."""
        if self.held:
            try:
                await self._write(self.revision, b"", {"KV-Operation": "DEL"})
            except Exception:
                pass
        self.revision, self.valid_until = 0, 0.0
