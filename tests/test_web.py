"""Login, navigation, /healthz and the overview, against a real nats-server."""

import asyncio

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from lucent_bus import embedded
from lucent_bus import jetstream as js
from lucent_bus.client import connect
from lucent_bus.config import BusConfig
from streams import topology

pytestmark = pytest.mark.django_db


def _paths(resolver=None, prefix=""):
    resolver = resolver or get_resolver()
    for p in resolver.url_patterns:
        route = prefix + str(p.pattern)
        if isinstance(p, URLResolver):
            if route.startswith("admin/"):
                continue  # Django's admin has its own login
            yield from _paths(p, route)
        elif isinstance(p, URLPattern) and "<" not in route and "(" not in route:
            yield "/" + route.lstrip("^").rstrip("$")


def test_it_requires_login_everywhere_but_healthz(client, nats_server):
    paths = sorted(set(_paths()))
    assert "/" in paths and "/streams/" in paths and "/healthz" in paths
    for path in paths:
        response = client.get(path)
        if path in ("/healthz", "/login/", "/metrics"):
            # /metrics: open on loopback while LUCENT_METRICS_TOKEN is unset (test_metrics)
            assert response.status_code == 200, path
        elif path.startswith("/api/"):
            assert response.status_code in (401, 403), path  # API clients get no redirect
        else:
            assert response.status_code == 302, path
            assert response["Location"].startswith("/login/"), path


def test_it_logs_in_and_out(client, users, nats_server):
    response = client.post("/login/", {"username": "viewer", "password": "wrong"})
    assert response.status_code == 200
    assert b"Wrong username or password" in response.content
    response = client.post("/login/", {"username": "viewer", "password": "pw-viewer"})
    assert response.status_code == 302 and response["Location"] == "/"
    page = client.get("/")
    assert page.status_code == 200
    assert b"viewer" in page.content
    assert client.get("/logout/").status_code == 405  # logging out is a POST
    assert client.post("/logout/").status_code == 302
    assert client.get("/").status_code == 302


def test_healthz_is_ok_with_a_bus(client, nats_server):
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["bus"]["ok"] is True
    assert body["bus"]["servers"] == [nats_server.url]


def test_healthz_says_503_and_why_without_a_bus(client, monkeypatch):
    port = embedded.free_port()
    monkeypatch.setenv("NATS_URL", f"nats://user:s3cret-pw@127.0.0.1:{port}")
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "error"
    assert "bus unreachable" in body["reason"]
    assert "s3cret-pw" not in response.content.decode()
    assert body["bus"]["servers"] == [f"nats://***@127.0.0.1:{port}"]


def test_the_overview_and_list_show_lint_findings_and_escape_names(viewer_client, collector):
    async def setup():
        nc = await connect("t", BusConfig.from_env({"NATS_URL": collector.url}),
                           retry_initial=False)
        await topology.apply(nc, topology.ADR_LITERAL)
        await js.add_stream(nc, {"name": "EVIL", "subjects": ["evil.<img/src=x/onerror=alert(1)"],
                                 "storage": "memory"})
        await nc.close()

    asyncio.run(setup())
    collector.wait_for(lambda s: len(s["streams"]) == 5)
    page = viewer_client.get("/").content.decode()
    assert "single-token-wildcard" in page and "interest-without-consumers" in page
    assert "interest retention drops every message" in page  # needs attention: DOMAIN_EVENTS
    listing = viewer_client.get("/streams/").content.decode()
    assert "DOMAIN_EVENTS" in listing and "HIERARCHY" in listing
    assert "<img/src" not in listing
    assert "evil.&lt;img/src=x/onerror=alert(1)" in listing


def test_the_overview_says_when_the_bus_is_away(viewer_client, monkeypatch):
    monkeypatch.setenv("NATS_URL", f"nats://127.0.0.1:{embedded.free_port()}")
    page = viewer_client.get("/")
    assert page.status_code == 200
    assert b"no data from the collector yet" in page.content


def test_no_template_has_a_multi_line_comment_tag():
    """Django's {# #} is one line only: a multi-line one is printed on the page as text
    (and a tag inside it is rendered by the browser). Use {% comment %} instead."""
    import re

    from .support import ROOT

    bad = [str(p.relative_to(ROOT)) for p in (ROOT / "templates").rglob("*.html")
           if any("\n" in body for body in re.findall(r"\{#(.*?)#\}", p.read_text(), re.S))]
    assert bad == []
