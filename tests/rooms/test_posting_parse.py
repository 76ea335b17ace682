"""The request body of ``POST /api/rooms/SLUG/messages``: any bytes give a (body, client_id)
pair of encodable text or a CommandError with a code, never another exception."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.errors import CommandError
from rooms.views_api import _post_payload

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
)
objects = st.fixed_dictionaries(
    {}, optional={"body": json_values | st.text(), "client_id": json_values | st.text()}
)


def _check(raw: bytes) -> None:
    try:
        body, client_id = _post_payload(raw)
    except CommandError as exc:
        assert exc.code in ("bad_request", "too_large") and exc.detail
        return
    assert isinstance(body, str)
    body.encode("utf-8")
    assert client_id is None or (isinstance(client_id, str) and client_id)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes(raw: bytes) -> None:
    _check(raw)


@settings(max_examples=300, deadline=None)
@given(objects)
def test_any_json_object(data: dict[str, Any]) -> None:
    _check(json.dumps(data).encode())
    _check(json.dumps(data, ensure_ascii=False).encode("utf-8", "surrogatepass"))
