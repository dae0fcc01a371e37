"""Who sees what (roles), login and token guessing, and the Content-Security-Policy.

The URL list is read from the resolver, so a page or endpoint added later is covered
here without anyone remembering to: a path parameter this file cannot fill fails the
test (add its value to ``_value``).
"""

from __future__ import annotations

import re
import time
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.core.cache import cache
from django.core.management import call_command
from django.test import Client
from django.urls import URLResolver, get_resolver
from django.utils import timezone
from rest_framework.authtoken.models import Token

from kernel.middleware import OPEN_PREFIXES
from kernel.models import AuditRecord
from lucent_bus import jetstream as js

from .conftest import bus, run
from .support import ROOT, WebsocketClient

STREAM = "ACCESS"
KINDS = ("nobody", "viewer", "operator", "admin")


def _routes(patterns=None, prefix: str = ""):
    for p in get_resolver().url_patterns if patterns is None else patterns:
        route = prefix + str(p.pattern)
        if isinstance(p, URLResolver):
            yield from _routes(p.url_patterns, route)
        else:
            yield route


def _is_open(route: str) -> bool:
    return ("/" + route).startswith(OPEN_PREFIXES)


ROUTES = sorted({r for r in _routes() if not _is_open(r)})
API = [r for r in ROUTES if r.startswith("api/")]
PAGES = [r for r in ROUTES if not r.startswith("api/")]


def _value(route: str, param: str, world: dict) -> str:
    if param == "name":
        return "pricing" if route.startswith("agents/") else STREAM
    if param == "pk":
        if "jobs/" in route:
            return str(world["job"])
        if "alerts/" in route:
            return str(world["alert"])
        if "deadletters/" in route:
            return str(world["letter"])
    if param == "seq":
        return "1"
    if param == "action":
        return "ack"
    if param == "correlation_id":
        return "corr-access"
    if param == "bucket":
        return "ACCESS_KV"  # none: a 404 once past the role check
    if param == "key":
        return "k"
    if param == "consumer":
        return "access-consumer"
    raise AssertionError(f"test_access cannot fill <{param}> in {route!r}: add it to _value")


def _path(route: str, world: dict) -> str:
    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", lambda m: _value(route, m.group(1), world), route)


@pytest.fixture(autouse=True)
def _clean_cache():
    cache.clear()  # bad-token counts and lockout-audit marks are per address, in the cache
    yield
    cache.clear()


async def _stream(url):
    nc = await bus(url)
    await js.add_stream(nc, {"name": STREAM, "subjects": ["access.>"], "storage": "memory"})
    await nc.jetstream().publish("access.one", b'{"messageId": "a-1", "correlationId": "corr-access"}')
    await nc.close()


@pytest.fixture
def world(db, collector, users):
    """A stream on a swept bus, a dead letter, a job and an alert: something behind
    every parameter of every URL."""
    from alerts.models import Alert, Rule
    from deadletters.models import DeadLetter
    from kernel.models import Job

    run(_stream(collector.url))
    collector.wait_for(lambda s: s["streams"].get(STREAM, {}).get("messages") == 1)
    letter = DeadLetter.objects.create(
        dl_seq=1, dl_subject=f"lucent.deadletter.{STREAM}.worker", stream=STREAM, stream_seq=1,
        subject="access.one", consumer="worker", deliveries=3, reason="max_deliveries",
        captured_at=timezone.now(), correlation_id="corr-access", payload_available=False)
    job = Job.objects.create(kind="replay", state=Job.DONE)
    # The collector's transactional database starts empty: the test makes its own rule.
    rule = Rule.objects.create(name="access-rule", kind=Rule.CONSUMER_PENDING, threshold=1000,
                               severity="warning")
    alert = Alert.objects.create(rule=rule, key="access-test", subject=STREAM,
                                 severity="warning", message="test alert")
    return {"letter": letter.pk, "job": job.pk, "alert": alert.pk}


def test_the_url_list_holds_every_kind_of_page_and_endpoint():
    for route in ("", "streams/<str:name>/", "deadletters/<int:pk>/", "agents/<path:name>/",
                  "alerts/", "audit/", "trace/<path:correlation_id>/", "api/v1/streams/",
                  "api/v1/deadletters/<str:pk>/replay/", "api/v1/audit/", "api/schema/"):
        assert route in ROUTES, route
    assert not any(r.startswith(("login/", "admin/", "healthz")) for r in ROUTES)


