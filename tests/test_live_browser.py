"""The live console in a real Chromium, against `manage.py up` and a bus the test owns."""

import asyncio
import concurrent.futures
import json

import pytest

from lucent_bus import embedded
from lucent_bus import jetstream as js
from lucent_bus.client import connect
from lucent_bus.config import BusConfig

from .deadletter_bus import fail
from .support import CHROMIUM, CHROMIUM_ARGS, Console, chromium_or_skip, login, wait_until

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def bus_server(tmp_path_factory):
    store = tmp_path_factory.mktemp("bus")
    server = embedded.single(store / "js").start().wait()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def console(tmp_path_factory, bus_server):
    c = Console(tmp_path_factory.mktemp("console"), nats_url=bus_server.url, demo=False)
    try:
        c.wait_for("Lucent Console is running at")
        yield c
    finally:
        c.kill()


@pytest.fixture(scope="module")
def page(console):
    chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        pg = browser.new_page()
        login(pg, console.url)
        yield pg
        browser.close()


def _add_stream(url: str, name: str) -> None:
    async def go():
        nc = await connect("t", BusConfig.from_env({"NATS_URL": url}), retry_initial=False)
        await js.add_stream(nc, {"name": name, "subjects": [f"{name.lower()}.>"], "storage": "memory"})
        await nc.jetstream().publish(f"{name.lower()}.x", b"<script>window.__pwned=1</script>")
        await nc.close()

    # Playwright's sync API owns this thread's event loop: use another thread.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, go()).result(30)


def test_a_stream_created_while_the_page_is_open_appears_without_reload(page, console, bus_server):
    page.goto(console.url + "/streams/")
    page.wait_for_selector("#stream-COMMANDS")
    page.wait_for_selector("#live-status.ok", timeout=15000)
    page.evaluate("window.__still_here = true")
    _add_stream(bus_server.url, "APPEARS_LIVE")
    page.wait_for_selector("#stream-APPEARS_LIVE", timeout=10000)
    assert page.evaluate("window.__still_here") is True  # same document: no reload
    row = page.locator("#stream-APPEARS_LIVE").inner_text()
    assert "appears_live.>" in row
    page.goto(console.url + "/streams/APPEARS_LIVE/")
    page.wait_for_selector("#chart-pending .main-svg")  # history charts drawn
    page.fill("input[name=seq]", "1")
    page.click("text=Read")
    page.wait_for_selector("article.msg")
    page.click("article.msg details.body summary")  # bodies come collapsed to one line
    assert "<script>window.__pwned=1</script>" in page.locator("article.msg pre").inner_text()
    assert page.evaluate("window.__pwned") is None


def test_the_console_keeps_serving_while_the_bus_is_down_and_recovers(page, console, bus_server):
    page.goto(console.url + "/streams/")
    page.wait_for_selector("#live-status.ok", timeout=15000)
    bus_server.stop()
    try:
        page.wait_for_selector("#live-status.down", timeout=15000)  # told live, over the socket
        assert "data from" in page.locator("#live-status").inner_text()
        status, body = console.get("/healthz")
        assert status == 503 and "bus" in json.loads(body)["reason"]
        status, body = console.get("/login/")
        assert status == 200
        assert page.locator("#stream-COMMANDS").count() == 1  # last data still shown
    finally:
        bus_server.start().wait()
    page.wait_for_selector("#live-status.ok", timeout=30000)
    wait_until(lambda: console.get("/healthz")[0] == 200, 20, "/healthz answers 200 again")
    _add_stream(bus_server.url, "AFTER_OUTAGE")
    page.wait_for_selector("#stream-AFTER_OUTAGE", timeout=10000)


def _bus_thread(coro_fn):
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro_fn()).result(60)


