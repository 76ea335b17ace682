"""Fuzzing the room socket of a live ``runnode`` (CONTRACT.md guarantee 6, issue 8 hole 1).

Every frame generated here is bad by construction. Properties, checked after each one:

- it is answered by an ``error`` frame whose code is one of the contract's, and the one that
  kind of frame deserves; the socket stays open (invalid UTF-8 may close it with 1007, which
  RFC 6455 requires);
- nothing is stored: the events API's ``last_seq`` only moves with a well-behaved client's acks;
- the node lives (``/healthz`` 200) and the room's server never restarted (its lease epoch is
  the one it had before the fuzzing: a crash would bump it);
- a well-behaved client in the same room keeps getting its acks, in seq order.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from cluster.embedded import EmbeddedRedis
from cluster.events import seq_of_message_id
from rooms import services
from tests.support.nodes import Cluster, Node

from .conftest import (
    CONTRACT_CODES,
    ROOM,
    Wire,
    assert_clean_log,
    last_seq,
    online,
    raw_get,
    room_epoch,
    wait_until,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

MAX_BODY = 4000
MAX_FRAME_CHARS = 16_000
MAX_CLIENT_ID = 100
GOOD_EVERY = 8  # the well-behaved client sends one message every this many bad frames
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# -- message ids that are not one -----------------------------------------------------------

LOOKALIKE_IDS = [
    "m²", "m¹²", "m١٢", "m٣", "ｍ１", "m１２", "m߀", "m𝟙", "m০", "m\u0e51", "M1", "m0", "m01",
    "m-1", "m+1", " m1", "m1 ", "m1\n", "m1.0", "m1e3", "m 1", "m1_0", "m\u200b1", "m1\x00",
    "m" + "5" * 5000, "m99999999999999999999", "m18446744073709551616", "m" + "9" * 19,
    "m999999999999999999", "m", "1", "message1", "m0x1", "m１", "\x00",
]  # fmt: skip

unicode_digit_ids = st.text(st.characters(categories=["Nd"]), min_size=1, max_size=30).map(
    lambda digits: "m" + digits
)
ids = st.sampled_from(LOOKALIKE_IDS) | unicode_digit_ids | st.text(max_size=40)


def id_answer(message_id: str, room_last_seq: int) -> str:
    """Only the good client writes, so every real message id is someone else's."""
    seq = seq_of_message_id(message_id)
    return "forbidden" if seq is not None and seq <= room_last_seq else "not_found"


