"""Servers and connections (issue 15 item 4): a real nats-server with a monitoring port
and a system account; the pages and the API list it and a named connection of the
test's own; filtering, sorting, paging; what the pages say unconfigured or with a dead
monitoring port; the collector's sampler; the new alert rules on snapshot dicts."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import pytest
from nats.aio.client import __version__ as NATS_PY_VERSION

from lucent_bus import embedded, monitor
from servers import overview

CONFIG = """
accounts {
  SYS: { users: [ {user: sys, password: sys-pw} ] }
  APP: { jetstream: enabled, users: [ {user: app, password: app-pw} ] }
}
system_account: SYS
no_auth_user: app
"""
CLIENT = "lucent-test-client"


@pytest.fixture(scope="module")
def monitored(tmp_path_factory):
    """A nats-server with accounts (SYS, APP), a monitoring port, and one named client
    with three subscriptions (held in a thread of its own for the module)."""
    base = Path(tmp_path_factory.mktemp("monitored"))
    (base / "server.conf").write_text(CONFIG)
    port, mport = embedded.free_port(), embedded.free_port()
    args = embedded.server_args(port, base / "js", name="mon-1", monitor_port=mport,
                                extra=["-c", str(base / "server.conf")])
    server = embedded.Server(port, base / "js", args, base / "nats.log").start().wait()
    embedded.wait_listening(mport)
    loop, ready, holder = asyncio.new_event_loop(), threading.Event(), {}

    async def client():
        nc = await nats.connect(server.url, name=CLIENT)
        for subject in ("a.>", "b.>", "c.>"):
            await nc.subscribe(subject)
        await nc.flush()
        holder["nc"] = nc
        ready.set()
        holder["stop"] = asyncio.Event()
        await holder["stop"].wait()
        await nc.close()

    thread = threading.Thread(target=loop.run_until_complete, args=(client(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield {"server": server, "url": server.url, "http": f"http://127.0.0.1:{mport}"}
    loop.call_soon_threadsafe(holder["stop"].set)
    thread.join(5)
    server.stop()


def _env(monkeypatch, **values):
    for name in ("LUCENT_NATS_MONITOR_URLS", "NATS_SYSTEM_CREDS", "NATS_SYSTEM_USER",
                 "NATS_SYSTEM_PASSWORD", "LUCENT_MONITOR_TIMEOUT_S"):
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def viewer_client(client, db):
    """A viewer, logged in without a password hash (the conftest's four users cost seconds
    of hashing per test on a loaded machine)."""
    from django.contrib.auth.models import Group, User

    user = User.objects.create(username="servers-viewer")
    user.groups.add(Group.objects.get_or_create(name="viewer")[0])
    client.force_login(user)
    return client


@pytest.fixture
def via_http(monitored, monkeypatch, nats_server):
    _env(monkeypatch, LUCENT_NATS_MONITOR_URLS=monitored["http"])
    return monitored


@pytest.fixture
def via_system(monitored, monkeypatch, nats_server):
    _env(monkeypatch, NATS_SYSTEM_USER="sys", NATS_SYSTEM_PASSWORD="sys-pw")
    monkeypatch.setenv("NATS_URL", monitored["url"])  # no_auth_user: the console's own is APP
    return monitored


def test_sources_from_the_environment():
    assert monitor.source_from_env({}) is None
    src = monitor.source_from_env({"LUCENT_NATS_MONITOR_URLS": "http://a:8222/, http://b:8222"})
    assert src.kind == "http" and src.urls == ("http://a:8222", "http://b:8222")
    with pytest.raises(monitor.MonitorError, match="LUCENT_NATS_MONITOR_URLS"):
        monitor.source_from_env({"LUCENT_NATS_MONITOR_URLS": "nats://a:4222"})
    with pytest.raises(monitor.MonitorError, match="go together"):
        monitor.source_from_env({"NATS_URL": "nats://x:4222", "NATS_SYSTEM_USER": "sys"})
    src = monitor.source_from_env({"NATS_URL": "nats://x:4222", "NATS_SYSTEM_USER": "sys",
                                   "NATS_SYSTEM_PASSWORD": "secret"})
    assert src.kind == "system" and "secret" not in repr(src) and "secret" not in src.describe()


def test_an_unnamed_server_is_shown_by_its_address():
    unnamed = {"server_id": "N" * 56, "server_name": "N" * 56, "host": "127.0.0.1", "port": 4322}
    assert overview.display_name(unnamed, "http://x:8222") == "127.0.0.1:4322"
    assert overview.display_name({**unnamed, "server_name": "n1"}, "http://x:8222") == "n1"
    assert overview.display_name({}, "http://x:8222") == "http://x:8222"


def _ours(rows):
    return [r for r in rows if r["name"] == CLIENT]


@pytest.mark.parametrize("source", ["via_http", "via_system"])
def test_api_lists_the_server_and_the_named_connection(source, request, viewer_client):
    request.getfixturevalue(source)
    servers = viewer_client.get("/api/v1/servers/").json()
    assert [s["name"] for s in servers] == ["mon-1"]
    s = servers[0]
    assert s["version"] and s["connections"] >= 1 and s["mem"] > 0 and s["uptime"]
    assert {"slow_consumers", "cpu", "jetstream", "in_msgs_per_s", "health"} <= set(s)
    assert s["jetstream"]["max_storage"] > 0 and s["health"] == "ok"
    page = viewer_client.get("/api/v1/connections/", {"q": "lucent-test"}).json()
    assert page["count"] == 1, page
    c = page["results"][0]
    assert (c["name"], c["lang"], c["version"], c["subscriptions"]) == (
        CLIENT, "python3", NATS_PY_VERSION, 3)
    assert c["account"] == "APP" and c["ip"] == "127.0.0.1" and c["cid"] > 0
    assert {"pending_bytes", "in_msgs", "out_msgs", "rtt_ms", "slow"} <= set(c)
    if source == "via_system":  # six endpoints gathered at once share one connection
        own = viewer_client.get("/api/v1/connections/", {"q": "lucent-console-monitor"}).json()
        assert own["count"] == 1 and own["results"][0]["account"] == "SYS", own


def test_sorting_filtering_paging(via_http, viewer_client):
    async def more():  # two more connections: one with no subscriptions, one with five
        a = await nats.connect(via_http["url"], name="zz-idle")
        b = await nats.connect(via_http["url"], name="aa-busy")
        for i in range(5):
            await b.subscribe(f"busy.{i}")
        await b.flush()
        return a, b

    loop = asyncio.new_event_loop()
    a, b = loop.run_until_complete(more())
    try:
        api = "/api/v1/connections/"
        by_subs = viewer_client.get(api, {"sort": "subscriptions"}).json()["results"]
        assert [r["subscriptions"] for r in by_subs] == sorted(
            (r["subscriptions"] for r in by_subs), reverse=True)
        assert by_subs[0]["name"] == "aa-busy"
        up = viewer_client.get(api, {"sort": "subscriptions", "desc": "false"}).json()["results"]
        assert [r["subscriptions"] for r in up] == sorted(r["subscriptions"] for r in up)
        names = [r["name"] for r in viewer_client.get(api, {"sort": "name"}).json()["results"]]
        assert names == sorted(names, key=str.lower) and "aa-busy" in names
        cids = [r["cid"] for r in viewer_client.get(api).json()["results"]]
        assert cids == sorted(cids)
        first = viewer_client.get(api, {"limit": 1}).json()
        second = viewer_client.get(api, {"limit": 1, "offset": 1}).json()
        assert first["count"] == second["count"] >= 3 and len(first["results"]) == 1
        assert first["results"][0]["cid"] < second["results"][0]["cid"]
        assert viewer_client.get(api, {"q": "PYTHON"}).json()["count"] >= 3  # lang, any case
        assert viewer_client.get(api, {"q": "no-such-client"}).json()["count"] == 0
        html = viewer_client.get("/connections/", {"q": "busy"}).content.decode()
        assert "aa-busy" in html and CLIENT not in html and "zz-idle" not in html
        html = viewer_client.get("/connections/", {"sort": "name", "desc": "0"}).content.decode()
        assert html.index("aa-busy") < html.index(CLIENT) < html.index("zz-idle")
    finally:
        loop.run_until_complete(a.close())
        loop.run_until_complete(b.close())
        loop.close()


def test_bad_queries_are_refused(via_http, viewer_client):
    for params, field in (({"sort": "bogus"}, "sort"), ({"limit": "0"}, "limit"),
                          ({"limit": "x"}, "limit"), ({"colour": "red"}, "colour"),
                          ({"desc": "maybe"}, "desc")):
        r = viewer_client.get("/api/v1/connections/", params)
        assert r.status_code == 400 and field in r.json()["error"], (params, r.json())
    assert viewer_client.get("/api/v1/servers/", {"x": 1}).status_code == 400


def test_pages_show_servers_and_connections(via_http, viewer_client):
    html = viewer_client.get("/servers/").content.decode()
    assert "mon-1" in html and 'id="servers-js"' in html and 'id="servers-links"' in html
    assert 'hx-trigger="every' in html and 'class="on">Servers<' in html
    fragment = viewer_client.get("/servers/", {"fragment": "1"}).content.decode()
    assert fragment.lstrip().startswith('<div id="servers-live"') and "<nav" not in fragment
    html = viewer_client.get("/connections/").content.decode()
    assert CLIENT in html and "python3" in html and 'class="on">Connections<' in html
    fragment = viewer_client.get("/connections/", {"fragment": "1", "q": CLIENT}).content.decode()
    assert fragment.lstrip().startswith('<div id="conns-live"') and CLIENT in fragment


def test_bus_values_are_escaped(via_http, viewer_client):
    async def hostile():
        return await nats.connect(via_http["url"], name="<script>alert(1)</script>")

    loop = asyncio.new_event_loop()
    nc = loop.run_until_complete(hostile())
    try:
        html = viewer_client.get("/connections/", {"q": "script"}).content.decode()
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert" not in html
    finally:
        loop.run_until_complete(nc.close())
        loop.close()


def test_unconfigured_pages_say_what_they_need(monkeypatch, viewer_client, nats_server):
    _env(monkeypatch)
    for path in ("/servers/", "/connections/"):
        html = viewer_client.get(path).content.decode()
        assert "LUCENT_NATS_MONITOR_URLS" in html and "NATS_SYSTEM_USER" in html
    for path in ("/api/v1/servers/", "/api/v1/connections/"):  # not here: 404, not a 5xx
        r = viewer_client.get(path)
        assert r.status_code == 404 and "LUCENT_NATS_MONITOR_URLS" in r.json()["error"]
    _env(monkeypatch, LUCENT_NATS_MONITOR_URLS="ftp://x")
    assert "is not an http(s)://host:port URL" in viewer_client.get("/api/v1/servers/").json()["error"]


@pytest.fixture
def silent_port():
    """A port that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield sock.getsockname()[1]
    sock.close()


