"""Triage in few clicks (issue 14, item 5): group chips filter, an error column, row
selection with a bulk bar, a confirmation for every replay, previous/next on a letter,
jobs that show per-letter progress, rate, ETA and their cancel; against a real bus."""

import asyncio
import concurrent.futures
import html
import json
import re
import threading
import time

import pytest

from deadletters import search
from deadletters.models import DeadLetter
from kernel.actions import ActionError
from kernel.models import Job
from lucent_bus import jetstream as js
from lucent_bus.client import connect
from lucent_bus.config import BusConfig

from .conftest import bus, run
from .deadletter_bus import drain, fail, work_stream
from .support import CHROMIUM, CHROMIUM_ARGS, Console, chromium_or_skip, login

LONG_ERROR = "handler raised: " + "x" * 120 + " END"


async def _three(url):
    """Three dead letters on ORDERS: two ShipOrder, one without a type."""
    nc = await bus(url)
    await work_stream(nc)
    jsn = nc.jetstream()
    for n in (1, 2):
        await jsn.publish(f"orders.eu.{n}", json.dumps({"messageId": f"m-{n}",
                                                        "messageType": "ShipOrder"}).encode())
    await jsn.publish("orders.us.3", b"plain")
    await fail(nc, set())
    await asyncio.sleep(0.2)
    await drain(nc)
    await nc.close()


async def _orders(url) -> list[dict]:
    """Every message in ORDERS, in order (the originals, then whatever was replayed)."""
    nc = await bus(url)
    try:
        info = await js.stream_info(nc, "ORDERS")
        out, seq = [], 1
        while seq <= info["state"]["last_seq"]:
            msg = await js.next_message(nc, "ORDERS", seq)
            if msg is None:
                break
            out.append(msg)
            seq = msg["seq"] + 1
        return out
    finally:
        await nc.close()


@pytest.fixture
def letters(fresh_server, monkeypatch, users):
    monkeypatch.setenv("NATS_URL", fresh_server.url)
    run(_three(fresh_server.url))
    assert DeadLetter.objects.count() == 3
    return {d.subject: d for d in DeadLetter.objects.all()}


@pytest.mark.django_db(transaction=True)
def test_a_group_chip_filters_the_table_and_the_error_column_shows(client, users, letters):
    DeadLetter.objects.filter(subject="orders.eu.1").update(error=LONG_ERROR)
    client.force_login(users["operator"])
    page = client.get("/deadletters/").content.decode()
    chip = re.search(r'<a class="chip" href="([^"]+)"[^>]*><strong>2</strong> ShipOrder', page)
    assert chip, page
    href = html.unescape(chip.group(1))
    assert "message_type=ShipOrder" in href and "consumer=shipper" in href
    filtered = client.get("/deadletters/" + href).content.decode()
    assert filtered.count('class="dl-pick"') == 2 and "orders.us.3" not in filtered
    assert 'class="chip active"' in filtered  # and it links back to every group
    # The error, clipped in the cell, whole on hover.
    assert "<th>Error</th>" in page
    assert f'title="{LONG_ERROR}"' in page
    assert LONG_ERROR[:40] in page and f">{LONG_ERROR}<" not in page


@pytest.mark.django_db(transaction=True)
def test_a_selection_replays_exactly_those_letters(client, users, letters, fresh_server):
    client.force_login(users["operator"])
    picked = [letters["orders.eu.2"].pk, letters["orders.us.3"].pk]
    empty = client.post("/deadletters/bulk/", {"action": "replay", "scope": "selected"})
    assert empty.status_code == 400 and "select the dead letters" in empty.content.decode()
    form = {"action": "replay", "scope": "selected", "ids": picked, "rate": "4"}
    dry = client.post("/deadletters/bulk/", form).content.decode()
    assert "Replay 2 selected dead letters?" in dry
    assert "4 messages/s" in dry and "about 1 s in all" in dry  # rate and ETA
    assert 'name="remove_original"' in dry and "(now: kept)" in dry  # the choice, in sight
    plan = re.search(r'name="plan" value="([^"]+)"', dry).group(1)
    assert all(f'name="ids" value="{pk}"' in dry for pk in picked)
    done = client.post("/deadletters/bulk/", {**form, "plan": html.unescape(plan), "confirm": "1"})
    body = done.content.decode()
    assert done["HX-Trigger"] == "dl-changed"  # the page fetches its counts again
    assert "2 of 2 letters" in body and "done" in body
    after = asyncio.run(_orders(fresh_server.url))
    assert sorted(m["subject"] for m in after[3:]) == ["orders.eu.2", "orders.us.3"]  # any order
    assert {d.subject: d.status for d in DeadLetter.objects.all()} == {
        "orders.eu.1": "new", "orders.eu.2": "replayed", "orders.us.3": "replayed"}