# -- bad frames --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    """A frame that must be refused, and the codes it may be refused with (``None``: decided
    by the room at the time, see ``id_answer``)."""

    kind: str
    frame: str | bytes
    codes: frozenset[str] | None = None
    message_id: str = ""
    client_id: str | None = None


def bad(kind: str, frame: str | bytes, *codes: str, **extra: Any) -> Bad:
    return Bad(kind, frame, frozenset(codes) if codes else None, **extra)


def dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False)


def is_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
not_a_string = json_values.filter(lambda v: not isinstance(v, str))
client_ids = st.text(min_size=1, max_size=MAX_CLIENT_ID)
bodies = st.text(min_size=1, max_size=200).filter(lambda b: b.strip() != "")
LONE_SURROGATES = ["\\ud800", "\\udfff", "\\udbff", "a\\ud83d", "\\ude00b"]


@st.composite
def bad_frames(draw: st.DrawFn) -> Bad:
    kind = draw(
        st.sampled_from(
            [
                "not_json", "binary", "not_object", "unknown_type", "wrong_client_id",
                "wrong_body", "wrong_id", "lookalike_id", "body_too_long", "frame_too_long",
                "client_id_too_long", "blank_body", "lone_surrogate", "huge_number",
                "deep_nesting", "nul_and_bad",
            ]
        )
    )  # fmt: skip
    if kind == "not_json":
        text = draw(st.text(max_size=300).filter(lambda t: not is_json(t)))
        return bad(kind, text, "bad_request")
    if kind == "binary":
        return bad(kind, draw(st.binary(max_size=300)), "bad_request")
    if kind == "not_object":
        value = draw(json_values.filter(lambda v: not isinstance(v, dict)))
        return bad(kind, dumps(value), "bad_request")
    if kind == "unknown_type":
        fields = st.sampled_from(["body", "id", "client_id", "x"])
        frame = draw(st.dictionaries(fields, json_values))
        frame["type"] = draw(
            json_values.filter(lambda v: v not in ("send", "edit", "delete", "typing"))
            | st.sampled_from(["Send", "SEND", "send ", "ſend", "typing\x00", "ack", "_close"])
        )
        return bad(kind, dumps(frame), "bad_request")
    command = draw(st.sampled_from(["send", "edit", "delete"]))
    frame = {"type": command, "client_id": draw(client_ids)}
    if command != "delete":
        frame["body"] = draw(bodies)
    if command != "send":
        frame["id"] = draw(ids)
    if kind == "wrong_client_id":
        frame["type"] = draw(st.sampled_from(["send", "edit", "delete", "typing"]))
        frame["client_id"] = draw(not_a_string.filter(lambda v: v is not None) | st.just(""))
        return bad(kind, dumps(frame), "bad_request")
    if kind == "wrong_body":
        frame["type"] = draw(st.sampled_from(["send", "edit"]))
        frame["id"] = "m1"
        frame["body"] = draw(not_a_string)
        return bad(kind, dumps(frame), "bad_request")
    if kind == "wrong_id":
        frame["type"] = draw(st.sampled_from(["edit", "delete"]))
        frame["body"] = "fine"
        frame["id"] = draw(not_a_string | st.just(""))
        return bad(kind, dumps(frame), "bad_request")
    if kind == "lookalike_id":
        frame["type"] = draw(st.sampled_from(["edit", "delete"]))
        frame["body"] = draw(bodies)
        frame["id"] = draw(ids.filter(bool))
        return bad(kind, dumps(frame), message_id=frame["id"], client_id=frame["client_id"])
    if kind == "body_too_long":
        frame["type"] = "send"
        frame["body"] = "x" * draw(st.integers(MAX_BODY + 1, 3 * MAX_BODY))
        return bad(kind, dumps(frame), "too_large", client_id=frame["client_id"])
    if kind == "frame_too_long":
        frame["body"] = "y" * draw(st.integers(MAX_FRAME_CHARS, MAX_FRAME_CHARS + 20_000))
        return bad(kind, dumps(frame), "too_large")
    if kind == "client_id_too_long":
        frame["client_id"] = "c" * draw(st.integers(MAX_CLIENT_ID + 1, 5000))
        frame.setdefault("body", "fine")
        # the body fits, the id does not: refused before any lookup of ``id``
        return bad(kind, dumps(frame), "bad_request", "too_large")
    if kind == "blank_body":
        frame["type"] = draw(st.sampled_from(["send", "edit"]))
        frame["body"] = draw(st.sampled_from(["", " ", "\n\t", "\u3000", "\u2028", "  \r\n "]))
        frame["id"] = "m1"  # an edit needs one: only the body is wrong
        return bad(kind, dumps(frame), "bad_request", client_id=frame["client_id"])
    if kind == "lone_surrogate":
        field_name = draw(st.sampled_from(["body", "client_id", "id"]))
        frame["type"] = {"body": "send", "client_id": "send", "id": "delete"}[field_name]
        frame.setdefault("body", "fine")
        frame.setdefault("id", "m1")
        frame[field_name] = "@@SURROGATE@@"
        text = dumps(frame).replace("@@SURROGATE@@", draw(st.sampled_from(LONE_SURROGATES)))
        return bad(kind, text, "bad_request")
    if kind == "huge_number":
        digits = draw(st.integers(4301, 6000))
        target = draw(st.sampled_from(["body", "client_id", "id", "extra"]))
        text = dumps({**frame, target: "@@N@@"}).replace('"@@N@@"', "9" * digits)
        return bad(kind, text, "bad_request")
    if kind == "deep_nesting":
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        depth = draw(st.integers(1_000, MAX_FRAME_CHARS // (len(opener) + 1) - 100))
        nested = opener * depth + "1" + closer * depth
        where = draw(st.sampled_from(["whole", "body", "client_id"]))
        text = nested if where == "whole" else dumps({**frame, where: "@@"}).replace('"@@"', nested)
        return bad(kind, text, "bad_request", "too_large")
    assert kind == "nul_and_bad"
    # NUL is ordinary text (JSON escapes it), so it rides on a frame that is bad for another
    # reason: an id that names no message.
    frame["type"] = "delete"
    frame["client_id"] = "nul\x00" + frame["client_id"][:50]
    frame["id"] = draw(st.sampled_from(["m1\x00", "\x00m1", "m\x00", "m99\x0099"]))
    return bad(kind, dumps(frame), "not_found", client_id=frame["client_id"])


# -- the run -------------------------------------------------------------------------------------


@dataclass
class Run:
    """What the properties need across examples: the sockets, and the room as it should be."""

    node: Node
    fuzzer: Wire
    good: Wire
    epoch: str | None
    room_last_seq: int
    examples: int = 0
    good_seqs: list[int] = field(default_factory=list)

    def good_send(self, body: str = "still here") -> dict[str, Any]:
        client_id = uuid.uuid4().hex
        self.good.ws.send(json.dumps({"type": "send", "body": body, "client_id": client_id}))
        answer = self.good.answer(timeout=5)
        assert answer == {**answer, "type": "ack", "client_id": client_id}, answer
        assert answer["seq"] == self.room_last_seq + 1, (answer, self.room_last_seq)
        self.room_last_seq = answer["seq"]
        self.good_seqs.append(answer["seq"])
        return answer

    def reopen_fuzzer_if_closed(self) -> None:
        if not self.fuzzer.alive(2):
            self.fuzzer = Wire.open(self.node, f"fuzzer{uuid.uuid4().hex[:6]}")


@pytest.fixture(scope="module")
def run(fuzz_node: Node) -> Iterator[Run]:
    good = Wire.open(fuzz_node, "good")
    fuzzer = Wire.open(fuzz_node, "fuzzer")
    state = Run(fuzz_node, fuzzer, good, epoch=None, room_last_seq=last_seq(fuzz_node))
    state.good_send("the first message: ids of it are someone else's for the fuzzer")
    state.epoch = room_epoch(fuzz_node)
    assert state.epoch is not None
    try:
        yield state
    finally:
        for wire in (state.fuzzer, state.good):
            wire.close()
    # after every test of the module: the room's server was never restarted, nothing failed
    assert room_epoch(fuzz_node) == state.epoch, "the room's server restarted (crashed)"
    assert_clean_log(fuzz_node)


def expect_refused(run: Run, case: Bad) -> dict[str, Any]:
    if isinstance(case.frame, bytes):
        run.fuzzer.ws.send(case.frame)
    else:
        run.fuzzer.ws.send(case.frame, text=True)
    answer = run.fuzzer.answer(timeout=5)
    shown = case.frame[:200]
    assert answer["type"] == "error", (case.kind, shown, answer)
    codes = case.codes or {id_answer(case.message_id, run.room_last_seq)}
    assert answer["code"] in CONTRACT_CODES, (case.kind, shown, answer)
    assert answer["code"] in codes, (case.kind, shown, answer, codes)
    assert isinstance(answer["detail"], str) and answer["detail"]
    if case.client_id is not None:
        assert answer.get("client_id") == case.client_id, (case.kind, answer)
    return answer


@FUZZ
@given(case=bad_frames())
def test_every_bad_frame_gets_its_error_and_changes_nothing(run: Run, case: Bad) -> None:
    run.reopen_fuzzer_if_closed()
    expect_refused(run, case)
    assert run.fuzzer.alive(), f"socket closed after a {case.kind} frame"
    assert last_seq(run.node) == run.room_last_seq, f"a {case.kind} frame was stored"
    assert raw_get(run.node, "/healthz")[0] == 200
    run.examples += 1
    if run.examples % GOOD_EVERY == 0:
        run.good_send()


# -- the holes, one by one (each fails on the main before issue 8) -------------------------------


HOLES = [  # (why, type, id, code): an edit carries a body, every frame a client_id
    ("unicode superscript digit", "delete", "m²", "not_found"),
    ("arabic-indic digits", "edit", "m١٢", "not_found"),
    ("fullwidth digits", "delete", "m１２", "not_found"),
    ("5,000 digits", "delete", "m" + "7" * 5000, "not_found"),
    ("beyond a stream id", "delete", "m99999999999999999999", "not_found"),
    ("leading zero", "delete", "m01", "not_found"),
    ("someone else's message", "edit", "m1", "forbidden"),
    ("someone else's delete", "delete", "m1", "forbidden"),
]

RAW_HOLES = [
    ("lone surrogate body", '{"type":"send","body":"\\ud800","client_id":"s1"}', "bad_request"),
    ("lone surrogate client_id", '{"type":"send","body":"o","client_id":"\\udfff"}', "bad_request"),
    ("lone surrogate id", '{"type":"delete","id":"m\\ud800","client_id":"s3"}', "bad_request"),
    ("unknown type with a surrogate", '{"type":"\\ud800"}', "bad_request"),
    ("7,000 nested lists", "[" * 7000 + "]" * 7000, "bad_request"),
    ("10,000 nested lists", "[" * 10_000 + "]" * 10_000, "too_large"),
    ("a number of 5,000 digits", '{"type":"send","body":' + "1" * 5000 + "}", "bad_request"),
]


@pytest.mark.parametrize(("why", "kind", "message_id", "code"), HOLES, ids=[h[0] for h in HOLES])
def test_hole_frames_are_refused_and_the_room_lives(
    run: Run, why: str, kind: str, message_id: str, code: str
) -> None:
    run.reopen_fuzzer_if_closed()
    client_id = f"hole-{uuid.uuid4().hex[:8]}"
    frame = {"type": kind, "id": message_id, "client_id": client_id}
    if kind == "edit":
        frame["body"] = "mine now"
    epoch = room_epoch(run.node)
    answer = expect_refused(run, bad(why, dumps(frame), code, client_id=client_id))
    assert answer["code"] == code
    assert room_epoch(run.node) == epoch, f"{why}: the room's server restarted"
    run.good_send()


@pytest.mark.parametrize(("why", "frame", "code"), RAW_HOLES, ids=[h[0] for h in RAW_HOLES])
def test_raw_hole_frames_are_refused_and_the_room_lives(
    run: Run, why: str, frame: str, code: str
) -> None:
    run.reopen_fuzzer_if_closed()
    epoch = room_epoch(run.node)
    assert expect_refused(run, bad(why, frame, code))["code"] == code
    assert run.fuzzer.alive(), f"{why}: the socket was closed"
    assert room_epoch(run.node) == epoch, f"{why}: the room's server restarted"
    assert last_seq(run.node) == run.room_last_seq
    run.good_send()


def test_a_burst_of_bad_frames_is_answered_in_order(run: Run) -> None:
    """Frames sent without waiting are each answered, in order, and the next good one acked."""
    run.reopen_fuzzer_if_closed()
    client_ids = [f"burst-{i}" for i in range(60)]
    for i, client_id in enumerate(client_ids):
        frame = {"type": "delete", "id": f"m²{i}", "client_id": client_id}
        run.fuzzer.ws.send(dumps(frame))
    answers = [run.fuzzer.answer(timeout=10) for _ in client_ids]
    assert [a.get("client_id") for a in answers] == client_ids
    assert {a["code"] for a in answers} == {"not_found"}
    run.good_send()
    assert last_seq(run.node) == run.room_last_seq


def test_nul_is_text_and_round_trips(run: Run) -> None:
    """NUL is not bad input: JSON escapes it; the event API and the socket give it back."""
    answer = run.good_send("before\x00after")
    status, body, _ = raw_get(run.node, f"/api/rooms/lobby/events?after={answer['seq'] - 1}")
    assert status == 200
    assert json.loads(body)["events"][0]["body"] == "before\x00after"


# -- invalid UTF-8 in a text frame: the one bad frame the WebSocket layer answers itself --------

INVALID_UTF8 = [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xf8\x88\x80\x80", b"\x80"]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prefix=st.sampled_from([b"", b'{"type":"send","body":"', b"hello "]),
    junk=st.sampled_from(INVALID_UTF8),
    suffix=st.sampled_from([b"", b'","client_id":"u8"}', b"\xff\xfe"]),
)
def test_invalid_utf8_text_frame_closes_only_that_socket(
    run: Run, prefix: bytes, junk: bytes, suffix: bytes
) -> None:
    """RFC 6455 (8.1): a text frame that is not UTF-8 fails the connection (autobahn drops it:
    1006, or sends 1007 first). Either that or an ``error`` frame; never a crash, never stored,
    the socket's presence is gone, other sockets untouched."""
    wire = Wire.open(run.node, "utf8")
    try:
        wire.ws.send(prefix + junk + suffix, text=True)
        try:
            answer = wire.answer(timeout=5)
        except ConnectionClosed:
            assert wire.ws.close_code in (1006, 1007), wire.ws.close_code
        else:
            assert answer["type"] == "error" and answer["code"] == "bad_request", answer
    finally:
        wire.close()
    assert raw_get(run.node, "/healthz")[0] == 200
    wait_until(lambda: "utf8" not in online(run.node), 5, "the dropped socket's presence")
    assert last_seq(run.node) == run.room_last_seq
    run.good_send()