def test_dead_monitoring_urls_give_a_clear_error(monkeypatch, viewer_client, nats_server,
                                                 silent_port):
    refused = embedded.free_port()
    _env(monkeypatch, LUCENT_NATS_MONITOR_URLS=f"http://127.0.0.1:{refused}")
    r = viewer_client.get("/api/v1/servers/")
    assert r.status_code == 503 and "unreachable" in r.json()["error"]
    assert "Monitoring data unavailable" in viewer_client.get("/servers/").content.decode()
    _env(monkeypatch, LUCENT_NATS_MONITOR_URLS=f"http://127.0.0.1:{silent_port}",
         LUCENT_MONITOR_TIMEOUT_S="0.5")
    r = viewer_client.get("/api/v1/connections/")
    assert r.status_code == 503 and "timed out" in r.json()["error"]


def test_pages_polling_at_once_share_one_fetch_and_each_gets_its_own_copy(
        via_http, monkeypatch, viewer_client, silent_port):
    asked = []
    real = overview.gather_servers

    async def counted(src):
        asked.append(src.urls)
        return await real(src)

    monkeypatch.setattr(overview, "gather_servers", counted)
    first = overview.servers()  # as a view gets them (a JSON body could not show a copy)
    first[0]["name"] = "changed by one caller"  # a view that edits its rows edits a copy
    for _ in range(4):  # four more pages polling within the window
        assert viewer_client.get("/servers/", {"fragment": "1"}).status_code == 200
    again = viewer_client.get("/api/v1/servers/").json()
    assert len(asked) == 1 and again[0]["name"] == "mon-1"
    time.sleep(overview.FRESH_S)  # the window, then the next poll asks the servers again
    viewer_client.get("/api/v1/servers/")
    assert len(asked) == 2
    # A failure is shared the same way, and a different question is asked on its own.
    _env(monkeypatch, LUCENT_NATS_MONITOR_URLS=f"http://127.0.0.1:{silent_port}",
         LUCENT_MONITOR_TIMEOUT_S="0.5")
    codes = [viewer_client.get("/api/v1/servers/").status_code for _ in range(3)]
    assert codes == [503] * 3 and len(asked) == 3  # one wait for the silent port, not three


