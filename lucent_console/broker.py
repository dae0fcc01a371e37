"""The embedded Celery broker (no ``REDIS_URL``): kombu's filesystem transport, made safe.

kombu 5.7's filesystem transport writes a message by creating its file in the queue
folder and then writing into it, while a worker takes any file it lists there. A
worker that lists the file between the two reads it empty: ``JSONDecodeError``, the
worker stops ("Unrecoverable error") and the message is gone (seen on ``make run``:
the worker died at start-up, once per few starts). Here a message is written under a
name the worker does not take (``.part``), flushed, then renamed into place, which is
atomic on one filesystem. A worker takes a file by renaming it into ``processed/``
(same filesystem, so never a copy of a half-read file), and a file it cannot decode is
kept there as ``*.bad`` and set aside in ``Quarantined`` (counted on /metrics as
``lucent_quarantined_total``), instead of stopping the worker.

Its exchange tables (which queue an exchange routes to) had the same kind of race:
a process that found no table opened it with "wb", truncating whatever another
process had just bound, so messages sent to that exchange were routed nowhere (seen
as a third of a test's messages arriving; on a fresh ``var/`` the web, worker and beat
processes all bind ``celery`` at start). And within one process, kombu notes a
binding in memory shared by every connection before writing it to the table, so a
second thread could send before the first had written it: its messages went to the
undeliverable queue nobody reads. Here the table is created without truncation, read,
changed and written under one exclusive lock, and written before the binding is noted.
"""

from __future__ import annotations

import logging
import os
import uuid
from queue import Empty
from time import monotonic

from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.transport.filesystem import LOCK_EX, exchange_queue_t, lock, unlock
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

log = logging.getLogger(__name__)

ALIAS = "lucentfs"


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = final + ".part"  # ends otherwise than "<queue>.msg": never taken
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, final)
        except OSError as exc:
            raise filesystem.ChannelError(f"cannot add {final!r} to the queue: {exc}") from exc

    def queue_bind(self, queue, exchange=None, routing_key="", arguments=None, **kwargs):
        exchange = exchange or "amq.direct"
        meta = self.typeof(exchange).prepare_bind(queue, exchange, routing_key, arguments)
        self._queue_bind(exchange, *meta)  # on disk before any thread can see it noted
        super().queue_bind(queue, exchange, routing_key, arguments, **kwargs)

    def _queue_bind(self, exchange, routing_key, pattern, queue):
        file = self._exchange_file(exchange)
        self.control_folder.mkdir(parents=True, exist_ok=True)
        entry = exchange_queue_t(routing_key or "", pattern or "", queue or "")
        try:
            # O_CREAT without O_TRUNC: never empties a table another process wrote.
            with os.fdopen(os.open(file, os.O_RDWR | os.O_CREAT, 0o644), "rb+", buffering=0) as f:
                lock(f, LOCK_EX)
                try:
                    text = bytes_to_str(f.read())
                    table = [exchange_queue_t(*q) for q in loads(text)] if text.strip() else []
                    if entry not in table:
                        table.insert(0, entry)
                        f.seek(0)
                        f.write(str_to_bytes(dumps(table)))
                        f.truncate()
                finally:
                    unlock(f)
        except OSError as exc:
            raise filesystem.ChannelError(f"cannot bind {queue!r} in {file}: {exc}") from exc

    def get_table(self, exchange):
        # A table just created by another process is empty until its first write, which
        # holds the lock: read under a shared lock (kombu does), empty meaning no binding.
        file = self._exchange_file(exchange)
        try:
            with open(file, "rb") as f:
                lock(f, filesystem.LOCK_SH)
                try:
                    text = bytes_to_str(f.read())
                finally:
                    unlock(f)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise filesystem.ChannelError(f"cannot open {file}: {exc}") from exc
        return [exchange_queue_t(*q) for q in loads(text)] if text.strip() else []

    def _get(self, queue):
        wanted = f"{queue}.msg"
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.partition(".")[2] != wanted:
                continue
            taken = os.path.join(self.processed_folder, name)
            try:
                os.replace(os.path.join(self.data_folder_in, name), taken)
            except FileNotFoundError:
                continue  # another worker took it
            with open(taken, "rb") as f:
                payload = f.read()
            try:
                message = loads(bytes_to_str(payload))
            except ValueError:
                os.replace(taken, taken + ".bad")
                _set_aside(queue, name, len(payload))
                continue
            if not self.store_processed:
                os.remove(taken)
            return message
        raise Empty()


def _set_aside(queue: str, name: str, size: int) -> None:
    # Imported here: this module is imported with the Celery app, before Django's apps load.
    from kernel import quarantine

    try:
        quarantine.set_aside("celery-broker", queue, "", None, name,
                             f"unreadable message file, kept as {name}.bad in the processed "
                             "folder", None, size)
    except Exception:  # the database away: the .bad file is still the record
        log.exception("broker: kept an unreadable message as %s.bad (%d bytes)", name, size)


class Transport(filesystem.Transport):
    Channel = Channel

    @property
    def default_connection_params(self):
        # Folders, no host: without a default hostname kombu does not warn "No hostname
        # was supplied" on every connection (a WARNING in every worker's log for nothing).
        return {"port": self.default_port}


TRANSPORT_ALIASES.setdefault(ALIAS, f"{__name__}:Transport")
