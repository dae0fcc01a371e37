"""Dead letters: a bulk replay reads DEAD_LETTERS in batches (DIRECT.GET, turned on by
topology apply) where the server can, one by one on nats-server 2.9, exactly once both ways."""

import pytest

from deadletters import replay
from lucent_bus import deadletters as dl
from lucent_bus import jetstream as js
from streams import topology

from .deadletter_bus import SECOND, bulk_replay_twice, explicit_letters

pytestmark = pytest.mark.django_db(transaction=True)


async def test_batched_reads_return_what_one_by_one_reads_do(fresh_nc):
    await explicit_letters(fresh_nc, 300)
    assert js.supports_batch_get(fresh_nc)
    info = await js.stream_info(fresh_nc, dl.STREAM)
    assert info["config"]["allow_direct"] is True  # declared: topology apply set it
    await js.delete_message(fresh_nc, dl.STREAM, 150)  # purged meanwhile
    seqs = [s for s in range(1, 301) if s % 3] + [299, 600]  # gaps, a repeat, one never stored
    batched = await replay.read_letters(fresh_nc, seqs, batched=True)
    single = await replay.read_letters(fresh_nc, seqs, batched=False)
    assert set(batched) == set(single) == {s for s in seqs if s not in (150, 600)}
    for seq, msg in single.items():
        assert batched[seq]["data"] == msg["data"] and batched[seq]["seq"] == seq
        assert {k: v for k, v in batched[seq]["headers"].items() if not k.startswith("Nats-")} == \
            {k: v for k, v in msg["headers"].items() if not k.startswith("Nats-")}


async def test_a_bulk_replay_with_batched_reads_is_exactly_once(fresh_nc, fresh_server, users,
                                                                monkeypatch):
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    monkeypatch.setattr(replay, "BATCH", 40)  # several batches, overlapping their DB work
    await explicit_letters(fresh_nc, 130)
    reads = []
    original = js.direct_get_batch

    async def counted(*a, **kw):
        reads.append(a[2:4])
        return await original(*a, **kw)

    monkeypatch.setattr(js, "direct_get_batch", counted)
    await bulk_replay_twice(fresh_nc, users, 130)
    assert len(reads) == 8  # 4 batches of up to 40, twice: one request each


async def test_topology_apply_turns_on_direct_reads_of_a_live_dead_letter_stream(fresh_nc):
    await js.add_stream(fresh_nc, {"name": dl.STREAM, "subjects": ["lucent.deadletter.>"],
                                   "storage": "file", "duplicate_window": 60 * SECOND})
    assert not (await js.stream_info(fresh_nc, dl.STREAM))["config"].get("allow_direct")
    changes = {c.stream: c for c in await topology.apply(fresh_nc)}
    assert changes[dl.STREAM].action == "updated" and "allow_direct" in changes[dl.STREAM].detail
    assert (await js.stream_info(fresh_nc, dl.STREAM))["config"]["allow_direct"] is True


async def test_a_bulk_replay_on_nats_server_2_9_reads_one_by_one_exactly_once(tmp_path, users,
                                                                              monkeypatch):
    """Debian's nats-server 2.9 (no batched DIRECT.GET): the per-message path."""
    import os
    from pathlib import Path

    from lucent_bus import embedded

    from .conftest import bus

    old = os.getenv("LUCENT_NATS_29", "/usr/sbin/nats-server")
    if not Path(old).exists():
        pytest.skip(f"{old} not installed (Debian's nats-server package)")
    port = embedded.free_port()
    args = [old] + embedded.server_args(port, tmp_path / "js")[1:]
    server = embedded.Server(port, tmp_path / "js", args, tmp_path / "nats.log").start().wait()
    monkeypatch.setenv("NATS_URL", server.url)
    nc = await bus(server.url)
    try:
        assert js.server_version(nc) < (2, 11, 0) and not js.supports_batch_get(nc)
        monkeypatch.setattr(replay, "BATCH", 25)
        await explicit_letters(nc, 60)

        async def refuse(*a, **kw):
            raise AssertionError("a batched DIRECT.GET sent to nats-server 2.9")

        monkeypatch.setattr(js, "direct_get_batch", refuse)
        await bulk_replay_twice(nc, users, 60)
    finally:
        await nc.close()
        server.stop()
