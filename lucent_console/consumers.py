"""The live websocket: sends the page's fragments as htmx out-of-band swaps.

A socket says what its page shows in its query string (``panel=streams&q=..``).
On (re)connect it gets the whole panel; then, on every snapshot the relay
applies, only the fragments whose data changed. Fragments are the templates
the pages render, rendered once per snapshot for all sockets that show them.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.template.loader import render_to_string
from django.utils.html import format_html

from agents.views import agent_panel, agents_panel, hierarchy_panel, panel, recent_events
from alerts import actions as alert_actions
from deadletters.views import listing
from kernel.roles import has_role
from streams import operations
from streams.live import relay


def _fragment(template: str, **context) -> str:
    return render_to_string(template, {**context, "oob": True}).strip()


def frames(parts: list[str]) -> list[str]:
    """Group fragments into websocket frames that parse the same way.

    htmx parses a frame in a <template>, whose first tag fixes the parsing
    mode: table rows mixed with divs would be dropped. So rows go together in
    one frame, each <tbody> in its own, everything else in the first.
    """
    other = [p for p in parts if p and not p.startswith(("<tr", "<tbody"))]
    rows = [p for p in parts if p.startswith("<tr")]
    bodies = [p for p in parts if p.startswith("<tbody")]
    return [f for f in ["".join(other), *bodies, "".join(rows)] if f]


def chart_point(at: float, **values) -> str:
    """The hidden element whose out-of-band swap extends a page's charts (charts.js)."""
    return format_html('<div id="chart-point" hidden hx-swap-oob="true" data-t="{}" data-values="{}">'
                       '</div>', datetime.fromtimestamp(at, UTC).isoformat(), json.dumps(values))