def test_seq_of_message_id_is_strict() -> None:
    """Unit level: ``m`` and 1 to 18 ASCII digits, no leading zero; anything else is None."""
    assert seq_of_message_id("m1") == 1
    assert seq_of_message_id("m" + "9" * 18) == 10**18 - 1
    for raw in LOOKALIKE_IDS:
        if not re.fullmatch(r"m[1-9][0-9]{0,17}", raw):
            assert seq_of_message_id(raw) is None, raw


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30) | unicode_digit_ids)
def test_seq_of_message_id_never_raises(raw: str) -> None:
    seq = seq_of_message_id(raw)
    assert seq is None or (1 <= seq < 10**18 and raw == f"m{seq}")


# -- the handshake's query: ?name= and ?after= ----------------------------------------------------

QUERY_VALUES = [
    "", "-1", "1e3", "²", "１２", "99999999999999999999", "9" * 5000, str(2**53), str(2**53 + 1),
    "0", "1", "%", "%FF", "%00", "%ED%A0%80", "+", "a\x7fb", "\x00", " ", "x" * 200,
]  # fmt: skip
query_values = st.sampled_from(QUERY_VALUES) | st.text(max_size=40)


def unquoted(value: str) -> str:
    return "".join(c for c in value if 33 <= ord(c) < 127 and c not in "#&")