@pytest.mark.parametrize("kind", ["viewer", "operator", "admin"])
def test_every_role_reads_every_page_and_endpoint(client, users, world, kind):
    client.force_login(users[kind])
    wrong = {}
    for route in ROUTES:
        status = client.get(_path(route, world)).status_code
        # 405: an endpoint that only acts (POST/DELETE); 400/404: a dummy it refuses.
        if status in (401, 403) or status >= 500:
            wrong[route] = status
    assert wrong == {}
    for path in ("/", "/streams/", f"/streams/{STREAM}/", "/deadletters/",
                 f"/deadletters/{world['letter']}/", "/agents/", "/services/", "/alerts/",
                 "/audit/", "/trace/", "/api/v1/streams/", "/api/v1/deadletters/",
                 "/api/v1/audit/", "/api/v1/alerts/"):
        assert client.get(path).status_code == 200, path


def test_a_user_in_no_group_is_refused_every_page_and_endpoint(client, users, world):
    client.force_login(users["nobody"])
    audit_before = AuditRecord.objects.count()
    wrong = {}
    for route in ROUTES:
        path = _path(route, world)
        for method in ("get", "post"):
            response = getattr(client, method)(path)
            if response.status_code != 403:
                wrong[f"{method.upper()} {path}"] = response.status_code
            elif route.startswith("api/"):
                assert b"viewer role" in response.content, path  # says what it needs
    assert wrong == {}
    page = client.get("/streams/")
    text = page.content.decode()
    assert page.status_code == 403 and "Needs the viewer role" in text
    assert 'action="/logout/"' in text and "Log out" in text  # styled page, a way out
    assert STREAM not in text and 'ws-connect' not in text and "/deadletters/" not in text
    # refused before any service ran; each attempt to act (the POSTs) audited as refused
    refused = AuditRecord.objects.filter(outcome="refused", username="nobody")
    assert AuditRecord.objects.count() - audit_before == refused.count() == len(ROUTES)
    # What stays open: logging out, health, the login page.
    assert client.get("/login/").status_code == 200
    assert client.get("/healthz").status_code in (200, 503)
    assert client.post("/logout/").status_code == 302


def test_anonymous_visitors_are_sent_to_the_login_page_and_the_api_refuses_them(world):
    anonymous = Client()
    for route in PAGES:
        response = anonymous.get(_path(route, world))
        assert response.status_code == 302 and response["Location"].startswith("/login/"), route
    for route in API:
        assert anonymous.get(_path(route, world)).status_code in (401, 403), route


def test_api_tokens_carry_their_users_role(client, users, world):
    nobody = {"HTTP_AUTHORIZATION": f"Token {Token.objects.create(user=users['nobody']).key}"}
    viewer = {"HTTP_AUTHORIZATION": f"Token {Token.objects.create(user=users['viewer']).key}"}
    for path in ("/api/v1/streams/", "/api/v1/deadletters/", "/api/v1/audit/", "/api/schema/"):
        assert client.get(path, **nobody).status_code == 403, path
        assert client.get(path, **viewer).status_code == 200, path
    assert client.post("/api/v1/probe/", {"subject": "access.x"}, content_type="application/json",
                       **nobody).status_code == 403


def test_actions_are_refused_below_their_role_and_change_nothing(client, users, world):
    """The service layer's half: viewers act on nothing, operators not on streams."""
    dl, job, alert = world["letter"], world["job"], world["alert"]
    operator_actions = [
        ("post", f"/api/v1/deadletters/{dl}/replay/", {}),
        ("post", "/api/v1/deadletters/replay/", {"all": True, "subject": "access.again"}),
        ("post", "/api/v1/deadletters/purge/", {"all": True}),
        ("delete", f"/api/v1/deadletters/{dl}/", None),
        ("post", f"/api/v1/jobs/{job}/cancel/", {}),
        ("post", "/api/v1/probe/", {"subject": "access.x"}),
        ("post", f"/api/v1/alerts/{alert}/ack/", {}),
        ("post", f"/api/v1/streams/{STREAM}/replay/", {"target": "access.again", "start_seq": 1}),
    ]
    admin_actions = [
        ("post", f"/api/v1/streams/{STREAM}/purge/", {"all": True}),
        ("delete", f"/api/v1/streams/{STREAM}/messages/1/", None),
    ]

    def call(method, path, body):
        if body is None:
            return getattr(client, method)(path)
        return getattr(client, method)(path, body, content_type="application/json")

    def refused(kind, actions):
        client.force_login(users[kind])
        for method, path, body in actions:
            before = AuditRecord.objects.filter(outcome="refused", username=kind).count()
            assert call(method, path, body).status_code == 403, path
            # the refusal is audited, as every action is
            after = AuditRecord.objects.filter(outcome="refused", username=kind).count()
            assert after == before + 1, f"{method} {path}: no refused audit record"

    refused("viewer", operator_actions + admin_actions)
    refused("operator", admin_actions)
    from deadletters.models import DeadLetter

    assert DeadLetter.objects.get(pk=dl).status == "new"
    world_stream = run(_stream_state(world))
    assert world_stream["messages"] == 1


