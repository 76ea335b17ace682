"""Client frame parsing: any text yields a frame or a CommandError with a protocol code."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.errors import CommandError
from rooms.protocol import parse_after, parse_client_frame

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
)
CODES = {"bad_request", "too_large"}


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_parses_or_is_refused_with_a_code(text: str) -> None:
    try:
        frame = parse_client_frame(text)
    except CommandError as exc:
        assert exc.code in CODES and exc.detail
    else:
        assert frame.type in ("send", "edit", "delete", "typing")


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["type", "body", "id", "client_id", "x"]), json_values))
def test_any_json_object_parses_or_is_refused_with_a_code(data: dict[str, object]) -> None:
    try:
        frame = parse_client_frame(json.dumps(data))
    except CommandError as exc:
        assert exc.code in CODES
    else:
        assert frame.type == data["type"]
        if frame.type in ("send", "edit"):
            assert isinstance(data.get("body", ""), str)


@given(st.text(min_size=1, max_size=50), st.text(min_size=1, max_size=40))
def test_valid_send_round_trips(body: str, client_id: str) -> None:
    frame = parse_client_frame(json.dumps({"type": "send", "body": body, "client_id": client_id}))
    assert (frame.body, frame.client_id) == (body, client_id)


@pytest.mark.parametrize(("raw", "expected"), [(None, None), ("", None), ("0", 0), ("42", 42)])
def test_parse_after(raw: str | None, expected: int | None) -> None:
    assert parse_after(raw) == expected


@pytest.mark.parametrize("raw", ["-1", "x", "1.5", " 3", "1e3", "²"])
def test_parse_after_refuses(raw: str) -> None:
    with pytest.raises(CommandError):
        parse_after(raw)


@given(st.text(max_size=20))
def test_parse_after_any_text(raw: str) -> None:
    try:
        value = parse_after(raw)
    except CommandError as exc:
        assert exc.code == "bad_request"
    else:
        assert value is None or value >= 0
