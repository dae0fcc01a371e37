"""Bus connection: credentials from the environment, secrets kept out, reconnects."""

import asyncio
import logging

import pytest
from django.core.exceptions import ImproperlyConfigured
from nats import errors as nats_errors

from lucent_bus import embedded
from lucent_bus.client import connect
from lucent_bus.config import BusConfig
from lucent_console.status import bus_status


def _server(tmp_path, *extra, port=None):
    port = port or embedded.free_port()
    s = embedded.Server(port, tmp_path / "js", embedded.server_args(port, tmp_path / "js", extra=list(extra)),
                        tmp_path / "nats.log")
    return s.start().wait()


async def test_it_connects_with_user_and_password_and_never_logs_them(tmp_path, caplog):
    server = _server(tmp_path, "--user", "lucent", "--pass", "s3cret-pw")
    try:
        env = {"NATS_URL": server.url, "NATS_USER": "lucent", "NATS_PASSWORD": "s3cret-pw"}
        config = BusConfig.from_env(env)
        assert "s3cret-pw" not in repr(config)
        assert config.describe() == {"servers": [server.url], "auth": "user/password", "tls": False}
        nc = await connect("t", config, retry_initial=False)
        assert nc.is_connected
        await nc.close()
        caplog.set_level(logging.DEBUG)
        with pytest.raises(nats_errors.Error):
            await connect("t", BusConfig.from_env({**env, "NATS_PASSWORD": "wrong-pw"}),
                          retry_initial=False)
        url_with_secret = server.url.replace("nats://", "nats://lucent:s3cret-pw@")
        assert BusConfig.from_env({"NATS_URL": url_with_secret}).redacted_servers == [
            server.url.replace("nats://", "nats://***@")]
        assert "s3cret-pw" not in caplog.text and "wrong-pw" not in caplog.text
    finally:
        server.stop()


async def test_it_connects_with_a_token(tmp_path):
    server = _server(tmp_path, "--auth", "tok-123456")
    try:
        config = BusConfig.from_env({"NATS_URL": server.url, "NATS_TOKEN": "tok-123456"})
        assert config.describe()["auth"] == "token"
        nc = await connect("t", config, retry_initial=False)
        assert nc.is_connected
        await nc.close()
    finally:
        server.stop()


@pytest.mark.parametrize("env,message", [
    ({}, "NATS_URL is not set"),
    ({"NATS_URL": "http://x:4222"}, "unsupported scheme"),
    ({"NATS_URL": "nats://x:4222", "NATS_USER": "u"}, "go together"),
    ({"NATS_URL": "nats://x:4222", "NATS_CREDS": "/nonexistent.creds"}, "no such file"),
])
def test_it_refuses_bad_configuration_clearly(env, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        BusConfig.from_env(env)


async def test_status_survives_an_outage_and_recovers(tmp_path, monkeypatch):
    port = embedded.free_port()
    server = _server(tmp_path, port=port)
    monkeypatch.setenv("NATS_URL", server.url)
    assert (await bus_status())["ok"] is True
    server.stop()
    started = asyncio.get_running_loop().time()
    down = await bus_status(timeout=1)
    assert down["ok"] is False and "bus unreachable" in down["error"]
    assert asyncio.get_running_loop().time() - started < 5  # no hang while the bus is away
    server = _server(tmp_path, port=port)
    try:
        for _ in range(60):
            if (await bus_status(timeout=1))["ok"]:
                break
            await asyncio.sleep(0.25)
        assert (await bus_status())["ok"] is True
    finally:
        server.stop()


@pytest.mark.parametrize("raw", [
    b"Nats-Msg-Id: a\r\nX-Correlation-ID: c-1\r\n\r\n",
    b"Name:Value\r\nTabbed:\tv\r\n bad name: x\r\nno colon\r\n\r\n",
    b"Lucent-DL-Reason: max \xc3\xa9 deliveries\r\nBroken: \xff\xfe\r\n\xc3\xa9t\xc3\xa9: skipped\r\n",
    b"in\x1cside: x\r\n: empty name\r\nA: 1\r\nA: 2\r\n", b"",
])
def test_our_header_parser_answers_as_nats_py(raw):
    from nats.aio.client import Client

    from lucent_bus.client import LucentClient

    assert LucentClient._parse_header_lines(raw) == Client._parse_header_lines(raw)
