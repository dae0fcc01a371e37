"""The collector's snapshot against real nats-servers."""

import asyncio
import json
import time
import urllib.request

from lucent_bus import embedded, live
from lucent_bus import jetstream as js
from lucent_bus.client import connect
from lucent_bus.config import BusConfig
from lucent_console.collector import Collector
from streams import snapshot as snap


async def _pull(nc, stream, durable, n, ack=0):
    sub = await nc.jetstream().pull_subscribe_bind(durable, stream)
    msgs = await sub.fetch(n, timeout=2)
    for m in msgs[:ack]:
        await m.ack()
    return msgs


async def test_consumer_figures_equal_the_servers_own_monitoring(tmp_path):
    port, http = embedded.free_port(), embedded.free_port()
    server = embedded.Server(port, tmp_path / "js", embedded.server_args(
        port, tmp_path / "js", extra=["-m", str(http)]), tmp_path / "n.log").start().wait()
    try:
        nc = await connect("t", BusConfig.from_env({"NATS_URL": server.url}), retry_initial=False)
        await js.add_stream(nc, {"name": "ORDERS", "subjects": ["orders.>"], "storage": "file"})
        for durable, flt in (("all", "orders.>"), ("eu", "orders.eu.*")):
            await js.add_consumer(nc, "ORDERS", {"durable_name": durable, "filter_subject": flt,
                                                 "ack_policy": "explicit", "max_deliver": 5,
                                                 "ack_wait": 30 * 10**9})
        jsn = nc.jetstream()
        for i in range(60):
            await jsn.publish(f"orders.{'eu' if i % 3 else 'us'}.{i}", b"x")
        await _pull(nc, "ORDERS", "all", 25, ack=10)
        await _pull(nc, "ORDERS", "eu", 7, ack=7)
        await asyncio.sleep(0.2)  # acks processed; nothing moves from here on

        streams, consumers = await snap.sweep(nc)
        ours = snap.Tracker().build(streams, consumers, js.server_summary(nc))
        with urllib.request.urlopen(
                f"http://127.0.0.1:{http}/jsz?accounts=true&streams=true&consumers=true") as r:
            jsz = json.loads(r.read())
        details = jsz["account_details"][0]["stream_detail"]
        theirs = {c["name"]: c for s in details for c in s["consumer_detail"]}
        stream = next(s for s in details if s["name"] == "ORDERS")
        assert ours["streams"]["ORDERS"]["messages"] == stream["state"]["messages"] == 60
        assert ours["streams"]["ORDERS"]["last_seq"] == stream["state"]["last_seq"]
        for name in ("all", "eu"):
            mine, server_side = ours["consumers"][f"ORDERS/{name}"], theirs[name]
            for key in ("num_pending", "num_ack_pending", "num_redelivered", "num_waiting"):
                assert mine[key] == server_side[key], (name, key)
            assert mine["delivered_stream_seq"] == server_side["delivered"]["stream_seq"]
            assert mine["ack_floor_stream_seq"] == server_side["ack_floor"]["stream_seq"]
        assert ours["consumers"]["ORDERS/all"]["num_ack_pending"] == 15
        assert ours["consumers"]["ORDERS/eu"]["num_ack_pending"] == 0
        assert ours["streams"]["ORDERS"]["num_subjects"] == 60  # a field nats-py's dataclass drops
        assert ours["streams"]["ORDERS"]["first_ts"]
        await nc.close()
    finally:
        server.stop()


async def test_rates_follow_a_known_publish_rate(fresh_nc):
    await js.add_stream(fresh_nc, {"name": "RATE", "subjects": ["rate.>"], "storage": "memory"})
    tracker = snap.Tracker()
    jsn = fresh_nc.jetstream()
    target, seconds = 40, 4.0
    started = time.monotonic()
    sent = 0
    built = None
    while time.monotonic() - started < seconds:
        due = int((time.monotonic() - started) * target)
        while sent < due:
            await jsn.publish("rate.x", b"1")
            sent += 1
        streams, consumers = await snap.sweep(fresh_nc)
        built = tracker.build(streams, consumers, {})
        await asyncio.sleep(0.05)
    rate = built["streams"]["RATE"]["msgs_in_per_s"]
    assert 0.8 * target <= rate <= 1.2 * target, rate


