"""The trace index's readers: each Lucent stream followed, its messages made rows.

Ordered streams (COMMANDS, AGENT_COORDINATION, DEAD_LETTERS) are read with ordered
consumers, each on a bus connection of its own, from their resume point; the others
(DOMAIN_EVENTS: interest, HIERARCHY: work queue) with core subscriptions, live only
(``lucent_bus.tail`` says why). ``Readers`` is the reading half of
``traces.indexer.Indexer``: it fills ``rows`` and ``last`` and ``generation``, which
the indexer writes and moves on.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from lucent_bus import cancel, tail
from lucent_bus import deadletters as dl
from lucent_bus import jetstream as js
from lucent_bus.client import backoff_delay, sibling

from .rows import row_from
from .store import base, generation_of

log = logging.getLogger("lucent.traces")

# stream -> read with an ordered consumer (True) or live only (False)
STREAMS = {"COMMANDS": True, "AGENT_COORDINATION": True, dl.STREAM: True,
           "DOMAIN_EVENTS": False, "HIERARCHY": False}
CHECK_GENERATION_S = 1.0  # how often a followed ordered stream is checked for a new generation


class Readers:
    """Following the streams. The indexer's state it uses: ``nc``, ``rows`` (waiting to
    be written), ``last`` (stream -> last sequence read), ``generation``, ``behind``,
    ``following``, ``connections``, ``max_pending``, ``batch``, ``full``, ``dropped``."""

    def callback(self, stream: str, ordered: bool):
        async def on_message(msg) -> None:
            if stream in self.behind:
                return
            if len(self.rows) >= self.max_pending:
                if ordered:
                    self.behind.add(stream)  # read again from self.last later
                else:
                    self.dropped += 1
                return
            row = row_from(stream, msg.subject, msg.reply, msg.data, msg.headers,
                           generation=self.generation.get(stream, "") if ordered else "")
            if ordered:
                # A recreated ordered consumer must not add a row twice (bus.tail).
                if row[1] is None or row[1] <= self.last.get(stream, 0):
                    return
                self.last[stream] = row[1]
            self.rows.append(row)
            if len(self.rows) >= self.batch:
                self.full.set()
        return on_message

    async def follow(self, stream: str, ordered: bool, stop: asyncio.Event) -> None:
        """Keep one stream followed: (re)subscribe after errors or a backlog."""
        attempt = 0
        while not stop.is_set():
            cancel.check()
            subs, conn = [], None
            try:
                cb = self.callback(stream, ordered)
                if ordered:
                    # A connection of its own: catching up, it may have 32 MiB in flight
                    # (see bus.client.sibling), which must not close the collector's.
                    conn = await sibling(self.nc, f"trace-index {stream}")
                    self.connections[stream] = conn
                    info = await js.stream_info(conn, stream)
                    start = self.start(stream, info)
                    subs = [await tail.ordered(conn, stream, start, cb)]
                else:
                    subs = await tail.live(self.nc, stream, cb)
                attempt = 0
                self.following.add(stream)
                checked = asyncio.get_running_loop().time()
                while not stop.is_set() and stream not in self.behind:
                    cancel.check()
                    await _sleep(stop, 0.5)
                    if ordered and asyncio.get_running_loop().time() - checked >= CHECK_GENERATION_S:
                        checked = asyncio.get_running_loop().time()
                        if self.declared_again(stream, await js.stream_info(conn, stream)):
                            break
            except Exception as exc:
                log.warning("traces: cannot follow %s (%s); retrying", stream, exc)
                await _sleep(stop, backoff_delay(attempt, base=1.0, cap=10.0))
                attempt += 1
            finally:
                self.following.discard(stream)
                for sub in subs:
                    try:
                        await sub.unsubscribe()
                    except Exception:
                        pass
                if conn is not None:
                    self.connections.pop(stream, None)
                    try:
                        await conn.close()
                    except Exception:
                        pass
            while stream in self.behind and not stop.is_set():
                if len(self.rows) < self.max_pending // 2:
                    self.behind.discard(stream)
                else:
                    await _sleep(stop, 0.2)

    def start(self, stream: str, info: dict) -> int:
        """Where to read ``stream`` from, and under which generation (``self.generation``).

        A point of this generation resumes after it; one of another generation (the
        stream declared again, another bus) restarts at the stream's first sequence; a
        point past the end of its own generation (a backup restored: same ``created``,
        fewer messages) starts a generation of its own there, so that the rows to come
        are not taken for ones stored before. Points from before generations ("") are
        judged by the stream's length, as they were.
        """
        gen, state = dl.generation(info), info.get("state", {})
        first, last_seq = max(1, state.get("first_seq") or 1), state.get("last_seq", 0)
        held, seq = self.generation.get(stream), self.last.get(stream, 0)
        if held is None or (not held and seq == 0):
            start, label = max(1, seq + 1), gen  # never read: from the start, as before
        elif not held:
            start, label = (1 if seq + 1 > last_seq + 1 else seq + 1), gen
        elif base(held) == gen and seq <= last_seq:
            start, label = seq + 1, held
        elif base(held) == gen:
            label = f"{gen}#r{secrets.token_hex(3)}"
            log.warning("traces: %s ends at %d, before the %d indexed (restored from a backup?); "
                        "indexing it from %d as generation %s", stream, last_seq, seq, first, label)
            start = first
        else:
            log.warning("traces: %s was declared again (generation %s, was %s); indexing it from "
                        "%d", stream, gen, held, first)
            start, label = first, gen
        self.generation[stream], self.last[stream] = label, start - 1
        return start

    def declared_again(self, stream: str, info: dict) -> bool:
        """Whether the followed ``stream`` now has another generation. Rows waiting that
        were stored after the new one was created came from it (nats-py recreates an
        ordered consumer by itself) and are read again from its first sequence."""
        gen, held = dl.generation(info), self.generation.get(stream, "")
        if not held or base(held) == gen:
            return False
        created = js.parse_time(gen)
        if created is not None:
            self.rows = [r for r in self.rows if not (r[0] == stream and generation_of(r) == held
                                                      and r[8] >= created)]
        return True


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