def after_is_valid(raw: str | None) -> bool:
    if raw is None or raw == "":
        return True
    significant = raw.lstrip("0")
    return raw.isascii() and raw.isdigit() and len(significant) <= 16 and int(raw) <= 2**53


@settings(max_examples=60, deadline=None, suppress_health_check=list(FUZZ.suppress_health_check))
@given(name=query_values, after=st.none() | query_values, raw=st.booleans())
def test_any_handshake_query_is_greeted_or_refused_with_its_code(
    run: Run, name: str, after: str | None, raw: bool
) -> None:
    """A name the contract refuses closes with 4403 after a ``forbidden`` error frame; a bad
    ``after`` gets a ``bad_request`` error frame and the socket goes on from now. Nothing else:
    no 1011, no silence, no crash."""
    pairs = [("name", name)] + ([] if after is None else [("after", after)])
    # raw: percent signs and all as typed (only what may stand in a request line), else quoted
    query = "&".join(f"{k}={unquoted(v) if raw else quote(v, safe='')}" for k, v in pairs)
    decoded = parse_qs(query, keep_blank_values=True)  # as the consumer reads it
    got_name = decoded.get("name", [None])[0]
    got_after = decoded.get("after", [None])[0]
    ws = connect(f"{run.node.ws}/ws/rooms/lobby/?{query}", open_timeout=10, legacy=True)
    frames: list[dict[str, Any]] = []
    try:
        while not frames or frames[-1]["type"] != "presence_state":
            frames.append(json.loads(ws.recv(timeout=5)))
    except ConnectionClosed:
        pass
    finally:
        ws.close()
    kinds = [frame["type"] for frame in frames]
    refused = services.guest_name_error(got_name or "") if got_name is not None else "no name"
    if refused:
        assert ws.close_code == 4403, (query, kinds, ws.close_code)
        assert frames and frames[-1]["code"] == "forbidden", (query, frames)
        return
    assert "hello" in kinds, (query, frames, ws.close_code)
    errors = [frame for frame in frames if frame["type"] == "error"]
    if after_is_valid(got_after):
        assert not errors, (query, errors)
    else:
        assert [e["code"] for e in errors] == ["bad_request"], (query, errors)


