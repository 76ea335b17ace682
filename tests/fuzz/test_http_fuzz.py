"""Fuzzing the HTTP API of a live ``runnode`` (CONTRACT.md "HTTP", issue 8 item 4).

Properties: never a 5xx; ``/api/rooms/SLUG/events`` answers 200 with exactly the events the
parameters name (``after``, ``before``, ``limit``), or 400 ``bad_request`` as JSON
``{"error", "code", "detail"}`` for a malformed or out-of-range parameter, or 404 for anything
that is not the room's slug; the probes and the room list answer 200 whatever the query.
"""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatsite.servers import DEFAULT_SERVER
from tests.support.nodes import Node

from .conftest import ROOM, Wire, assert_clean_log, raw_get

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

EVENTS = 30  # messages in the room, seqs 1..EVENTS
MAX_SEQ = 2**53
PAGE_MAX = 1000
FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def node(fuzz_node: Node) -> Iterator[Node]:
    """The fuzz node with a room of ``EVENTS`` messages."""
    writer = Wire.open(fuzz_node, "writer")
    try:
        for i in range(EVENTS):
            writer.ws.send(json.dumps({"type": "send", "body": f"m{i}", "client_id": f"c{i}"}))
            answer = writer.answer(timeout=10)
            assert answer["type"] == "ack" and answer["seq"] == i + 1, answer
    finally:
        writer.close()
    yield fuzz_node
    assert_clean_log(fuzz_node)


# -- the oracle ----------------------------------------------------------------------------------


def seq_param(raw: str | None) -> int | None:
    """What the contract accepts: ASCII digits naming 0..2**53 (leading zeros allowed)."""
    if raw is None or not (raw.isascii() and raw.isdigit()):
        return None
    significant = raw.lstrip("0")
    if len(significant) > len(str(MAX_SEQ)):
        return None
    value = int(significant or "0")
    return value if value <= MAX_SEQ else None


def expected_page(query: str) -> list[int] | None:
    """The seqs the events API must answer for ``query``, or None for a 400."""
    params = dict(parse_qsl(query, keep_blank_values=True, encoding="utf-8", errors="replace"))
    after = seq_param(params.get("after", "0"))
    limit = seq_param(params.get("limit", str(PAGE_MAX)))
    before = seq_param(params["before"]) if "before" in params else -1
    if after is None or limit is None or limit < 1 or before is None:
        return None
    limit = min(limit, PAGE_MAX)
    if before == -1:
        return list(range(after + 1, min(EVENTS, after + limit) + 1))
    before = min(before, EVENTS + 1)  # below a seq past the end: the newest events
    low = max(after, before - 1 - limit)
    return [seq for seq in range(low + 1, min(EVENTS, low + limit) + 1) if seq < before]


def get_json(node: Node, path: str) -> tuple[int, Any]:
    status, body, content_type = raw_get(node, path)
    assert status < 500, (path[:300], status, body[:500])
    parsed = json.loads(body) if content_type.startswith("application/json") else None
    return status, parsed


def assert_bad_request(status: int, body: Any, what: str) -> None:
    assert status == 400, (what, status, body)
    assert body["error"] == body["code"] == "bad_request", (what, body)
    assert isinstance(body["detail"], str) and body["detail"], (what, body)


# -- parameter values ----------------------------------------------------------------------------

ODD_VALUES = [
    "", "-0", "-1", "+1", " 1", "1 ", "1_000", "0x10", "1e3", "1.0", "1,2", "²", "١٢", "１２",
    "99999999999999999999", str(MAX_SEQ), str(MAX_SEQ + 1), "0" * 30 + "1", "9" * 5000,
    "0" * 5000, "NaN", "inf", "null", "true", "[]", "\x00", "1\x00", "\ud7ff", "🙂", "%",
]  # fmt: skip
RAW_VALUES = ["%", "%Z", "%ZZ", "%FF", "%C0%AF", "%00", "%ED%A0%80", "1%00", "%31", "%2B1", "+"]

values = (
    st.integers(min_value=-(2**70), max_value=2**70).map(lambda n: quote(str(n), safe=""))
    | st.integers(min_value=0, max_value=EVENTS + 5).map(str)
    | st.sampled_from(ODD_VALUES).map(lambda v: quote(v, safe=""))
    | st.text(max_size=30).map(lambda v: quote(v, safe=""))
    | st.sampled_from(RAW_VALUES)
)
keys = st.sampled_from(["after", "limit", "before", "after", "limit", "x", "AFTER", "after[]"])
# Twisted drops a request line over 16 KiB without an answer (see the test at the end).
queries = (
    st.lists(st.tuples(keys, values), max_size=4)
    .map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs))
    .filter(lambda query: len(query) < 15_000)
)