async def _stream_state(world):
    import os

    nc = await bus(os.environ["NATS_URL"])
    info = await js.stream_info(nc, STREAM)
    await nc.close()
    return info["state"]


# -- the websocket ----------------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
async def test_the_live_socket_refuses_a_user_in_no_group(nats_server, users):
    results = {}
    for kind in KINDS:
        cookie = await sync_to_async(_session_cookie)(users[kind])
        comm = WebsocketClient(_application(), "/ws/live/?panel=status", headers=[
            (b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1"),
            (b"cookie", f"sessionid={cookie}".encode())])
        results[kind], _ = await comm.connect()
        await comm.disconnect()
    assert results == {"nobody": False, "viewer": True, "operator": True, "admin": True}


def _session_cookie(user) -> str:
    c = Client()
    c.force_login(user)
    return c.cookies["sessionid"].value


def _application():
    from lucent_console.asgi import application

    return application


# -- login guessing ---------------------------------------------------------------------

def _login(client, username, password, ip):
    return client.post("/login/", {"username": username, "password": password}, REMOTE_ADDR=ip)


def test_ten_failed_logins_lock_the_address_even_for_the_right_password(users):
    guesser = Client()
    statuses = [_login(guesser, "admin", f"guess-{i}", "10.0.0.1").status_code for i in range(10)]
    assert statuses[:9] == [200] * 9  # the login form again, "wrong username or password"
    assert statuses[9] == 429  # the tenth failure locks
    locked = _login(guesser, "admin", "pw-admin", "10.0.0.1")  # the 11th: right, refused
    assert locked.status_code == 429 and "Too many login attempts" in locked.content.decode()
    assert "_auth_user_id" not in guesser.session
    for i in range(5):  # more tries while locked: one audit row all the same
        _login(guesser, "admin", f"more-{i}", "10.0.0.1")

    # Nobody locks admin out from another address.
    admin = Client()
    assert _login(admin, "admin", "pw-admin", "10.0.0.2").status_code == 302
    assert "_auth_user_id" in admin.session

    lockouts = AuditRecord.objects.filter(action="login.lockout")
    assert [(r.target, r.outcome, r.detail) for r in lockouts] == [("admin", "refused", "10.0.0.1")]
    audit_page = admin.get("/audit/").content.decode()
    assert "login.lockout" in audit_page and "10.0.0.1" in audit_page


@pytest.mark.django_db(transaction=True)
async def test_the_lockout_holds_under_asgi_as_served(users):
    """uvicorn serves through Django's async handler, where axes' middleware takes
    another path: the same refusal there."""
    from django.test import AsyncClient

    guesser = AsyncClient()  # from 127.0.0.1: the async test client has no REMOTE_ADDR
    for i in range(10):
        await guesser.post("/login/", {"username": "admin", "password": f"g{i}"})
    locked = await guesser.post("/login/", {"username": "admin", "password": "pw-admin"})
    assert locked.status_code == 429 and "Too many login attempts" in locked.content.decode()
    assert "sessionid" not in locked.cookies  # not logged in


def test_rotating_usernames_does_not_get_around_the_address_limit(users):
    guesser = Client()
    for i in range(10):
        _login(guesser, f"user{i}", "guess", "10.0.1.1")
    assert _login(guesser, "viewer", "pw-viewer", "10.0.1.1").status_code == 429
    assert _login(Client(), "viewer", "pw-viewer", "10.0.1.2").status_code == 302


def test_the_lockout_ends_after_the_cool_off_or_when_an_admin_lifts_it(users, settings):
    from axes.models import AccessAttempt

    assert settings.AXES_COOLOFF_TIME == timedelta(minutes=settings.LUCENT_LOGIN_LOCKOUT_MINUTES)
    for ip in ("10.0.2.1", "10.0.2.2"):
        for i in range(10):
            _login(Client(), "operator", f"guess-{i}", ip)
        assert _login(Client(), "operator", "pw-operator", ip).status_code == 429
    # 10.0.2.1 waits out the cool-off (its attempts made to look that old) ...
    AccessAttempt.objects.filter(ip_address="10.0.2.1").update(
        attempt_time=timezone.now() - settings.AXES_COOLOFF_TIME - timedelta(seconds=1))
    assert _login(Client(), "operator", "pw-operator", "10.0.2.1").status_code == 302
    # ... an admin lifts 10.0.2.2's lockout at once.
    call_command("axes_reset_ip", "10.0.2.2")
    assert _login(Client(), "operator", "pw-operator", "10.0.2.2").status_code == 302


def test_bad_api_tokens_are_throttled_per_address(client, users, world, settings):
    good = {"HTTP_AUTHORIZATION": f"Token {Token.objects.create(user=users['viewer']).key}"}
    bad = {"HTTP_AUTHORIZATION": "Token " + "0" * 40}
    for _ in range(settings.LUCENT_TOKEN_FAILURES):
        assert client.get("/api/v1/streams/", REMOTE_ADDR="10.0.3.1", **bad).status_code in (401, 403)
    assert client.get("/api/v1/streams/", REMOTE_ADDR="10.0.3.1", **bad).status_code == 429
    # The good token from that address too: a guesser must not learn which one was right.
    throttled = client.get("/api/v1/streams/", REMOTE_ADDR="10.0.3.1", **good)
    assert throttled.status_code == 429 and "Retry-After" in throttled
    assert client.get("/api/v1/streams/", REMOTE_ADDR="10.0.3.2", **good).status_code == 200


# -- Content-Security-Policy ------------------------------------------------------------

def test_pages_carry_the_policy(viewer_client):
    policy = viewer_client.get("/alerts/")["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";") if d.strip())
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self' 'unsafe-inline'"
    assert directives["connect-src"] == "'self' ws://testserver wss://testserver"
    assert directives["img-src"] == "'self' data:"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe-eval" not in policy


def test_no_template_holds_inline_script_or_event_handlers():
    found = []
    for path in sorted((ROOT / "templates").rglob("*.html")):
        text = path.read_text()
        for tag in re.findall(r"<script\b[^>]*>", text, re.I):
            if "src=" not in tag:
                found.append(f"{path.name}: inline {tag}")
        for m in re.finditer(r"\s(on[a-z]+\s*=|hx-on[:\w-]*\s*=)|javascript:", text, re.I):
            found.append(f"{path.name}: {m.group(0).strip()}")
    # json_script renders <script type="application/json">: data, never run
    assert found == []
    assert "htmx-config" in (ROOT / "templates" / "base.html").read_text()


# -- in a real browser ------------------------------------------------------------------

@pytest.fixture(scope="module")
def console(tmp_path_factory):
    from .support import Console

    c = Console(tmp_path_factory.mktemp("console"), demo=False)
    try:
        c.wait_for("Lucent Console is running at")
        yield c
    finally:
        c.kill()


@pytest.mark.browser
def test_the_pages_run_under_the_policy_without_a_violation(console):
    from playwright.sync_api import sync_playwright

    from .support import CHROMIUM, CHROMIUM_ARGS, chromium_or_skip, login

    chromium_or_skip()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        # Runs before the page's own scripts and outside its policy (devtools).
        page.add_init_script("""window.__csp = [];
            document.addEventListener('securitypolicyviolation', (e) =>
                window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));""")
        console_csp, frames = [], {}  # socket URL: frames received on it
        page.on("console", lambda m: console_csp.append(m.text)
                if "Content Security Policy" in m.text or "Refused to" in m.text else None)

        def watch(ws):
            frames.setdefault(ws.url, 0)
            ws.on("framereceived", lambda _: frames.__setitem__(ws.url, frames[ws.url] + 1))

        page.on("websocket", watch)
        login(page, console.url)
        checks = [("/", "#live-status.ok", "panel=overview"),
                  ("/streams/COMMANDS/", "#chart-pending .main-svg", "panel=stream"),  # plotly
                  ("/deadletters/", "#dl-table", "panel=deadletters")]
        for path, selector, panel in checks:
            response = page.goto(console.url + path)
            assert "script-src 'self'" in response.headers["content-security-policy"]
            page.wait_for_selector(selector, timeout=15000)
            # The live socket connected and speaks (htmx opened it: no eval needed).
            deadline = time.monotonic() + 15
            while not any(panel in url and n for url, n in frames.items()):
                assert time.monotonic() < deadline, f"{path}: no live frames; {frames}"
                page.wait_for_timeout(100)
            assert page.evaluate("window.__csp") == [], path
        assert console_csp == []
        # The control: an inline script is refused, and the listeners above hear of it.
        page.evaluate("""() => { const s = document.createElement('script');
            s.textContent = 'window.__ran = 1'; document.body.appendChild(s); }""")
        page.wait_for_function("window.__csp.length > 0")
        assert page.evaluate("window.__ran") is None
        assert page.evaluate("window.__csp")[0].startswith("script-src")
        browser.close()

