"""All NATS I/O of the console goes through this package.

- ``config``: how to reach the bus, read from the environment (secrets stay here).
- ``client``: connecting, with reconnect-forever and logging that never shows secrets.
- ``jetstream``: the JetStream JSON API as plain dicts (raw replies, nothing dropped).
- ``envelope``: tolerant decoding of the ADR message envelope.
- ``embedded``: the pinned nats-server binary, run as a child for ``up`` and tests.
"""