def test_one_dead_server_does_not_hide_the_others(monitored, monkeypatch, viewer_client,
                                                 nats_server):
    refused = embedded.free_port()
    _env(monkeypatch, LUCENT_NATS_MONITOR_URLS=f"{monitored['http']},http://127.0.0.1:{refused}")
    rows = viewer_client.get("/api/v1/servers/").json()
    assert rows[0]["name"] == "mon-1" and rows[1]["down"] and "unreachable" in rows[1]["errors"][0]
    page = viewer_client.get("/api/v1/connections/", {"q": CLIENT}).json()
    assert page["count"] == 1 and "unreachable" in page["errors"][0]


def test_the_collectors_sampler_never_waits(monitored, monkeypatch, silent_port):
    async def sweeps(n: int) -> list[dict]:
        sampler, out = overview.ServerSampler(every_s=0.1), []
        for _ in range(n):
            snap = {"ok": True}
            await sampler.fill(snap)
            out.append(snap)
            await asyncio.sleep(0.1)
        if sampler.task is not None:
            sampler.task.cancel()
        return out

    _env(monkeypatch)
    assert asyncio.run(sweeps(2)) == [{"ok": True}, {"ok": True}]  # no source: nothing
    _env(monkeypatch, LUCENT_NATS_MONITOR_URLS=monitored["http"])
    snaps = asyncio.run(sweeps(15))
    assert "mon-1" in snaps[-1]["servers"]
    assert snaps[-1]["servers"]["mon-1"]["in_msgs_per_s"] is not None  # two samples: a rate
    _env(monkeypatch, LUCENT_NATS_MONITOR_URLS=f"http://127.0.0.1:{silent_port}",
         LUCENT_MONITOR_TIMEOUT_S="0.3")
    started = time.monotonic()
    snaps = asyncio.run(sweeps(15))
    assert time.monotonic() - started < 10  # not a measurement: the sweeps were not held
    assert "servers" not in snaps[-1] and "timed out" in snaps[-1]["servers_error"]


