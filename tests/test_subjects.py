import pytest

from lucent_bus import subjects


@pytest.mark.parametrize("pattern,subject,expected", [
    ("lucent.commands.*", "lucent.commands.trading", True),
    ("lucent.commands.*", "lucent.commands.trading.execute", False),
    ("lucent.commands.>", "lucent.commands.trading.execute", True),
    ("lucent.commands.>", "lucent.commands", False),
    ("lucent.*.health", "lucent.services.health", True),
    ("a.b", "a.b.c", False),
])
def test_it_matches_like_nats(pattern, subject, expected):
    assert subjects.matches(pattern, subject) is expected


def test_it_finds_overlapping_filters():
    assert subjects.overlap("lucent.agents.>", "lucent.agents.yield.*")
    assert subjects.overlap("lucent.*.yield", "lucent.agents.*")
    assert not subjects.overlap("lucent.agents.yield.>", "lucent.agents.risk.>")
    assert not subjects.overlap("a.*", "a.b.c")


def test_it_validates_subjects():
    assert subjects.is_valid("lucent.commands.>")
    assert not subjects.is_valid("lucent..commands")
    assert not subjects.is_valid("lucent.>.x")
    assert not subjects.is_valid("lucent.com*")
    assert not subjects.is_valid("lucent.*", wildcards=False)
    assert not subjects.is_valid("")