def test_ids_are_checked_as_a_list_of_whole_numbers():
    assert search.clean_filters({"ids": "3, 1,3"}) == {"ids": [1, 3]}
    assert search.clean_filters({"ids": [2, "5"]}) == {"ids": [2, 5]}
    for bad in ("1,x", [True], ["-1"], "0", [1.5]):
        with pytest.raises(ActionError):
            search.clean_filters({"ids": bad})
    with pytest.raises(ActionError):
        search.clean_filters({"ids": list(range(1, search.MAX_IDS + 2))})


@pytest.mark.django_db(transaction=True)
def test_the_api_takes_a_selection(client, users, letters):
    client.force_login(users["operator"])
    pk = letters["orders.eu.1"].pk
    dry = client.post("/api/v1/deadletters/replay/", {"dry_run": True, "ids": [pk]},
                      content_type="application/json")
    assert dry.status_code == 200 and dry.json()["matched"] == 1
    bad = client.post("/api/v1/deadletters/replay/", {"dry_run": True, "ids": ["x"]},
                      content_type="application/json")
    assert bad.status_code == 400


@pytest.mark.django_db(transaction=True)
def test_a_single_replay_asks_first_then_replays(client, users, letters, fresh_server):
    client.force_login(users["operator"])
    pk = letters["orders.eu.1"].pk
    ask = client.post(f"/deadletters/{pk}/replay/", {"subject": "orders.eu.9"}).content.decode()
    assert "Replay 1 dead letter to <code>orders.eu.9</code>?" in ask
    assert "no rate limit" in ask and 'name="confirm" value="1"' in ask
    assert DeadLetter.objects.get(pk=pk).status == "new"
    assert len(asyncio.run(_orders(fresh_server.url))) == 3  # nothing sent yet
    done = client.post(f"/deadletters/{pk}/replay/", {"subject": "orders.eu.9", "confirm": "1"})
    assert "Replayed to orders.eu.9" in done.content.decode()
    assert asyncio.run(_orders(fresh_server.url))[-1]["subject"] == "orders.eu.9"


@pytest.mark.django_db(transaction=True)
def test_previous_and_next_walk_the_list_order(client, users, letters):
    client.force_login(users["viewer"])
    order = [int(x) for x in re.findall(r'data-id="(\d+)"', client.get("/deadletters/").content.decode())]
    assert len(order) == 3
    seen = [order[0]]
    while True:
        page = client.get(f"/deadletters/{seen[-1]}/").content.decode()
        nxt = re.search(r'href="/deadletters/(\d+)/" id="dl-next"', page)
        if not nxt:
            break
        seen.append(int(nxt.group(1)))
    assert seen == order
    back = client.get(f"/deadletters/{order[1]}/").content.decode()
    assert f'href="/deadletters/{order[0]}/" id="dl-prev"' in back