# ------------------------------------------------------------------ the alert rules

def _rule(kind, threshold, name=None, for_s=0.0, target="*"):
    from alerts.models import Rule

    return Rule(name=name or kind.replace("_", "-"), kind=kind, threshold=threshold,
                for_s=for_s, target=target)


def _server(name="n1", slow=0, slow_5m=0, mem_pct=1.0, storage_pct=1.0):
    return {"name": name, "slow_consumers": slow, "slow_consumers_5m": slow_5m,
            "jetstream": {"memory_pct": mem_pct, "storage_pct": storage_pct}}


def _consumer(pending, paused=False, until=None, stream="S", name="c"):
    return {"stream": stream, "name": name, "num_pending": pending, "paused": paused,
            "pause_until": until}


def _iso(seconds_from_now: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds_from_now)).isoformat().replace(
        "+00:00", "Z")


def test_slow_consumer_and_storage_rules_fire_on_snapshots():
    from alerts.rules import conditions

    slow, js = _rule("slow_consumers", 0), _rule("server_js_limit", 90)
    snap = {"ok": True, "servers": {"n1": _server(slow=7, slow_5m=0),
                                    "n2": _server("n2", slow=9, slow_5m=3, storage_pct=93.5)}}
    held = conditions(snap, [slow, js])
    assert set(held) == {"slow-consumers:n2", "server-js-limit:n2"}
    assert "3 new slow consumers" in held["slow-consumers:n2"].message
    assert "storage at 94% of max_storage" in held["server-js-limit:n2"].message
    snap["servers"]["n2"]["jetstream"]["storage_pct"] = 87.0  # hysteresis: firing holds to 85
    assert "server-js-limit:n2" in conditions(snap, [js], firing={"server-js-limit:n2": 1})
    assert "server-js-limit:n2" not in conditions(snap, [js])
    assert conditions({"ok": True}, [slow, js]) == {}  # no monitoring source: nothing


