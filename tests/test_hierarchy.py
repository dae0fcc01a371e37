"""The hierarchy tree: rates per node/cluster/site/global, propagation, silent levels."""

import pytest

from agents.hierarchy import Hierarchy
from lucent_bus import envelope

from .conftest import bus, run


def _event(subject: str, message_id: str, causation: str | None = None) -> bytes:
    return envelope.encode(envelope.make("NodeEvent", subject, {}, message_id=message_id,
                                         causation_id=causation))


def test_rates_propagation_and_silent_levels():
    h = Hierarchy()
    h.event("lucent.hierarchy.node.edge-1", _event("lucent.hierarchy.node.edge-1", "n1"), now=100)
    h.event("lucent.hierarchy.node.edge-1", _event("lucent.hierarchy.node.edge-1", "n2"), now=101)
    h.event("lucent.hierarchy.node.edge-2", _event("lucent.hierarchy.node.edge-2", "n3"), now=101)
    h.event("lucent.hierarchy.cluster.c1", _event("lucent.hierarchy.cluster.c1", "c1", "n2"), now=102)
    records = h.records(now=103)
    assert records["node:edge-1"]["per_min"] == 2 and records["node:edge-1"]["propagates"] is True
    assert records["node:edge-2"]["propagates"] is False  # nothing above cites it
    assert records["cluster:c1"]["propagates"] is False
    assert h.silent_levels(records) == ["site", "global"]
    assert h.records(now=200)["node:edge-1"]["per_min"] == 0
    assert h.event("lucent.hierarchy.bogus.x", b"junk", now=1) is None


@pytest.mark.django_db
def test_the_page_shows_the_tree_live_from_the_bus(client, users, collector):
    client.force_login(users["viewer"])

    async def publish():
        nc = await bus(collector.url)
        await nc.publish("lucent.hierarchy.node.<i>n9</i>", _event("x", "m-1"))
        await nc.publish("lucent.hierarchy.site.s1", _event("x", "m-2", "m-1"))
        await nc.flush()
        await nc.close()

    run(publish())
    collector.wait_for(lambda s: "site:s1" in (s.get("hierarchy") or {}))
    page = client.get("/agents/hierarchy/").content.decode()
    assert "&lt;i&gt;n9&lt;/i&gt;" in page and "<i>n9</i>" not in page
    assert "propagates up" in page and "Silent for the last minute: cluster, global" in page
