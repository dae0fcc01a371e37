"""Schema-driven fuzzing of the JSON API (issue 12): schemathesis against a live console
on its own bus and database, as admin, a fixed number of examples per operation, a fixed
seed and a time budget. No answer may be a 5xx, and every declared answer must match the
schema (/api/schema/). Select it alone with ``pytest -k fuzz``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, User
from rest_framework.authtoken.models import Token

from .conftest import run
from .test_deadletter_pages import _letters

# The "fuzz" suite has its time budget in conftest.py; select it with `-k fuzz`.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.suite("fuzz")]

EXAMPLES = 20  # per operation
SEED = 12  # the same cases every run: a failure reproduces
# schemathesis stops generating after this long (it fuzzes on until then: the run takes it all)
BUDGET_S = int(os.getenv("LUCENT_FUZZ_BUDGET_S", "120"))
CHECKS = "not_a_server_error,response_schema_conformance"


@pytest.fixture
def console(live_server, collector):
    """The live console (its own thread, the test database) with a bus of its own that a
    collector sweeps, holding two dead letters; an admin's token."""
    run(_letters(collector.url))
    collector.wait_for(lambda s: "DEAD_LETTERS" in s["streams"])
    admin = User.objects.create_user("fuzz-admin", password="pw-fuzz")
    admin.groups.add(Group.objects.get_or_create(name="admin")[0])
    return live_server.url, Token.objects.create(user=admin).key


def test_no_request_the_schema_allows_or_refuses_makes_the_console_fail(console, tmp_path):
    url, token = console
    binary = Path(sys.executable).with_name("schemathesis")
    command = [str(binary), "run", f"{url}/api/schema/", "--header", f"Authorization: Token {token}",
               "--max-examples", str(EXAMPLES), "--seed", str(SEED), "--max-time", str(BUDGET_S),
               "--checks", CHECKS, "--phases", "examples,coverage,fuzzing", "--workers", "1",
               "--request-timeout", "40", "--no-shrink", "--suppress-health-check", "all",
               "--continue-on-failure", "--report", "junit",
               "--report-junit-path", str(tmp_path / "fuzz.xml")]
    env = {**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": ""}
    done = subprocess.run(command, capture_output=True, text=True, timeout=BUDGET_S + 60,
                          cwd=tmp_path, env=env)
    output = done.stdout + done.stderr
    print(output[-6000:])  # shown with -s, or in the report when it fails
    assert done.returncode == 0, output[-12000:]
    assert "No issues found" in output or "passed" in output.lower(), output[-4000:]