def test_pause_rules_fire_on_snapshots():
    from alerts.rules import Evaluator, conditions

    rule = _rule("consumer_pause", 60, for_s=10)
    ending = {"ok": True, "consumers": {"S/c": _consumer(5, True, _iso(30)),
                                        "S/d": _consumer(5, True, _iso(600), name="d")}}
    held = conditions(ending, [rule])
    assert list(held) == ["consumer-pause:S/c"] and "pause ends in" in held["consumer-pause:S/c"].message
    ev, t = Evaluator(now=0.0), 1000.0
    fired = []
    for pending, paused in ((10, True), (40, True), (90, False), (90, False), (90, False),
                            (20, False), (8, False)):
        fire, resolve = ev.step({"ok": True, "consumers": {
            "S/c": _consumer(pending, paused, _iso(3600) if paused else None)}}, [rule], now=t)
        for c in fire:
            ev.firing[c.key] = 1
        for k in resolve:
            ev.resolved(k)
        fired.append((sorted(c.key for c in fire), resolve, bool(ev.firing)))
        t += 6
    # backlog 10 when paused, 90 when it resumed: fires after for_s, holds while over 10
    assert fired[2] == fired[3] == ([], [], False)  # held for 0 s, then 6 s: waits
    assert fired[4] == (["consumer-pause:S/c"], [], True) and fired[5] == ([], [], True)
    assert fired[6] == ([], ["consumer-pause:S/c"], False)  # back to 8: resolved
    msg = conditions({"ok": True, "consumers": {"S/c": _consumer(90)}}, [rule], paused_at={"S/c": 10})
    assert "10 pending then, 90 now" in msg["consumer-pause:S/c"].message


@pytest.mark.django_db
def test_new_default_rules_are_installed_and_wait():
    from alerts.models import Rule

    rows = {r.name: r for r in Rule.objects.filter(
        kind__in=["slow_consumers", "server_js_limit", "consumer_pause"])}
    assert set(rows) == {"slow-consumers", "server-js-limit-90", "consumer-pause-ending"}
    assert all(r.for_s > 0 for r in rows.values())


def _static(route, root: Path) -> None:
    from urllib.parse import urlsplit

    name = urlsplit(route.request.url).path.split("/static/", 1)[1]
    path = (Path(root) / name).resolve()
    if not path.is_file() or Path(root).resolve() not in path.parents:
        route.fulfill(status=404)
        return
    types = {".css": "text/css", ".js": "application/javascript", ".svg": "image/svg+xml"}
    route.fulfill(status=200, body=path.read_bytes(),
                  content_type=types.get(path.suffix, "application/octet-stream"))


def test_screenshots(via_http, live_server, transactional_db):
    from django.conf import settings
    from django.contrib.auth.models import Group, User

    from .support import CHROMIUM, CHROMIUM_ARGS, ROOT, chromium_or_skip

    chromium_or_skip()
    from playwright.sync_api import sync_playwright

    user = User.objects.create_user("shots", password="pw-shots")
    user.groups.add(Group.objects.get_or_create(name="viewer")[0])
    shots = Path(os.getenv("LUCENT_SCREENSHOTS", ROOT / "var" / "screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900}, color_scheme="dark")
        # live_server's static handler knows no hashed names: serve the collected files
        page.route("**/static/**", lambda route: _static(route, settings.STATIC_ROOT))
        page.goto(live_server.url + "/login/")
        page.fill("input[name=username]", "shots")
        page.fill("input[name=password]", "pw-shots")
        page.click("button[type=submit]")
        page.wait_for_selector("h1")
        for width, theme in ((1440, "dark"), (390, "light")):
            page.set_viewport_size({"width": width, "height": 900})
            page.emulate_media(color_scheme=theme)
            for path, name in (("/servers/", "servers"), ("/connections/", "connections")):
                page.goto(live_server.url + path)
                page.wait_for_selector("table.grid")
                page.screenshot(path=str(shots / f"{name}-{width}.png"), full_page=True)
                wide = page.evaluate("document.documentElement.scrollWidth")
                assert wide <= width, f"{path} is {wide}px wide at {width}px"
            # live: the page polls its fragment and swaps it in (rates appear after a poll)
            with page.expect_response(lambda r: "fragment=1" in r.url, timeout=15000) as polled:
                pass
            assert polled.value.status == 200
            page.wait_for_selector("#conns-live td.n:text-matches('/s$')", timeout=15000)
        browser.close()


def test_a_user_without_a_role_is_refused(client, users, via_http):
    client.force_login(users["nobody"])
    for path in ("/servers/", "/connections/", "/api/v1/servers/", "/api/v1/connections/"):
        assert client.get(path).status_code == 403, path
