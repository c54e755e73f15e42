"""Error texts quote what the client sent; a huge value is cut, not sent back whole."""

from __future__ import annotations

from appliance.errors import MAX_MESSAGE_CHARS, BadRequest, InvalidModelfile


def test_a_short_message_is_kept_as_it_is():
    assert str(BadRequest("invalid think value: \"x\"")) == "invalid think value: \"x\""
    assert str(InvalidModelfile("unknown command", 3)) == "line 3: unknown command"


def test_a_huge_message_is_cut_and_says_how_long_it_was():
    text = str(BadRequest("invalid model name: '" + "a" * 100_000 + "'"))
    assert len(text) < MAX_MESSAGE_CHARS + 40
    assert text.startswith("invalid model name: 'aaa") and text.endswith("(100022 characters in all)")
