"""Properties of the frame decoder, checked on generated inputs (hypothesis).

``decode_client_frame`` is the first code any byte from the internet reaches.
Whatever it is given -- bytes, any text, JSON of the wrong shape, deep nesting,
huge numbers -- it returns a frame or raises :class:`FrameError` with a stable
code, and every frame it returns is one the rest of the gateway can use (ids
that are valid Redis key parts and stream ids). Every valid frame round-trips.

The runs are derandomized (the same examples each run, no example database),
so a failure in CI reproduces on any machine.
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from switchboard.shared import protocol as p
from switchboard.shared import streamids

PROPS = settings(max_examples=300, derandomize=True, database=None, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
BIG = 1 << 30  #: a max_size no generated input reaches
MAX = 1 << 20  #: the default MAX_MESSAGE_SIZE
DECODER_CODES = {p.ErrorCode.BAD_FRAME, p.ErrorCode.TOO_LARGE}
NAME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:@-"
#: What the rest of the gateway relies on: a Name is safe inside a Redis key.
SAFE_NAME = re.compile(r"[A-Za-z0-9_.:@\-]{1,128}")

# -- strategies: valid frames ------------------------------------------------

names = st.text(alphabet=NAME_CHARS, min_size=1, max_size=128)
stream_ids = st.builds(lambda ms, seq: f"{ms}-{seq}", st.integers(0, 10**20 - 1), st.integers(0, 10**20 - 1))
# Text a WebSocket text frame can carry: any Unicode scalar values (no lone surrogates).
texts = st.text(min_size=1, max_size=300)
hellos = st.builds(p.Hello, token=st.text(min_size=1, max_size=200), device_id=names,
                   last_id=st.none() | stream_ids, epoch=st.none() | st.text(max_size=64))
sends = st.builds(p.Send, conversation_id=names, client_msg_id=names, text=texts, graph=st.none() | names,
                  if_busy=st.sampled_from(["enqueue", "interrupt", "reject"]))
cancels = st.builds(p.Cancel, conversation_id=names, client_msg_id=st.none() | names)
acks = st.builds(p.Ack, id=stream_ids)
histories = st.builds(p.History, conversation_id=names, limit=st.integers(1, 1000))
valid_frames = st.one_of(hellos, sends, cancels, acks, histories, st.just(p.Ping()))

# -- strategies: hostile input -------------------------------------------------

huge_numbers = st.sampled_from([
    "1e400", "-1e400", "1e-400", "-0", "0.0", "1E+9999999999", "123456789012345678901234567890",
    "9" * 400, "-" + "9" * 5000, "NaN", "Infinity", "-Infinity", "0x10", "01", "1.", ".5", "+1",
])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)
FIELDS = ["type", "token", "device_id", "last_id", "epoch", "conversation_id", "client_msg_id",
          "text", "id", "limit", "graph", "if_busy"]
TYPES = ["hello", "send", "ack", "history", "ping", "welcome", "event", "error", "pong", "", "PING", "ping "]


def _suffix_mutation(value: str, extra: str) -> str:
    return value + extra


#: Near-valid values: a valid id with one character appended or inserted that
#: a lax pattern might let through (newline, NUL, hash-tag braces, a non-ASCII digit).
near_ids = st.builds(_suffix_mutation, names | stream_ids,
                     st.sampled_from(["\n", "\r\n", "\x00", " ", "{", "}", "\u0661", "\u00b2", "\u2028", "\t"]))


@st.composite
def frame_shaped(draw) -> str:
    """A JSON object with a ``type`` and fields named like the real ones,
    holding values of any type, near-valid ids, unknown fields and duplicates."""
    obj: dict = {"type": draw(st.sampled_from(TYPES) | st.text(max_size=8))}
    for name in draw(st.lists(st.sampled_from(FIELDS + ["future", "__proto__", "Type"]), max_size=7)):
        obj[name] = draw(json_values | near_ids | names | stream_ids)
    body = json.dumps(obj)
    if draw(st.booleans()):
        # Splice a literal number JSON itself cannot write (1e400, NaN, a 5,000-digit int).
        field = draw(st.sampled_from(["limit", "id", "text", "future"]))
        body = body[:-1] + (", " if len(obj) else "") + f'"{field}": {draw(huge_numbers)}}}'
    return body


@st.composite
def deep_nesting(draw) -> str:
    depth = draw(st.integers(1, 120_000))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    nested = opener * depth + "1" + closer * depth
    where = draw(st.sampled_from(["alone", "unknown field", "known field", "unbalanced"]))
    if where == "alone":
        return nested
    if where == "unknown field":
        return '{"type": "ping", "future": ' + nested + "}"
    if where == "known field":
        return '{"type": "send", "conversation_id": "c", "client_msg_id": "m", "text": ' + nested + "}"
    return opener * depth


any_text = st.text(max_size=200)  # no lone surrogates: a WebSocket text frame is valid UTF-8
hostile_text = st.one_of(any_text, frame_shaped(), deep_nesting(),
                         valid_frames.map(lambda f: p.encode_text(f)[:-1]))  # truncated
hostile = st.one_of(st.binary(max_size=300), hostile_text)


def _check_result(result: p.ClientFrame) -> None:
    """A decoded frame is one the gateway can act on."""
    for field in ("device_id", "conversation_id", "client_msg_id"):
        value = getattr(result, field, None)
        if value is not None:
            assert SAFE_NAME.fullmatch(value), f"{field}={value!r} is not a safe name"
    for field in ("id", "last_id"):
        value = getattr(result, field, None)
        if value is not None:
            assert streamids.is_valid(value), f"{field}={value!r} is not a stream id"


def _check_error(exc: p.FrameError) -> None:
    assert exc.code in DECODER_CODES
    assert isinstance(exc.message, str) and exc.message
    assert exc.client_msg_id is None or (isinstance(exc.client_msg_id, str) and len(exc.client_msg_id) <= 128)
    # The error frame the client gets is always encodable and readable.
    assert p.decode_server_frame(p.encode(exc.to_frame())) == exc.to_frame()


def decode_or_error(data: str | bytes, max_size: int = MAX) -> p.ClientFrame | p.FrameError:
    try:
        result = p.decode_client_frame(data, max_size)
    except p.FrameError as exc:
        _check_error(exc)
        return exc
    _check_result(result)
    return result


# -- properties -----------------------------------------------------------------


@PROPS
@given(valid_frames)
def test_every_valid_frame_round_trips(frame):
    data = p.encode_text(frame)
    assert p.decode_client_frame(data, BIG) == frame
    assert p.decode_client_frame(data, len(data.encode())) == frame  # exactly at the limit is allowed


@PROPS
@given(hostile)
def test_any_input_gives_a_frame_or_a_frame_error(data):
    decode_or_error(data)


@PROPS
@given(st.binary(max_size=300))
def test_binary_frames_are_bad_frame(data):
    result = decode_or_error(data)
    assert isinstance(result, p.FrameError) and result.code is p.ErrorCode.BAD_FRAME


@PROPS
@given(hostile_text | valid_frames.map(p.encode_text), st.data())
def test_over_the_limit_is_too_large_and_at_the_limit_is_not(data, draw):
    size = len(data.encode())
    if size:
        result = decode_or_error(data, draw.draw(st.integers(0, size - 1)))
        assert isinstance(result, p.FrameError) and result.code is p.ErrorCode.TOO_LARGE
    result = decode_or_error(data, size)
    assert not (isinstance(result, p.FrameError) and result.code is p.ErrorCode.TOO_LARGE)


@PROPS
@given(valid_frames, st.dictionaries(st.text(max_size=12).filter(lambda k: k not in FIELDS), json_values,
                                     max_size=4))
def test_unknown_fields_are_ignored(frame, extra):
    obj = json.loads(p.encode_text(frame))
    assert p.decode_client_frame(json.dumps({**extra, **obj}), BIG) == frame


@PROPS
@given(valid_frames, st.data())
def test_a_wrong_type_in_any_field_is_bad_frame(frame, data):
    obj = json.loads(p.encode_text(frame))
    fields = [k for k in obj if k != "type"]
    if not fields:
        return
    field = data.draw(st.sampled_from(fields))
    current = obj[field]
    # An optional name left out (None) takes any name: its wrong types are the others.
    wrong = data.draw(json_values.filter(lambda v: type(v) is not type(current) and v is not None
                                         and not (isinstance(current, int) and isinstance(v, float))
                                         and not (current is None and field in ("graph", "client_msg_id")
                                                  and isinstance(v, str))))
    obj[field] = wrong
    result = decode_or_error(json.dumps(obj))
    assert isinstance(result, p.FrameError) and result.code is p.ErrorCode.BAD_FRAME


@PROPS
@given(valid_frames, near_ids, st.data())
def test_a_near_valid_id_is_refused(frame, near, data):
    """An id with a newline, NUL, brace or non-ASCII digit appended never gets through."""
    obj = json.loads(p.encode_text(frame))
    fields = [k for k in obj if k in ("device_id", "conversation_id", "client_msg_id", "id", "last_id")]
    if not fields:
        return
    obj[data.draw(st.sampled_from(fields))] = near
    result = decode_or_error(json.dumps(obj))
    assert isinstance(result, p.FrameError) and result.code is p.ErrorCode.BAD_FRAME


# -- found by these properties (kept as plain regression tests) -----------------


@pytest.mark.parametrize("frame", [
    {"type": "ack", "id": "1-1\n"},
    {"type": "hello", "token": "t", "device_id": "d", "last_id": "1-2\n", "epoch": "e"},
    {"type": "hello", "token": "t", "device_id": "d\n"},
    {"type": "send", "conversation_id": "c\n", "client_msg_id": "m", "text": "x"},
    {"type": "send", "conversation_id": "c", "client_msg_id": "m\n", "text": "x"},
])
def test_a_trailing_newline_does_not_pass_the_id_patterns(frame):
    """``$`` in a Python regex also matches before a final newline: ``"1-1\\n"``
    passed as a stream id and then broke ``streamids.parse`` in the handler."""
    result = decode_or_error(json.dumps(frame))
    assert isinstance(result, p.FrameError) and result.code is p.ErrorCode.BAD_FRAME


@pytest.mark.parametrize("data", [
    "[" * 100_000 + "]" * 100_000,
    '{"type": "ping", "future": ' + "[" * 100_000 + "]" * 100_000 + "}",
    '{"type": "send", "x": ' + '{"a":' * 50_000 + "1" + "}" * 50_000 + "}",
])
def test_deep_nesting_is_bad_frame(data):
    """msgspec raises RecursionError (not a DecodeError) past Python's recursion limit."""
    result = decode_or_error(data)
    assert isinstance(result, p.FrameError) and result.code is p.ErrorCode.BAD_FRAME