@pytest.mark.django_db(transaction=True)
def test_cancel_says_cancelling_then_cancelled(client, users, letters, monkeypatch):
    """A slow job (0.5 letter/s) run by the real runner in another thread, as a worker would."""
    from deadletters import plans
    from kernel import jobs

    runners = []

    def in_background(job_id):
        t = threading.Thread(target=jobs.run_job, args=(job_id,), daemon=True)
        t.start()
        runners.append(t)

    monkeypatch.setattr(plans, "enqueue", in_background)
    client.force_login(users["operator"])
    started = client.post("/deadletters/bulk/", {"action": "replay", "stream": "ORDERS",
                                                 "rate": "0.5", "confirm": "1"})
    job = Job.objects.latest("pk")
    assert "Cancel</button>" in started.content.decode()
    deadline = time.monotonic() + 10
    while Job.objects.get(pk=job.pk).state == "pending" and time.monotonic() < deadline:
        time.sleep(0.05)
    cancelling = client.post(f"/deadletters/jobs/{job.pk}/cancel/").content.decode()
    assert ">cancelling</strong>" in cancelling and "Cancelling…" in cancelling
    assert 'hx-trigger="every 1s"' in cancelling  # it keeps asking until the job stops
    deadline = time.monotonic() + 10
    body = ""
    while time.monotonic() < deadline:
        r = client.get(f"/deadletters/jobs/{job.pk}/")
        body = r.content.decode()
        if ">cancelled</strong>" in body:
            break
        time.sleep(0.2)
    assert ">cancelled</strong>" in body and r["HX-Trigger"] == "dl-changed"
    assert "Cancel</button>" not in body and "every 1s" not in body
    for t in runners:
        t.join(10)


# ---------------------------------------------------------------- in a real Chromium

@pytest.fixture(scope="module")
def bus_server(tmp_path_factory):
    from lucent_bus import embedded

    server = embedded.single(tmp_path_factory.mktemp("bus") / "js").start().wait()
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


def _bus_thread(coro_fn):
    # Playwright's sync API owns this thread's event loop: use another thread.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro_fn()).result(60)


@pytest.mark.browser
def test_selecting_rows_counts_live_and_replays_exactly_those(console, bus_server):
    chromium_or_skip()
    from playwright.sync_api import sync_playwright

    url = bus_server.url

    async def fail_three():
        nc = await connect("t", BusConfig.from_env({"NATS_URL": url}), retry_initial=False)
        await js.add_stream(nc, {"name": "TRIAGE", "subjects": ["triage.>"], "storage": "file",
                                 "duplicate_window": 60_000_000_000})
        await js.add_consumer(nc, "TRIAGE", {"durable_name": "picky", "ack_policy": "explicit",
                                            "max_deliver": 2, "ack_wait": 30_000_000_000})
        for n in (1, 2, 3):
            await nc.jetstream().publish(f"triage.job.{n}", json.dumps(
                {"messageId": f"t-{n}", "messageType": "Triage"}).encode())
        # Until the console's capture has stored an advisory for each of the three.
        await fail(nc, set(), expect=3, stream="TRIAGE", consumer="picky")
        await nc.close()

    async def triage_subjects():
        nc = await connect("t", BusConfig.from_env({"NATS_URL": url}), retry_initial=False)
        try:
            last = (await js.stream_info(nc, "TRIAGE"))["state"]["last_seq"]
            return [(await js.next_message(nc, "TRIAGE", s))["subject"] for s in range(1, last + 1)]
        finally:
            await nc.close()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            errors = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            login(page, console.url)
            _bus_thread(fail_three)
            page.goto(console.url + "/deadletters/")
            deadline = time.monotonic() + 30
            while page.locator("#dl-body input.dl-pick").count() < 3 and time.monotonic() < deadline:
                page.wait_for_timeout(300)  # rows arrive live
            assert page.locator("#dl-body input.dl-pick").count() == 3
            assert page.locator("#dl-selected-count").inner_text() == "0"
            rows = page.locator("#dl-body tr")
            chosen = []
            for i in (0, 2):
                rows.nth(i).locator("input.dl-pick").check()
                chosen.append(rows.nth(i).locator("code").first.inner_text())
            assert page.locator("#dl-selected-count").inner_text() == "2"
            page.click("#dl-bulk-selected button[value=replay]")
            page.wait_for_selector("#dl-dryrun")
            assert "Replay 2 selected dead letters?" in page.locator("#dl-dryrun").inner_text()
            page.click("#dl-start")
            page.wait_for_selector("#bulk-result .job-done", timeout=30000)
            # The job's end refreshes the counts and clears the selection.
            page.wait_for_function(
                "document.getElementById('dl-selected-count').textContent === '0'", timeout=10000)
            assert page.locator("#dl-body tr.dl-replayed").count() == 2
            replayed = _bus_thread(triage_subjects)[3:]
            assert sorted(replayed) == sorted(chosen)
            assert not [e for e in errors if "Content Security Policy" in e]
        finally:
            browser.close()
