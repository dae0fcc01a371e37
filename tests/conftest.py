"""Shared fixtures: real nats-servers (never mocks), role users, helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, User

from lucent_console.bus import embedded
from lucent_console.bus.client import connect
from lucent_console.bus.config import BusConfig


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory):
    """One nats-server (pinned binary) for the session; NATS_URL points at it."""
    server = embedded.single(tmp_path_factory.mktemp("nats") / "js").start().wait()
    previous = os.environ.get("NATS_URL")
    os.environ["NATS_URL"] = server.url
    yield server
    server.stop()
    if previous is None:
        os.environ.pop("NATS_URL", None)
    else:
        os.environ["NATS_URL"] = previous


@pytest.fixture
def fresh_server(tmp_path):
    """A nats-server of the test's own, with an empty JetStream store."""
    server = embedded.single(Path(tmp_path) / "js").start().wait()
    yield server
    server.stop()


@pytest.fixture
async def fresh_nc(fresh_server):
    nc = await connect("test", BusConfig.from_env({"NATS_URL": fresh_server.url}),
                       retry_initial=False)
    yield nc
    await nc.close()


@pytest.fixture
def users(db):
    """Standing users, one per role, plus one with no role at all."""
    out = {}
    for role in ("viewer", "operator", "admin"):
        user = User.objects.create_user(role, password="pw-" + role)
        user.groups.add(Group.objects.get(name=role))
        out[role] = user
    out["nobody"] = User.objects.create_user("nobody", password="pw-nobody")
    return out


@pytest.fixture
def viewer_client(client, users):
    client.force_login(users["viewer"])
    return client