class LiveConsumer(AsyncWebsocketConsumer):
    open = 0  # sockets open in this process (/metrics)

    async def connect(self):
        # Before accept: the handshake is refused (403). A user in no group sees no page,
        # so no live data either.
        if not await database_sync_to_async(has_role)(self.scope["user"], "viewer"):
            await self.close()
            return
        query = parse_qs(self.scope.get("query_string", b"").decode())
        self.params = {k: v[0] for k, v in query.items()}
        self.panel = self.params.get("panel", "status")
        self.sent_names: list[str] | None = None
        try:
            await relay.ensure_started()
        except Exception:
            pass  # bus away: the status fragment says so; the relay starts later
        await self.channel_layer.group_add(relay.group, self.channel_name)
        self.watched = (self.panel in ("stream", "consumer")
                        and relay.watch(self.params.get("name", "")))
        await self.accept()
        LiveConsumer.open += 1
        self.counted = True
        await self.send_panel(None)
        if self.panel == "deadletters":  # letters indexed between the page and its socket
            await self.deadletters_added({})  # (or while it reconnected) arrive now
        if self.panel in ("alerts", "overview"):
            self.can_act = await database_sync_to_async(has_role)(self.scope["user"], "operator")
            await self.alerts_changed({})

    async def disconnect(self, code):
        if getattr(self, "counted", False):
            LiveConsumer.open -= 1
            self.counted = False
        if getattr(self, "watched", False):
            relay.unwatch(self.params.get("name", ""))
            self.watched = False
        await self.channel_layer.group_discard(relay.group, self.channel_name)

    async def snapshot_updated(self, event):
        await self.send_panel(event["changed"])

    async def deadletters_added(self, event):
        """New dead letters were indexed: the list page gets its first page again."""
        if self.panel == "deadletters":
            for frame in frames(await database_sync_to_async(self._deadletter_rows)()):
                await self.send(text_data=frame)

    def _deadletter_rows(self) -> list[str]:
        data = listing(self.params)
        return [_fragment("fragments/dl_rows.html", **data), format_html(
            '<small id="dl-count" class="muted" hx-swap-oob="true">{}</small>', data["total"])]

    async def send_panel(self, changed: dict | None) -> None:
        full = changed is None or changed.get("full")
        snapshot = relay.snapshot
        status = relay.status()
        parts = []
        if not (changed or {}).get("event"):  # events between sweeps leave the status as it is
            parts.append(relay.render_once(("status", repr(sorted(status.items()))), lambda: _fragment(
                "fragments/live_status.html", live=status)))
        if snapshot is not None:
            handler = getattr(self, f"panel_{self.panel}", None)
            if handler is not None:
                parts += handler(snapshot, changed or {}, full)
        for frame in frames(parts):
            await self.send(text_data=frame)

    def panel_services(self, snapshot, changed, full):
        if not (full or changed.get("services")):
            return []

        return [relay.render_once(("services",), lambda: _fragment(
            "fragments/services_table.html", **panel(snapshot)))]

    def panel_hierarchy(self, snapshot, changed, full):
        if not (full or changed.get("hierarchy")):
            return []

        return [relay.render_once(("hierarchy",), lambda: _fragment(
            "fragments/hierarchy_tree.html", **hierarchy_panel(snapshot)))]

    async def services_event(self, event):
        if self.panel == "services":
            await self.send(text_data=await database_sync_to_async(self._service_events)())

    def _service_events(self) -> str:
        return _fragment("fragments/service_events.html", events=recent_events())

    def panel_agents(self, snapshot, changed, full):
        out = []
        if full or changed.get("agents"):
            out.append(relay.render_once(("agents",), lambda: _fragment(
                "fragments/agents_table.html", **agents_panel(snapshot))))
        if full or changed.get("agent_feed"):
            out.append(relay.render_once(("agent-feed", ""), lambda: _fragment(
                "fragments/agent_feed.html", feed=agents_panel(snapshot, feed=True)["feed"])))
        return out

    def panel_agent(self, snapshot, changed, full):
        name = self.params.get("name", "")
        out = []
        if full or changed.get("agents"):
            data = agent_panel(snapshot, name)
            out.append(relay.render_once(("agent", name), lambda: _fragment(
                "fragments/agent_state.html", **data)))
            if not full and not changed.get("event") and data["agent"]:
                a = data["agent"]
                out.append(relay.render_once(("agent-point", name), lambda: chart_point(
                    snapshot["at"], rate=data["acked_per_s"], ack_pending=a["in_flight"],
                    pending=a["waiting"])))
        if full or changed.get("agent_feed"):
            out.append(relay.render_once(("agent-feed", name), lambda: _fragment(
                "fragments/agent_feed.html", feed=agent_panel(snapshot, name)["feed"])))
        return out

    async def alerts_changed(self, event):
        """Alerts fired or resolved: the alert lists are read again (from the database)."""
        if self.panel in ("alerts", "overview"):
            await self.send(text_data=await database_sync_to_async(self._alerts)())

    def _alerts(self) -> str:
        """Rendered once for all the sockets that show the same list: per alert transition
        (the relay counts them) and at most every 2 s (acknowledge/silence change it too)."""
        key = (relay.alerts_version, int(time.monotonic() / 2), self.panel, self.can_act)
        if key not in relay.alerts_cache:
            if self.panel == "overview":
                html = _fragment("fragments/overview_alerts.html", **alert_actions.panel(history=0))
            else:
                html = _fragment("fragments/alerts_panel.html", **alert_actions.panel(),
                                 can_act=self.can_act)
            relay.alerts_cache = {k: v for k, v in relay.alerts_cache.items() if k[:2] == key[:2]}
            relay.alerts_cache[key] = html
        return relay.alerts_cache[key]

    def panel_overview(self, snapshot, changed, full):
        if changed.get("event") and not full:
            return []
        return [relay.render_once(("overview",), lambda: _fragment(
            "fragments/overview_panel.html", ov=operations.overview(snapshot),
            findings=operations.lint_findings(snapshot)))]

    def panel_streams(self, snapshot, changed, full):
        try:
            page = int(self.params.get("page", 1))
        except ValueError:
            page = 1
        args = (self.params.get("q", ""), self.params.get("sort", "name"),
                self.params.get("desc") in ("1", "True"), page)
        listing = relay.render_once(("listing",) + args, lambda: operations.stream_page(
            snapshot, *args))
        if full or listing["names"] != self.sent_names:
            self.sent_names = listing["names"]
            return [relay.render_once(("streams-body",) + args, lambda: _fragment(
                "fragments/streams_body.html", listing=listing, spark=relay.history)),
                format_html('<span id="streams-count" class="muted" hx-swap-oob="true">{}</span>',
                            listing["total"])]
        wanted = set(changed.get("streams", [])) & set(listing["names"])
        rows = [s for s in listing["rows"] if s["name"] in wanted]
        return [relay.render_once(("stream-row", s["name"]), lambda s=s: _fragment(
            "fragments/stream_row.html", s=s, spark=relay.history)) for s in rows]

    def panel_consumer(self, snapshot, changed, full):
        """One consumer's page: its figures and pause, from the watched stream's rows."""
        key = f"{self.params.get('name', '')}/{self.params.get('consumer', '')}"
        consumer = snapshot["consumers"].get(key)
        if consumer is None or not (full or key in changed.get("consumers", [])):
            return []
        stream = snapshot["streams"].get(consumer["stream"]) or {}
        return [relay.render_once(("consumer-live", key), lambda: _fragment(
            "fragments/consumer_live.html", c=consumer, last_seq=stream.get("last_seq", 0)))]

    def panel_stream(self, snapshot, changed, full):
        name = self.params.get("name", "")
        stream = snapshot["streams"].get(name)
        if stream is None:
            return []
        out = []
        if full or name in changed.get("streams", []):
            out.append(relay.render_once(("stream-state", name), lambda: _fragment(
                "fragments/stream_state.html", s=stream)))
            if not full and snapshot.get("ok") and not changed.get("event"):
                out.append(relay.render_once(("chart-point", name), lambda: chart_point(
                    snapshot["at"], rate=stream["msgs_in_per_s"], pending=stream["pending"],
                    ack_pending=stream["ack_pending"])))
        prefix = f"{name}/"
        touched = [k for k in changed.get("consumers", []) if k.startswith(prefix)]
        if full or (changed.get("membership") and touched):
            out.append(relay.render_once(("consumers-body", name), lambda: _fragment(
                "fragments/consumers_body.html", consumers=operations.consumers_of(snapshot, name))))
        else:
            for key in touched:
                consumer = snapshot["consumers"].get(key)
                if consumer is not None:
                    out.append(relay.render_once(("consumer-row", key), lambda c=consumer: _fragment(
                        "fragments/consumer_row.html", c=c)))
        return out
