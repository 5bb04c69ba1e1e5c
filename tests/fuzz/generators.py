"""Hostile inputs for a running gateway, drawn from a seeded ``random.Random``.

Pure: no I/O. Each generator takes the random source and the gateway's
``MAX_MESSAGE_SIZE`` and returns a :class:`Case` -- the WebSocket frames to put
on the wire and the answers the protocol documents for them
(docs/protocol.md, docs/security.md "Fuzzing"). The same seed gives the same
inputs, so a failure found by a long run is replayed by its seed and index.

Phases: ``before`` -- the input is the first thing a fresh connection sends
(it must be answered by an ``error`` and a close, never by a welcome);
``after`` -- it is sent after ``hello`` on a live connection (it must be
answered by its ``error`` and the connection stays open, or by a documented
close code).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

# RFC 6455 opcodes.
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

#: Close codes of the WebSocket layer (RFC 6455 section 7.4.1), sent by the
#: websockets library before the gateway sees a message.
PROTOCOL_ERROR = 1002  #: broken framing: reserved bits or opcodes, a continuation without a start
INVALID_DATA = 1007  #: a text message that is not valid UTF-8
MESSAGE_TOO_BIG = 1009  #: a message over the WebSocket layer's limit (twice MAX_MESSAGE_SIZE)
#: Before ``hello`` a gateway may hold a smaller frame limit than after it:
#: inputs at least this large may also be refused with 1009 then.
SMALL_BEFORE_HELLO = 4096


@dataclass(frozen=True)
class Wire:
    """One WebSocket frame as sent. ``declared`` (when set) is the payload
    length written in the header while only ``data`` follows: the header alone
    is enough for a receiver to refuse it."""

    opcode: int
    data: bytes
    fin: bool = True
    rsv: int = 0  #: the three reserved bits, 0-7
    declared: int | None = None


@dataclass(frozen=True)
class Expect:
    """The answers allowed for one input."""

    errors: frozenset[str] = frozenset()  #: ``error`` codes, the connection staying open (after hello)
    replies: frozenset[str] = frozenset()  #: other frame types, e.g. ``pong``
    closes: frozenset[int] = frozenset()  #: close codes (a 4xxx close follows an error in ``errors``)


@dataclass(frozen=True)
class Case:
    category: str
    phase: str  #: "before" or "after"
    frames: tuple[Wire, ...]
    expect: Expect
    note: str = ""  #: a short description of the input, for reports

    @property
    def size(self) -> int:
        return sum(f.declared if f.declared is not None else len(f.data) for f in self.frames)


def text(data: str | bytes) -> Wire:
    return Wire(TEXT, data.encode() if isinstance(data, str) else data)


def js(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


# -- building blocks -----------------------------------------------------------

ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_.:@-"
#: Every field of a client frame.
FIELDS = ("type", "token", "device_id", "last_id", "epoch", "conversation_id", "client_msg_id", "text", "id", "limit")
NEVER_SENT = "99999999999999-0"  #: an id far beyond any event of a new user


def _name(rng: random.Random) -> str:
    return "".join(rng.choice(ID_CHARS) for _ in range(rng.randint(1, 12)))


def _valid_frames(rng: random.Random, token: str) -> list[dict]:
    """Valid client frames whose answer is known on a fresh connection of a new
    user (no ``send``: that would start real work)."""
    return [
        {"type": "ping"},
        {"type": "history", "conversation_id": _name(rng), "limit": rng.randint(1, 1000)},
        {"type": "ack", "id": NEVER_SENT},
        {"type": "hello", "token": token, "device_id": _name(rng)},
        {"type": "send", "conversation_id": _name(rng), "client_msg_id": _name(rng), "text": "hi"},
    ]


#: The answer to each valid frame above, after hello on a fresh connection.
VALID_ANSWERS = {
    "ping": Expect(replies=frozenset({"pong"})),
    "history": Expect(errors=frozenset({"unknown_conversation"})),
    "ack": Expect(errors=frozenset({"invalid_ack"})),
    "hello": Expect(errors=frozenset({"duplicate_hello"})),
}


def _json_value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.randint(-(2**70), 2**70)
    if kind == 3:
        return rng.uniform(-1e300, 1e300)
    if kind == 4:
        return "".join(chr(rng.choice([rng.randint(32, 126), rng.randint(0x80, 0xD7FF), rng.randint(0xE000, 0x10FFFF)]))
                       for _ in range(rng.randint(0, 12)))
    if kind == 5:
        return rng.choice(["", " ", "\n", "\u2028", "{u:x}", "0-0", "-1", "1-1\n", "é" * 3])
    if kind in (6, 7):
        return [_json_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {_name(rng): _json_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def _bad(*codes: str) -> Callable[[str, int], Expect]:
    """The expectation of an input refused with one of ``codes``."""

    def expect(phase: str, size: int) -> Expect:
        if phase == "after":
            return Expect(errors=frozenset(codes))
        closes = {4002}
        if size >= SMALL_BEFORE_HELLO:
            closes.add(MESSAGE_TOO_BIG)
        return Expect(errors=frozenset(codes), closes=frozenset(closes))

    return expect


BAD_FRAME = _bad("bad_frame")


def _case(category: str, phase: str, frames: list[Wire] | Wire, expect: Callable[[str, int], Expect] | Expect,
          note: str) -> Case:
    frames = tuple(frames) if isinstance(frames, list) else (frames,)
    size = sum(f.declared if f.declared is not None else len(f.data) for f in frames)
    if callable(expect):
        expect = expect(phase, size)
    return Case(category, phase, frames, expect, note[:120])


# -- the categories ---------------------------------------------------------------


def malformed_json(rng: random.Random, phase: str, max_size: int, token: str) -> Case:
    """Text that is not one JSON value: every mutation below is invalid by construction."""
    base = js(rng.choice(_valid_frames(rng, token)))
    how = rng.randrange(8)
    if how == 0:
        data = base[:rng.randrange(len(base))]  # a proper prefix of an object is never JSON
    elif how == 1:
        data = base + rng.choice(["}", ",", "]", " x", "{}", "\x00", '"'])  # trailing garbage
    elif how == 2:
        data = base.replace('"', "'")
    elif how == 3:
        at = rng.randrange(1, len(base))
        # A control character is invalid anywhere in JSON: outside a string it
        # is not whitespace, inside one it must be escaped.
        data = base[:at] + rng.choice(["\x00", "\x01", "\x08", "\x1f"]) + base[at:]
    elif how == 4:
        data = base.replace(":", " ", 1)
    elif how == 5:
        data = rng.choice(["", " ", "\t\n", "{", "}", "[", "nul", "tru", "{,}", "{\"type\"}", "{\"type\":}",
                           "\ufeff{\"type\":\"ping\"}", "{\"type\":\"ping\",}", "[1,]", "01", "\"\\x\""])
    elif how == 6:
        data = base[:-1] + ',"' + _name(rng) + '":' + rng.choice(["", "undefined", "'x'", "0x1", "--1"]) + "}"
    else:
        data = "".join(chr(rng.randint(0x21, 0x7E)) for _ in range(rng.randint(1, 60))) + "{"
    return _case("malformed_json", phase, text(data), BAD_FRAME, repr(data))


_WRONG = {
    str: [0, 1.5, True, None, [], {}, ["x"], {"a": "b"}],
    int: ["5", 5.5, True, None, [], {}, "NaN"],
}


def wrong_types(rng: random.Random, phase: str, max_size: int, token: str) -> Case:
    """A valid frame with one field of another JSON type (or missing)."""
    frame = rng.choice(_valid_frames(rng, token)[1:])  # ping has no field
    name = rng.choice([k for k in frame if k != "type"])
    kind = int if name == "limit" else str
    if rng.random() < 0.15:
        del frame[name]
        if name == "limit":  # it has a default
            frame["conversation_id"] = ["c"]
    else:
        frame[name] = rng.choice(_WRONG[kind])
    data = js(frame)
    return _case("wrong_types", phase, text(data), BAD_FRAME, data)


def deep_nesting(rng: random.Random, phase: str, max_size: int, token: str) -> Case:
    """Arrays or objects nested far past any parser's recursion limit, inside
    the frame limit (100,000 arrays is 200 KB)."""
    depth = rng.randint(2_000, min(120_000, (max_size - 100) // 6))
    opener, closer = rng.choice([("[", "]"), ('{"a":', "}")])
    nested = opener * depth + rng.choice(["1", '"x"', "null", "[]"]) + closer * depth
    where = rng.randrange(4)
    if where == 0:
        data = nested
    elif where == 1:
        data = '{"type":"ping","' + _name(rng) + '":' + nested + "}"
    elif where == 2:
        data = '{"type":"send","conversation_id":"c","client_msg_id":"m","text":' + nested + "}"
    else:
        data = opener * depth
    return _case("deep_nesting", phase, text(data), BAD_FRAME, f"depth {depth} {opener!r} where={where}")


def binary_frames(rng: random.Random, phase: str, max_size: int, token: str) -> Case:
    """Binary frames: valid JSON frames sent as binary, random bytes, empty."""
    how = rng.randrange(3)
    if how == 0:
        data = js(rng.choice(_valid_frames(rng, token))).encode()
    elif how == 1:
        data = rng.randbytes(rng.randint(1, 2000))
    else:
        data = b""
    return _case("binary", phase, Wire(BINARY, data), BAD_FRAME, f"{len(data)} bytes: {data[:40]!r}")


_INVALID_UTF8 = [b"\xff", b"\xfe", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
                 b"\x80", b"\xc3", b"\xe2\x82", b"\xf0\x9f\x98", b"\xc3\x28", b"\xf8\x88\x80\x80\x80"]


def invalid_utf8(rng: random.Random, phase: str, max_size: int, token: str) -> Case:
    """A text frame (or fragmented text message) that is not valid UTF-8:
    overlong forms, surrogates, stray continuation bytes, truncated sequences."""
    base = js(rng.choice(_valid_frames(rng, token))).encode()
    bad = rng.choice(_INVALID_UTF8)
    at = rng.randrange(len(base) + 1)
    data = base[:at] + bad + base[at:]
    if rng.random() < 0.3 and len(data) > 2:
        cut = rng.randrange(1, len(data))  # the bad sequence may span the fragments
        frames = [Wire(TEXT, data[:cut], fin=False), Wire(CONT, data[cut:])]
    else:
        frames = [Wire(TEXT, data)]
    return _case("invalid_utf8", phase, frames, Expect(closes=frozenset({INVALID_DATA})), repr(data[:60]))


_HUGE = ["1e400", "-1e400", "1e-400", "-0", "1E+9999999999", "123456789012345678901234567890",
         "NaN", "Infinity", "-Infinity", "0.1e1", "1.0", "2e0", "-1", "0"]


def huge_numbers(rng: random.Random, phase: str, max_size: int, token: str) -> Case:
    """Numbers JSON allows (or almost) and no field can hold, in the known fields."""
    frame = rng.choice(_valid_frames(rng, token)[1:4])  # ping has no field
    name = rng.choice([k for k in frame if k != "type"])
    number = rng.choice(_HUGE + ["9" * rng.randint(20, 20_000), "-" + "9" * rng.randint(20, 20_000),
                                 "1" + "0" * rng.randint(20, 400) + ".5"])
    frame[name] = "@@"
    data = js(frame).replace('"@@"', number)
    return _case("huge_numbers", phase, text(data), BAD_FRAME, data[:100])


def unknown_fields(rng: random.Random, phase: str, max_size: int, token: str) -> Case:
    """Valid frames with extra fields of any type (ignored: forward compatibility)."""
    frame = rng.choice(_valid_frames(rng, token)[:4])
    extra = {rng.choice([_name(rng), "__proto__", "Type", "TYPE", "constructor", "", " type"]): _json_value(rng)
             for _ in range(rng.randint(1, 6))}
    for name in FIELDS:  # an extra named like a real field would be that field
        extra.pop(name, None)
    data = js({**extra, **frame})
    if phase == "before":
        if frame["type"] != "hello":
            return _case("unknown_fields", phase, text(data), _bad("hello_required"), data)
        # A hello with a valid token is welcomed: spoil the token.
        data = js({**extra, **frame, "token": "x" + token[1:]})
        return _case("unknown_fields", phase, text(data),
                     Expect(errors=frozenset({"unauthorized"}), closes=frozenset({4001})), data)
    return _case("unknown_fields", phase, text(data), VALID_ANSWERS[frame["type"]], data)


def unknown_types(rng: random.Random, phase: str, max_size: int, token: str) -> Case:
    """``type`` values no client frame has: server frame types, near misses, other JSON types."""
    value = rng.choice(["welcome", "accepted", "event", "error", "pong", "refreshed", "", "PING", "Ping", "ping ",
                        " hello", "hello\n", "sendd", "\u0070ing\u200b", 1, 0, True, None, [], {}, ["ping"], 1.5])
    frame = {"type": value, **{k: v for k, v in rng.choice(_valid_frames(rng, token)).items() if k != "type"}}
    data = js(frame)
    return _case("unknown_types", phase, text(data), BAD_FRAME, data[:100])


def out_of_order(rng: random.Random, phase: str, max_size: int, token: str) -> Case:
    """Frames that are valid alone and wrong where they come: anything but
    hello first; a second hello; an ack of an id never sent."""
    frames = _valid_frames(rng, token)
    if phase == "before":
        frame = rng.choice([f for f in frames if f["type"] != "hello"])
        return _case("out_of_order", phase, text(js(frame)), _bad("hello_required"), frame["type"])
    frame = rng.choice([frames[2], frames[3]])  # ack of an id never sent, hello twice
    if frame["type"] == "ack":
        frame["id"] = rng.choice([NEVER_SENT, f"{rng.randint(10**13, 10**19)}-{rng.randint(0, 99)}",
                                  "18446744073709551615-18446744073709551615"])
    return _case("out_of_order", phase, text(js(frame)), VALID_ANSWERS[frame["type"]], js(frame)[:100])


def oversized(rng: random.Random, phase: str, max_size: int, token: str) -> Case:
    """Frames over MAX_MESSAGE_SIZE: up to twice it they are read and refused
    with ``too_large``; beyond, the WebSocket layer closes with 1009 (the
    header alone says so: only its first bytes are sent)."""
    if rng.random() < 0.6:
        size = rng.randint(max_size + 1, 2 * max_size)
        body = b'{"type":"send","conversation_id":"c","client_msg_id":"m","text":"'
        data = (body + rng.choice([b"x", b" "]) * size)[:size]  # ASCII: any cut is valid UTF-8
        return _case("oversized", phase, Wire(rng.choice([TEXT, BINARY]), data), _bad("too_large"),
                     f"{len(data)} bytes")
    size = rng.randint(2 * max_size + 1, 2**40)
    return _case("oversized", phase, Wire(TEXT, b'{"type":"ping","x":"', declared=size),
                 Expect(closes=frozenset({MESSAGE_TOO_BIG})), f"declared {size} bytes")


def fragmented(rng: random.Random, phase: str, max_size: int, token: str) -> Case:
    """Messages split into 2-40 fragments, with pings between them: each is
    answered as the whole message would be."""
    kind = rng.randrange(3)
    if kind == 0:
        frame = rng.choice(_valid_frames(rng, token)[:4])
        if phase == "before":
            if frame["type"] == "hello":
                frame["token"] = "not-a-token"
                expect: Callable | Expect = Expect(errors=frozenset({"unauthorized"}), closes=frozenset({4001}))
            else:
                expect = _bad("hello_required")
        else:
            expect = VALID_ANSWERS[frame["type"]]
        data = js(frame).encode()
    elif kind == 1:
        data = js(rng.choice(_valid_frames(rng, token)))[:-1].encode()  # truncated: not JSON
        expect = BAD_FRAME
    else:
        data = b"x" * rng.randint(max_size + 1, 2 * max_size)  # the fragments add up past the limit
        expect = _bad("too_large")
    pieces = rng.randint(2, 40)
    cuts = sorted(rng.sample(range(1, len(data)), min(pieces - 1, len(data) - 1)))
    parts = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
    frames = []
    for i, part in enumerate(parts):
        frames.append(Wire(TEXT if i == 0 else CONT, part, fin=i == len(parts) - 1))
        if i < len(parts) - 1 and rng.random() < 0.2:
            frames.append(Wire(PING, b"between"))  # control frames may come between fragments
    return _case("fragmented", phase, frames, expect, f"{len(parts)} fragments of {len(data)} bytes")


def broken_framing(rng: random.Random, phase: str, max_size: int, token: str) -> Case:
    """Frames RFC 6455 forbids: reserved bits or opcodes, a continuation with
    no message, a new message inside a fragmented one, fragmented or long
    control frames."""
    payload = js({"type": "ping"}).encode()
    how = rng.randrange(6)
    if how == 0:
        frames = [Wire(TEXT, payload, rsv=rng.randint(1, 7))]
    elif how == 1:
        frames = [Wire(rng.choice([0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF]), payload)]
    elif how == 2:
        frames = [Wire(CONT, payload)]
    elif how == 3:
        frames = [Wire(TEXT, payload[:3], fin=False), Wire(rng.choice([TEXT, BINARY]), payload)]
    elif how == 4:
        frames = [Wire(PING, b"x", fin=False)]
    else:
        frames = [Wire(PING, b"x" * rng.randint(126, 1000))]
    return _case("broken_framing", phase, frames, Expect(closes=frozenset({PROTOCOL_ERROR})), f"kind {how}")


def bad_hello(rng: random.Random, phase: str, max_size: int, token: str) -> Case:
    """A first ``hello`` that cannot be accepted: a token that is not one,
    signed with another key, with ``alg: none``, or a device id that is not a name."""
    header_none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"  # {"alg":"none","typ":"JWT"}
    head, claims, _sig = token.split(".")
    how = rng.randrange(5)
    if how == 0:
        tok = rng.choice(["x", "a.b.c", "..", "Bearer " + token, token[:-3], "é" * 20])
    elif how == 1:
        tok = f"{head}.{claims}.{'A' * 43}"
    elif how == 2:
        tok = f"{header_none}.{claims}."
    elif how == 3:
        tok = f"{head}.{claims[::-1]}.{_sig}"
    else:
        frame = {"type": "hello", "token": token,
                 "device_id": rng.choice(["", "a b", "{tag}", "d\n", "x" * 129, "é"])}
        return _case("bad_hello", phase, text(js(frame)), _bad("bad_frame"), js(frame)[:100])
    frame = {"type": "hello", "token": tok, "device_id": _name(rng)}
    return _case("bad_hello", phase, text(js(frame)), Expect(errors=frozenset({"unauthorized"}),
                                                             closes=frozenset({4001})), tok[:60])


GENERATORS: dict[str, Callable[[random.Random, str, int, str], Case]] = {
    "malformed_json": malformed_json,
    "wrong_types": wrong_types,
    "deep_nesting": deep_nesting,
    "binary": binary_frames,
    "invalid_utf8": invalid_utf8,
    "huge_numbers": huge_numbers,
    "unknown_fields": unknown_fields,
    "unknown_types": unknown_types,
    "out_of_order": out_of_order,
    "oversized": oversized,
    "fragmented": fragmented,
    "broken_framing": broken_framing,
    "bad_hello": bad_hello,
}
#: Categories that only make sense as the first frame.
BEFORE_ONLY = {"bad_hello"}


@dataclass
class Plan:
    """How many inputs of each category, per phase."""

    after: dict[str, int] = field(default_factory=dict)
    before: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.after.values()) + sum(self.before.values())


def cases(seed: int, plan: Plan, max_size: int, token: str) -> Iterator[Case]:
    """The plan's cases in a fixed order (one ``Random`` per category and
    phase, so changing one count does not change the other inputs)."""
    for phase, counts in (("after", plan.after), ("before", plan.before)):
        for category, count in counts.items():
            if phase == "after" and category in BEFORE_ONLY:
                continue
            rng = random.Random(f"{seed}/{phase}/{category}")
            for _ in range(count):
                yield GENERATORS[category](rng, phase, max_size, token)