def test_a_dead_letter_appears_live_renders_as_text_and_replays(page, console, bus_server):
    xss = "<img src=x onerror=alert(1)>"
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(console.url + "/deadletters/")
    page.wait_for_selector("#dl-table")
    page.evaluate("window.__still_here = true")

    async def fail_one():
        nc = await connect("t", BusConfig.from_env({"NATS_URL": bus_server.url}), retry_initial=False)
        await js.add_stream(nc, {"name": "XSSQ", "subjects": ["xssq.>"], "storage": "file"})
        await js.add_consumer(nc, "XSSQ", {"durable_name": "picky", "ack_policy": "explicit",
                                           "max_deliver": 2})
        await nc.jetstream().publish("xssq.job", json.dumps({"messageId": "x-1", "messageType": xss,
                                                             "payload": xss}).encode(),
                                     headers={"X-Evil": xss})
        await fail(nc, set(), expect=1, stream="XSSQ", consumer="picky")  # until advised
        await nc.close()

    _bus_thread(fail_one)
    row = page.wait_for_selector("#dl-body tr.dl-new", timeout=20000)  # arrives without reload
    assert page.evaluate("window.__still_here") is True
    assert xss in row.inner_text()
    row.query_selector("a").click()
    page.wait_for_selector("#payload")
    assert xss in page.locator("#payload").inner_text()
    assert xss in page.locator("#headers").inner_text()
    assert page.locator("img[src=x]").count() == 0
    page.click("#replay-button")
    page.click("#replay-confirm")  # a replay names where it goes and asks first
    page.wait_for_selector("#dl-status:has-text('replayed')", timeout=10000)
    assert "Replayed to xssq.job" in page.locator("#dl-actions").inner_text()
    assert dialogs == []


def test_a_silent_service_turns_stale_then_down_live(page, console, bus_server):
    from lucent_bus import envelope

    async def beats(n: int):
        nc = await connect("t", BusConfig.from_env({"NATS_URL": bus_server.url}), retry_initial=False)
        for _ in range(n):
            await nc.publish("lucent.services.pricing.health", envelope.encode(envelope.make(
                "HealthCheck", "lucent.services.pricing.health",
                {"status": "ok", "interval_s": 0.5, "version": "9.9"},
                sender={"serviceId": "pricing", "instanceId": "p-1"})))
            await asyncio.sleep(0.2)  # the beat under test: a heartbeat every 0.2 s
        await nc.close()

    page.goto(console.url + "/services/")
    page.evaluate("window.__still_here = true")
    _bus_thread(lambda: beats(5))
    cell = "#services-panel tr:has-text('pricing') .status-{}"
    page.wait_for_selector(cell.format("up"), timeout=10000)
    page.wait_for_selector(cell.format("stale"), timeout=10000)  # silent for 2 intervals
    page.wait_for_selector(cell.format("down"), timeout=10000)  # 5 intervals
    _bus_thread(lambda: beats(3))
    page.wait_for_selector(cell.format("up"), timeout=10000)
    assert page.evaluate("window.__still_here") is True


def test_agent_jobs_appear_live_and_the_agent_page_draws_its_charts(page, console, bus_server):
    from lucent_bus import envelope

    async def work():
        nc = await connect("t", BusConfig.from_env({"NATS_URL": bus_server.url}), retry_initial=False)
        await js.add_consumer(nc, "AGENT_COORDINATION", {
            "durable_name": "pricing-worker", "ack_policy": "explicit",
            "filter_subject": "lucent.agents.pricing.>"})
        await nc.close()

    async def job():
        nc = await connect("t", BusConfig.from_env({"NATS_URL": bus_server.url}), retry_initial=False)
        env = envelope.make("<b>PriceJob</b>", "lucent.agents.pricing.quote", {},
                            sender={"serviceId": "gateway"})
        await nc.jetstream().publish("lucent.agents.pricing.quote", envelope.encode(env))
        sub = await nc.jetstream().pull_subscribe_bind("pricing-worker", "AGENT_COORDINATION")
        for m in await sub.fetch(1, timeout=5):
            await m.ack_sync()
        await nc.close()

    page.goto(console.url + "/agents/")
    page.wait_for_selector("#agent-feed")
    page.evaluate("window.__still_here = true")
    _bus_thread(work)
    # A sweep has seen the consumer: the agent's row is on the page, live.
    page.wait_for_selector("#agent-pricing", timeout=10000)
    _bus_thread(job)
    row = page.wait_for_selector("#agent-feed tr:has-text('PriceJob') .outcome-done", timeout=10000)
    assert row is not None and page.evaluate("window.__still_here") is True
    assert "<b>PriceJob</b>" in page.locator("#agent-feed").inner_text()  # shown as text
    page.wait_for_selector("#agent-pricing", timeout=10000)
    page.click("#agent-pricing a")
    page.wait_for_selector("#chart-failures .main-svg", timeout=10000)
    assert page.locator("#chart-rate .main-svg").count() >= 1
    assert "pricing-worker" in page.locator("#agent-state").inner_text()