@pytest.mark.parametrize("mib", [0.9, 2.0])
def test_a_frame_of_megabytes_is_refused_or_closes_only_that_socket(run: Run, mib: float) -> None:
    """Below daphne's 1 MiB message limit the frame is answered ``too_large`` and the socket
    stays; above it the WebSocket layer fails that connection (1009, or a drop: 1006)."""
    wire = Wire.open(run.node, "big")
    try:
        wire.ws.send(json.dumps({"type": "send", "body": "z" * int(mib * 2**20)}))
        try:
            answer = wire.answer(timeout=10)
        except ConnectionClosed:
            assert mib > 1 and wire.ws.close_code in (1006, 1009), wire.ws.close_code
        else:
            assert answer["code"] == "too_large", answer
            assert wire.alive()
    finally:
        wire.close()
    assert raw_get(run.node, "/healthz")[0] == 200
    assert last_seq(run.node) == run.room_last_seq
    run.good_send()


# -- a flood under the contract's default rate limit ---------------------------------------------


@pytest.fixture
def limited_node(tmp_path: Any) -> Iterator[Node]:
    """A node with the default ``CHAT_RATE_LIMIT`` (20/10), on a Redis of its own."""
    server = EmbeddedRedis.start(appendonly=False)
    cluster = Cluster(server.url, tmp_path)
    try:
        cluster.create_room(ROOM)
        yield cluster.add("limited")
    finally:
        cluster.close()
        server.stop()