async def test_time_to_drain_and_stall_flags(fresh_nc):
    await js.add_stream(fresh_nc, {"name": "Q", "subjects": ["q.>"], "storage": "memory"})
    await js.add_consumer(fresh_nc, "Q", {"durable_name": "w", "ack_policy": "explicit"})
    for _ in range(10):
        await fresh_nc.jetstream().publish("q.x", b"1")
    tracker = snap.Tracker()
    streams, consumers = await snap.sweep(fresh_nc)
    first = tracker.build(streams, consumers, {}, now=1000.0)
    assert first["consumers"]["Q/w"]["drain_s"] is None  # pending, nothing acked yet
    later = tracker.build(streams, consumers, {}, now=1000.0 + snap.STALL_AFTER_S + 1)
    assert later["consumers"]["Q/w"]["stalled"] is True
    await _pull(fresh_nc, "Q", "w", 4, ack=4)
    streams, consumers = await snap.sweep(fresh_nc)
    moving = tracker.build(streams, consumers, {}, now=1000.0 + snap.STALL_AFTER_S + 2)
    c = moving["consumers"]["Q/w"]
    assert c["stalled"] is False and c["num_pending"] == 6
    assert c["acked_per_s"] > 0 and c["drain_s"] == round(6 / c["acked_per_s"], 1)


def test_deltas_carry_only_changes_and_detect_gaps():
    t = snap.Tracker()
    a = t.build([{"config": {"name": "A"}, "state": {"messages": 1, "last_seq": 1}},
                 {"config": {"name": "B"}, "state": {"messages": 1, "last_seq": 1}}], {}, {}, now=1)
    b = t.build([{"config": {"name": "A"}, "state": {"messages": 2, "last_seq": 2}},
                 {"config": {"name": "C"}, "state": {}}], {}, {}, now=2)
    delta = snap.diff(a, b)
    assert set(delta["streams"]) == {"A", "C"}
    assert delta["removed_streams"] == ["B"] and delta["added_streams"] == ["C"]
    assert snap.apply_delta(a, delta) == b
    assert snap.apply_delta(None, delta) is None  # a gap: the web side refetches
    assert snap.apply_delta(a, snap.diff(None, b)) == b  # a full delta needs no base
    assert snap.changed_keys(delta)["membership"] is True


async def test_a_snapshot_larger_than_max_payload_travels_in_parts(fresh_nc):
    import os

    big = {"seq": 7, "streams": {f"S{i}": {"blob": os.urandom(800).hex()} for i in range(1500)},
           "consumers": {}}
    sub = await live.serve_full(fresh_nc, lambda: big)
    got = await live.fetch_full(fresh_nc)
    assert got == big
    assert len(live.encode(big)) > fresh_nc.max_payload  # it did need several parts
    await sub.unsubscribe()


async def test_fetch_says_at_once_when_no_collector_runs(fresh_nc):
    started = time.monotonic()
    try:
        await live.fetch_full(fresh_nc, timeout=5)
    except live.NoSnapshot as exc:
        assert "no collector" in str(exc)
    assert time.monotonic() - started < 2


async def test_the_collector_keeps_last_data_marked_stale_when_the_bus_goes(tmp_path):
    port = embedded.free_port()
    server = embedded.single(tmp_path / "js", port).start().wait()
    nc = await connect("t", BusConfig.from_env({"NATS_URL": server.url}), retry_initial=False)
    await js.add_stream(nc, {"name": "KEEP", "subjects": ["keep.>"], "storage": "file"})
    c = Collector(nc, 0.2)
    good = await c.sweep_once()
    assert good["ok"] and "KEEP" in good["streams"]
    server.stop()
    await asyncio.sleep(0.3)
    bad = await c.sweep_once()
    assert bad["ok"] is False and "unreachable" in bad["error"]
    assert "KEEP" in bad["streams"] and bad["at"] == good["at"]
    server = embedded.single(tmp_path / "js", port).start().wait()
    try:
        for _ in range(60):
            again = await c.sweep_once()
            if again["ok"]:
                break
            await asyncio.sleep(0.25)
        assert again["ok"] and again["seq"] > good["seq"] and "KEEP" in again["streams"]
    finally:
        await nc.close()
        server.stop()


def test_an_idle_bus_sends_empty_deltas():
    t = snap.Tracker()
    streams = [{"config": {"name": "A"}, "state": {"messages": 5, "last_seq": 5}}]
    consumers = {"A": [{"name": "c", "config": {"durable_name": "c"}, "num_pending": 2,
                        "delivered": {"consumer_seq": 3, "stream_seq": 3},
                        "ack_floor": {"consumer_seq": 3, "stream_seq": 3}}]}
    builds = [t.build(streams, consumers, {}, now=100.0 + i) for i in range(4)]
    delta = snap.diff(builds[2], builds[3])
    assert delta["streams"] == {} and delta["consumers"] == {}
