import json

from lucent_bus import envelope


def test_it_decodes_a_valid_envelope():
    env = envelope.make("ExecuteTradeCommand", "lucent.commands.trading.execute",
                        {"data": {"pair": "ETH-USDC"}}, sender={"serviceId": "trading-service-001"})
    d = envelope.decode(envelope.encode(env))
    assert d.kind == "envelope"
    assert d.problems == []
    assert d.message_id == env["messageId"]
    assert d.correlation_id == env["messageId"]  # a new flow starts its own correlation
    assert d.message_type == "ExecuteTradeCommand"
    assert d.sender_name == "trading-service-001"
    assert json.loads(d.pretty)["payload"]["data"]["pair"] == "ETH-USDC"


def test_it_reports_problems_of_a_broken_envelope():
    d = envelope.decode(b'{"messageType": "X", "timestamp": "yesterday", "sender": 5, "odd": 1}')
    assert d.kind == "envelope"
    assert "missing messageId" in d.problems
    assert "timestamp is not ISO 8601" in d.problems
    assert "sender is not an object" in d.problems
    assert any("extra fields: odd" in p for p in d.problems)
    assert d.sender is None


def test_it_decodes_json_that_is_not_an_envelope():
    d = envelope.decode(b'[1, 2, {"a": "b"}]')
    assert d.kind == "json"
    assert d.json_value == [1, 2, {"a": "b"}]
    assert d.problems == ["JSON but not an envelope"]


def test_it_decodes_text_and_invalid_json():
    assert envelope.decode(b"hello <b>world</b>").kind == "text"
    assert envelope.decode(b"hello <b>world</b>").text == "hello <b>world</b>"
    broken = envelope.decode(b'{"messageId": ')
    assert broken.kind == "text"
    assert broken.problems[0].startswith("invalid JSON")


def test_it_decodes_binary_as_hex():
    d = envelope.decode(b"\xff\x00\x10\x80")
    assert d.kind == "binary"
    assert d.hex == "ff 00 10 80"
    nul = envelope.decode(b"abc\x00def")
    assert nul.kind == "binary"


def test_it_decodes_empty_with_header_fallbacks():
    d = envelope.decode(b"", {"X-Correlation-ID": "c-1", "X-Event-Type": "Ping"})
    assert d.kind == "empty"
    assert d.correlation_id == "c-1"
    assert d.message_type == "Ping"
    assert envelope.decode(None).kind == "empty"


def test_it_handles_very_large_payloads_without_parsing():
    big = b'{"messageId": "x", "pad": "' + b"a" * (envelope.MAX_PARSE_BYTES + 10) + b'"}'
    d = envelope.decode(big)
    assert d.kind == "text"
    assert d.truncated
    assert len(d.text) == envelope.PREVIEW_BYTES
    assert d.size == len(big)


def test_it_never_raises_on_deep_nesting_or_scalars():
    assert envelope.decode(b"[" * 100000 + b"]" * 100000).kind in ("text", "json")
    assert envelope.decode(b"42").kind == "json"
    assert envelope.decode(b"null").kind == "json"
    assert envelope.decode(b'"just a string"').kind == "json"