def test_a_flood_of_bad_commands_is_rate_limited_and_never_limits_others(
    limited_node: Node,
) -> None:
    """Commands naming no message cost the flooder its own tokens, not the room's server (no
    crash, so no limiter reset: issue 8 hole 1) and never another user's."""
    good = Wire.open(limited_node, "good")
    flooder = Wire.open(limited_node, "flooder")
    try:
        codes: Counter[str] = Counter()
        for i in range(60):
            message_id = ["m99999", "m88888", "m²"][i % 3]  # 40 well-formed, 20 not even that
            flooder.ws.send(dumps({"type": "delete", "id": message_id, "client_id": f"f{i}"}))
        for _ in range(60):
            answer = flooder.answer(timeout=10)
            assert answer["type"] == "error", answer
            codes[answer["code"]] += 1
        assert set(codes) <= {"not_found", "rate_limited"}, codes
        # 20 tokens (and a refill of 2 a second) for 40 commands that reach the room's server
        assert codes["rate_limited"] >= 10, codes
        for i in range(10):
            client_id = f"g{i}"
            good.ws.send(dumps({"type": "send", "body": f"hello {i}", "client_id": client_id}))
            answer = good.answer(timeout=10)
            assert answer["type"] == "ack" and answer["client_id"] == client_id, answer
        assert last_seq(limited_node) == 10
    finally:
        good.close()
        flooder.close()
    assert_clean_log(limited_node)


# -- a refused frame names the command it answers -----------------------------------------------

REFUSED_WITH_CLIENT_ID = [
    '{"type": "edit", "body": "x", "client_id": "r1"}',  # no id
    '{"type": "SEND", "body": "x", "client_id": "r2"}',  # unknown type
    '{"type": "send", "body": 5, "client_id": "r3"}',  # body not text
    '{"type": "send", "body": "\\ud800", "client_id": "r4"}',  # a lone surrogate
    '{"type": "delete", "id": [], "client_id": "r5"}',  # id not text
]


def test_a_refused_frame_names_its_client_id(run: Run) -> None:
    run.reopen_fuzzer_if_closed()
    for text in REFUSED_WITH_CLIENT_ID:
        client_id = json.loads(text)["client_id"]
        expect_refused(run, bad("refused", text, "bad_request", client_id=client_id))
