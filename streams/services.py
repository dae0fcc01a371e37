"""The stream service layer: what web, API, CLI and tasks call."""

from __future__ import annotations

from lucent_console.bus import jetstream as js
from lucent_console.bus.client import web_client

from . import topology


async def bus_summary() -> dict:
    """Streams with their main figures, and the topology findings, from the live bus."""
    nc = await web_client.get()
    streams = await js.list_streams(nc)
    consumers = {s["config"]["name"]: await js.list_consumers(nc, s["config"]["name"])
                 for s in streams}
    rows = []
    for info in sorted(streams, key=lambda s: s["config"]["name"]):
        config, state = info["config"], info.get("state", {})
        rows.append({
            "name": config["name"],
            "subjects": config.get("subjects") or [],
            "retention": config.get("retention"),
            "storage": config.get("storage"),
            "replicas": config.get("num_replicas", 1),
            "messages": state.get("messages", 0),
            "bytes": state.get("bytes", 0),
            "consumer_count": state.get("consumer_count", 0),
            "pending": sum(c.get("num_pending", 0) for c in consumers[config["name"]]),
            "ack_pending": sum(c.get("num_ack_pending", 0) for c in consumers[config["name"]]),
        })
    findings = topology.lint_streams(streams, consumers, js.cluster_size(nc), topology.ADR_LITERAL)
    return {"streams": rows, "findings": findings}
