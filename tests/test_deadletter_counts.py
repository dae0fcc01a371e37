"""Dead-letter counts (issue 14, item 5): wildcard subjects are index lookups that find
exactly the rows the regular expression found before; counts stop at a cap and the page
says so. Database only (the filters never touch the bus); runs on whichever database
DATABASE_URL names (SQLite by default, PostgreSQL too)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from deadletters import search
from deadletters.models import DeadLetter

pytestmark = pytest.mark.django_db

SUBJECTS = [
    "orders.eu.x", "orders.us.x", "orders.eu.y", "orders.eu.x.more", "orders.x", "orders",
    "orders.", "orders..x", "ordersx.eu.x", "orders/eu.x", "orders-eu.x", "order.eu.x",
    "ördérs.eu.x", "ördérs.us.x", "lucent.agents.yield.run", "lucent.agents.risk.run",
    "lucent.agentsx.risk.run", "a", "a.b", "a.b.c", "", "Orders.eu.x", "orders.EU.x",
]
PATTERNS = [
    "orders.*.x", "orders.>", "orders.eu.>", "orders.*", "orders.*.*", "orders.*.>", "*.eu.x",
    "*", "*.*", ">", "*.>", "ördérs.*.x", "ördérs.>", "lucent.agents.>", "lucent.agents.*.run",
    "lucent.*.risk.>", "a.>", "a.*.c", "nothing.*.x", "nothing.>", "orders.eu.x", "Orders.>",
]


def _old_rows(pattern: str) -> set[int]:
    """What search.filtered found before (the prefix, then a regular expression per row),
    evaluated here in Python over every row: the reference."""
    if "*" not in pattern and ">" not in pattern:
        match = lambda s: s == pattern  # noqa: E731
    else:
        parts = ["[^.]+" if t == "*" else ".+" if t == ">" else re.escape(t)
                 for t in pattern.split(".")]
        regex = re.compile("^" + r"\.".join(parts) + "$")
        match = lambda s: regex.search(s) is not None  # noqa: E731
    return {pk for pk, subject, status in DeadLetter.objects.values_list("id", "subject", "status")
            if status != DeadLetter.PURGED and match(subject)}


def _store(subjects, status=DeadLetter.NEW, start=0, **fields) -> list[int]:
    at = datetime(2026, 11, 1, tzinfo=UTC)
    rows = [DeadLetter(dl_seq=start + i + 1, dl_subject="lucent.deadletter.S.c", stream="S",
                       consumer="c", reason="max_deliveries", subject=subject, status=status,
                       captured_at=at + timedelta(seconds=start + i), **fields)
            for i, subject in enumerate(subjects)]
    return [row.pk for row in DeadLetter.objects.bulk_create(rows)]


@pytest.fixture
def letters():
    _store(SUBJECTS)
    _store(SUBJECTS, status=DeadLetter.REPLAYED, start=100)
    _store(SUBJECTS, status=DeadLetter.PURGED, start=200)  # never listed, never counted


@pytest.mark.parametrize("pattern", PATTERNS)
def test_a_subject_pattern_finds_the_rows_the_regular_expression_found(letters, pattern):
    qs = search.filtered(search.clean_filters({"subject": pattern}))
    assert set(qs.values_list("id", flat=True)) == _old_rows(pattern)
    assert search.count(qs, {"subject": pattern}) == (len(_old_rows(pattern)), False)


def test_the_rows_are_those_of_nats_wildcards(letters):
    """Spot checks of what the patterns mean (NATS: * one token, > one or more)."""
    def subjects(pattern):
        return sorted(set(search.filtered({"subject": pattern}).values_list("subject", flat=True)))

    assert subjects("orders.*.x") == ["orders.EU.x", "orders.eu.x", "orders.us.x"]
    assert subjects("orders.>") == ["orders..x", "orders.EU.x", "orders.eu.x", "orders.eu.x.more",
                                    "orders.eu.y", "orders.us.x", "orders.x"]
    assert subjects("*.eu.x") == ["Orders.eu.x", "order.eu.x", "orders.eu.x", "ordersx.eu.x",
                                  "ördérs.eu.x"]
    assert subjects("ördérs.*.x") == ["ördérs.eu.x", "ördérs.us.x"]
    assert subjects("nothing.*.x") == []


@pytest.mark.parametrize("pattern", ["orders.*.x", "*.eu.x", ">", "orders.*.>", "a.*.c"])
def test_too_many_distinct_subjects_fall_back_to_the_same_rows(letters, monkeypatch, pattern):
    monkeypatch.setattr(search, "WILDCARD_SUBJECTS", 2)
    qs = search.filtered({"subject": pattern})
    assert set(qs.values_list("id", flat=True)) == _old_rows(pattern)


def test_distinct_subjects_walk_the_index_under_a_prefix(letters):
    assert search.distinct_subjects("orders.", 100) == sorted(
        {s for s in SUBJECTS if s.startswith("orders.")}, key=lambda s: s.encode())
    assert search.distinct_subjects("", 3) == sorted(set(SUBJECTS), key=lambda s: s.encode())[:3]
    assert search.distinct_subjects("nothing.", 10) == []


def test_counts_stop_at_the_cap_and_say_so(monkeypatch):
    monkeypatch.setattr(search, "COUNT_CAP", 5)
    monkeypatch.setattr(search, "TEXT_COUNT_CAP", 3)
    _store(["orders.eu.x"] * 5)
    _store(["orders.us.x"] * 4, start=10, search_text="needle here", error="")
    _store(["orders.us.x"] * 3, status=DeadLetter.PURGED, start=20)

    def counted(filters):
        return search.count(search.filtered(filters), filters)

    assert counted({"subject": "orders.eu.x"}) == (5, False)  # exactly the cap: exact
    assert counted({"subject": "orders.*.x"}) == (5, True)    # 9 match: "5+"
    assert counted({"subject": "orders.us.x"}) == (4, False)  # the purged ones are not counted
    assert counted({"subject": "orders.us.x", "status": "purged"}) == (3, False)
    assert counted({"q": "needle"}) == (3, True)              # free text stops sooner
    assert counted({"q": "needle", "subject": "orders.us.x"}) == (3, True)
    assert counted({"q": "nowhere"}) == (0, False)
    paginator = search.CappedPaginator(search.filtered({}), 2, {})
    assert (paginator.count, paginator.capped, paginator.shown, paginator.num_pages) == \
        (5, True, "5+", 3)


def test_the_page_says_when_its_count_stopped(viewer_client, monkeypatch):
    monkeypatch.setattr(search, "COUNT_CAP", 5)
    _store([f"orders.eu.{n}" for n in range(7)])
    page = viewer_client.get("/deadletters/").content.decode()
    assert 'id="dl-count" title="more match: the count stops here">5+</small>' in page
    assert '<p class="muted" id="dl-capped">5+ match: the count stops there' in page
    page = viewer_client.get("/deadletters/", {"subject": "orders.eu.1"}).content.decode()
    assert 'id="dl-count">1</small>' in page and "dl-capped" not in page


def test_the_api_says_when_its_count_stopped_and_pages_on_past_it(viewer_client, monkeypatch):
    monkeypatch.setattr(search, "COUNT_CAP", 5)
    _store([f"orders.eu.{n}" for n in range(7)])
    first = viewer_client.get("/api/v1/deadletters/", {"limit": 5}).json()
    assert (first["count"], first["count_capped"], len(first["results"])) == (5, True, 5)
    assert "offset=5" in first["next"]  # the count stopped; the letters did not
    rest = viewer_client.get(first["next"]).json()
    assert len(rest["results"]) == 2 and rest["next"] is None
    seen = {r["id"] for r in first["results"]} | {r["id"] for r in rest["results"]}
    assert len(seen) == 7
    exact = viewer_client.get("/api/v1/deadletters/", {"subject": "orders.eu.1"}).json()
    assert (exact["count"], exact["count_capped"]) == (1, False)


@pytest.mark.django_db(transaction=True)
def test_the_migration_replaces_the_single_column_indexes_and_keeps_every_row():
    executor = MigrationExecutor(connection)
    before = [("deadletters", "0002_replay_edit")]
    executor.migrate(before)
    Old = executor.loader.project_state(before).apps.get_model("deadletters", "DeadLetter")
    Old.objects.create(dl_seq=1, dl_subject="lucent.deadletter.S.c", stream="S", subject="a.b.c",
                       consumer="c", reason="explicit", captured_at="2026-11-01T00:00:00Z")
    columns = lambda: {tuple(c["columns"]) for c in connection.introspection.get_constraints(  # noqa: E731
        connection.cursor(), DeadLetter._meta.db_table).values() if c["index"]}
    assert ("subject",) in columns()
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())
    after = columns()
    for field in ("stream", "subject", "consumer", "reason", "correlation_id", "message_type"):
        assert (field,) not in after
    assert ("subject", "captured_at", "dl_seq", "status") in after
    assert ("stream", "consumer", "captured_at", "dl_seq", "status") in after
    assert list(search.filtered({"subject": "a.*.c"}).values_list("subject", flat=True)) == ["a.b.c"]