@FUZZ
@given(query=queries)
def test_events_parameters_are_served_exactly_or_refused_with_400(node: Node, query: str) -> None:
    status, body = get_json(node, f"/api/rooms/{ROOM}/events?{query}")
    seqs = expected_page(query)
    if seqs is None:
        assert_bad_request(status, body, query)
        return
    assert status == 200, (query, status, body)
    assert body["room"] == ROOM and body["last_seq"] == EVENTS, body
    assert [event["seq"] for event in body["events"]] == seqs, query
    for event in body["events"]:
        assert event["type"] == "message" and event["id"] == f"m{event['seq']}", event


# -- slugs ----------------------------------------------------------------------------------------

ODD_SLUGS = [
    "", ".", "..", "LOBBY", "Lobby", "lobby ", " lobby", "lobby\x00", "lobby/", "lob%by", "ŀobby",
    "lobby\n", "ｌｏｂｂｙ", "lobby-", "-lobby", "a" * 51, "a" * 10_000, "%00", "\ud7ff", "🙂",
]  # fmt: skip
RAW_SLUGS = ["%", "%ZZ", "%FF", "%C0%AF", "%00", "lob%62y", "%6C%6F%62%62%79", "lobby%2F", "%2e%2e"]

slugs = (
    st.sampled_from(ODD_SLUGS).map(lambda s: quote(s, safe=""))
    | st.text(max_size=60).map(lambda s: quote(s, safe=""))
    | st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", max_size=60)
    | st.sampled_from(RAW_SLUGS)
)


@FUZZ
@given(slug=slugs, query=queries | st.just(""))
def test_any_slug_is_the_room_or_404(node: Node, slug: str, query: str) -> None:
    status, body = get_json(node, f"/api/rooms/{slug}/events?{query}")
    named = unquote(slug, errors="replace")
    if named == ROOM:
        # the room itself, percent-encoded: the parameters decide
        assert status == (200 if expected_page(query) is not None else 400), (slug, query, body)
        return
    assert status == 404, (slug[:200], query, status, body)
    if body is not None:  # the view's 404 (a path that does not route gets Django's page)
        assert body["error"] == body["code"] == "not_found", body


# -- the other endpoints -----------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=list(FUZZ.suppress_health_check))
@given(path=st.sampled_from(["/healthz", "/readyz", "/api/rooms/", "/api/cluster/"]), query=queries)
def test_probes_and_lists_ignore_any_query(node: Node, path: str, query: str) -> None:
    status, body = get_json(node, f"{path}?{query}")
    assert status == 200, (path, query, status, body)
    if path == "/api/rooms/":
        assert [room["slug"] for room in body["rooms"]] == [ROOM]
    elif path == "/api/cluster/":
        assert body["node"] == "fz"
    else:
        assert body["node"] == "fz"


@pytest.mark.parametrize(
    ("query", "seqs"),
    [
        ("after=99999999999999999999", None),  # a 500 before issue 8
        ("after=9007199254740993", None),
        ("limit=99999999999999999999", None),
        ("before=99999999999999999999", None),
        ("after=-0", None),
        ("after=%C2%B2", None),
        ("after=1_0", None),
        ("after=9007199254740992", []),
        ("after=0&limit=3", [1, 2, 3]),
        ("after=28&limit=5000", [29, 30]),
        ("before=11&limit=3", [8, 9, 10]),
        ("before=3&limit=10", [1, 2]),
        ("before=1", []),
        ("before=0", []),
        ("before=9007199254740992&limit=2", [29, 30]),
        ("after=5&before=9&limit=100", [6, 7, 8]),
        ("after=9&before=5", []),
    ],
)
def test_events_parameter_edges(node: Node, query: str, seqs: list[int] | None) -> None:
    assert expected_page(query) == seqs, "the oracle disagrees with the contract"
    status, body = get_json(node, f"/api/rooms/{ROOM}/events?{query}")
    if seqs is None:
        assert_bad_request(status, body, query)
    else:
        assert status == 200 and [e["seq"] for e in body["events"]] == seqs, (query, body)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
@pytest.mark.parametrize(
    "path", ["/healthz", "/readyz", "/api/rooms/", f"/api/rooms/{ROOM}/events"]
)
def test_other_methods_are_refused_not_crashed(node: Node, method: str, path: str) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
    try:
        connection.request(method, path, body=b"{]" * 10)
        status = connection.getresponse().status
    finally:
        connection.close()
    assert 400 <= status < 500, (method, path, status)


def test_a_request_line_over_16_kib_costs_only_that_connection(node: Node) -> None:
    """Twisted refuses it before Django (it closes the connection, or answers 4xx); the node
    goes on serving. uvicorn's h11 bounds only a head still incomplete (16 KiB): one that
    arrives whole in one read (asyncio reads at most 256 KiB) is served, and costs no more."""
    server = os.environ.get("RUNNODE_SERVER", DEFAULT_SERVER)
    try:
        status, _, _ = raw_get(node, "/healthz?after=" + "9" * 20_000)
    except (http.client.RemoteDisconnected, ConnectionResetError):
        pass
    else:
        if server == "daphne":
            assert 400 <= status < 500, status
        else:
            assert status == 200 or 400 <= status < 500, status
    assert get_json(node, "/healthz")[0] == 200
