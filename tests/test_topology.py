"""Topology apply/diff/lint against real nats-servers."""

import json

import pytest

from lucent_bus import embedded
from lucent_bus import jetstream as js
from lucent_bus.client import connect
from lucent_bus.config import BusConfig
from streams import topology


async def test_it_applies_idempotently(fresh_nc):
    first = await topology.apply(fresh_nc)
    assert [c.action for c in first] == ["created"] * len(topology.DECLARED)
    second = await topology.apply(fresh_nc)
    assert [c.action for c in second] == ["unchanged"] * len(topology.DECLARED)
    assert all(d.state == "ok" for d in await topology.diff(fresh_nc))

    commands = (await js.stream_info(fresh_nc, "COMMANDS"))["config"]
    assert commands["subjects"] == ["lucent.commands.>"]
    assert commands["no_ack"] is True
    events = await js.list_consumers(fresh_nc, "DOMAIN_EVENTS")
    assert {c["name"] for c in events} == {"eventstore-bridge", "balance-processor"}
    # One server: replicas reduced, with a warning saying so.
    dl = next(c for c in first if c.stream == "DEAD_LETTERS")
    assert "replicas reduced from 3 to 1" in dl.warnings[0]


async def test_the_consoles_own_lease_bucket_is_named_as_such_not_undeclared(fresh_nc):
    from lucent_bus import lease

    await topology.apply(fresh_nc)
    await lease.ensure_bucket(fresh_nc, 5.0)
    await js.add_stream(fresh_nc, {"name": "STRAY", "subjects": ["stray.>"]})
    states = {d.stream: d.state for d in await topology.diff(fresh_nc)}
    assert states["KV_LUCENT_LEADER"] == "console" and states["STRAY"] == "undeclared"


async def test_it_reports_and_repairs_drift(fresh_nc):
    await topology.apply(fresh_nc)
    live = (await js.stream_info(fresh_nc, "COMMANDS"))["config"]
    await js.update_stream(fresh_nc, {**live, "max_age": 5 * topology.MINUTE})
    drift = {d.stream: d for d in await topology.diff(fresh_nc)}
    assert drift["COMMANDS"].state == "drift"
    assert drift["COMMANDS"].fields == [("max_age", 5 * topology.MINUTE, topology.HOUR)]
    changes = {c.stream: c for c in await topology.apply(fresh_nc)}
    assert changes["COMMANDS"].action == "updated"
    assert (await js.stream_info(fresh_nc, "COMMANDS"))["config"]["max_age"] == topology.HOUR


async def test_it_refuses_to_change_retention_silently(fresh_nc):
    await js.add_stream(fresh_nc, {"name": "DOMAIN_EVENTS", "subjects": ["lucent.events.domain.>"],
                                   "retention": "limits", "storage": "file"})
    changes = {c.stream: c for c in await topology.apply(fresh_nc)}
    assert changes["DOMAIN_EVENTS"].action == "failed"
    assert "retention" in changes["DOMAIN_EVENTS"].detail
    assert (await js.stream_info(fresh_nc, "DOMAIN_EVENTS"))["config"]["retention"] == "limits"
    assert changes["COMMANDS"].action == "created"  # one failure does not stop the rest


async def test_lint_finds_each_trap_of_the_adr_as_written(fresh_nc):
    await topology.apply(fresh_nc, topology.ADR_LITERAL)
    findings = await topology.lint(fresh_nc)
    by_code = {}
    for f in findings:
        by_code.setdefault(f.code, set()).add(f.stream)
    assert by_code["single-token-wildcard"] == {
        "DOMAIN_EVENTS", "COMMANDS", "AGENT_COORDINATION", "HIERARCHY"}
    assert by_code["interest-without-consumers"] == {"DOMAIN_EVENTS"}
    assert by_code["request-reply-acked"] == {"COMMANDS"}
    assert by_code["adr-replicas"] == {"DOMAIN_EVENTS", "HIERARCHY"}
    star = next(f for f in findings if f.code == "single-token-wildcard" and f.stream == "COMMANDS")
    assert "lucent.commands.trading.execute" in star.message
    assert star.fix == "use 'lucent.commands.>'"

    # What the trap means on the wire: the 3-token subject is not stored at all.
    await fresh_nc.publish("lucent.commands.trading.execute", b"{}")
    await fresh_nc.flush()
    assert (await js.stream_info(fresh_nc, "COMMANDS"))["state"]["messages"] == 0


async def test_lint_is_quiet_about_errors_on_the_declared_topology(fresh_nc):
    await topology.apply(fresh_nc)
    findings = await topology.lint(fresh_nc)
    assert [f for f in findings if f.severity == "error"] == []


def test_lint_finds_overlapping_work_queue_consumers():
    stream = {"config": {"name": "JOBS", "subjects": ["jobs.>"], "retention": "workqueue",
                         "num_replicas": 1}, "state": {"consumer_count": 3}}
    consumers = {"JOBS": [
        {"name": "a", "config": {"filter_subject": "jobs.eu.>"}},
        {"name": "b", "config": {"filter_subjects": ["jobs.*.urgent"]}},
        {"name": "c", "config": {"filter_subject": "jobs.us.normal"}},
    ]}
    findings = topology.lint_streams([stream], consumers, cluster_size=1)
    overlaps = [f.message for f in findings if f.code == "workqueue-overlap"]
    assert len(overlaps) == 1 and "'a' and 'b'" in overlaps[0]


def test_lint_finds_replicas_above_cluster_size_and_offline_replicas():
    stream = {"config": {"name": "S", "subjects": ["s.>"], "num_replicas": 3},
              "state": {"consumer_count": 0},
              "cluster": {"leader": "n0", "replicas": [{"name": "n1", "current": True},
                                                       {"name": "n2", "offline": True}]}}
    codes = [f.code for f in topology.lint_streams([stream], {}, cluster_size=2)]
    assert codes == ["replicas-above-cluster", "replica-unhealthy"]


@pytest.mark.cluster
async def test_replicas_adapt_to_a_three_node_cluster(tmp_path):
    cluster = embedded.cluster(tmp_path, 3).start()
    try:
        nc = await connect("test", BusConfig.from_env({"NATS_URL": cluster.url}),
                           retry_initial=False)
        try:
            changes = await _apply_when_cluster_ready(nc)
            assert js.cluster_size(nc) == 3
            assert all(c.action == "created" and not c.warnings for c in changes), changes
            info = await js.stream_info(nc, "DOMAIN_EVENTS")
            assert info["config"]["num_replicas"] == 3
            assert len(info["cluster"]["replicas"]) == 2
            assert (await js.stream_info(nc, "COMMANDS"))["config"]["num_replicas"] == 1
            findings = await topology.lint(nc)
            assert not [f for f in findings if f.code in ("adr-replicas", "replicas-above-cluster")]
        finally:
            await nc.close()
    finally:
        cluster.stop()


async def _apply_when_cluster_ready(nc, attempts: int = 40):
    """A new cluster elects its JetStream meta leader a moment after it listens."""
    import asyncio

    for _ in range(attempts):
        try:
            await js.account_info(nc)
            if js.cluster_size(nc) == 3:
                break
        except js.JetStreamError:
            pass
        await asyncio.sleep(0.25)
    changes = await topology.apply(nc)
    json.dumps([c.__dict__ for c in changes])
    return changes
