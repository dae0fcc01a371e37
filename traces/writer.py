"""The trace index's writer process: ``store`` on a core of its own, under load.

Reading and decoding keep the collector's core; the database work gets another
(``kernel.helper``, registered as ``WRITER`` in ``traces.apps``).
"""

from __future__ import annotations

from django.db import connection

from kernel.helper import Helper

from .store import OutOfOrder, store

WRITER = "trace-writer"  # the helper process's registered name
WRITER_CACHE_KIB = 65_536  # SQLite page cache of the Writer process


class Writer(Helper):
    """The process that writes the index under load (``store`` there): reading and
    decoding keep this process's core, the database work gets the other one."""

    TARGET = WRITER


def writer_handler():
    """In the writer process: ``store``, with a fresh connection after an error."""
    def write(rows: list[tuple], token: int, after: int | None) -> int:
        try:
            if connection.vendor == "sqlite" and connection.connection is None:
                connection.ensure_connection()
                with connection.cursor() as cursor:  # random-key inserts: -25 % wall
                    cursor.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
            return store(rows, token, after)
        except OutOfOrder:
            raise
        except Exception:
            connection.close()
            raise

    return write


def shareable_database() -> bool:
    """Whether another process can write this database (not an in-memory SQLite one)."""
    return connection.vendor != "sqlite" or not connection.is_in_memory_db()
