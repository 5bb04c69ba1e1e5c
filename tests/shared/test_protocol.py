import json

import pytest

from switchboard.shared import protocol as p

MAX = 1024


def decode(frame) -> p.ClientFrame:
    return p.decode_client_frame(json.dumps(frame), MAX)


def test_each_client_frame_decodes_to_its_struct():
    assert decode({"type": "hello", "token": "t", "device_id": "d"}) == p.Hello(token="t", device_id="d")
    hello = decode({"type": "hello", "token": "t", "device_id": "d", "last_id": "12-0", "epoch": "e"})
    assert hello.last_id == "12-0" and hello.epoch == "e"
    assert decode({"type": "send", "conversation_id": "c", "client_msg_id": "m", "text": "hi"}) == p.Send("c", "m", "hi")
    assert decode({"type": "ack", "id": "1-2"}) == p.Ack(id="1-2")
    assert decode({"type": "history", "conversation_id": "c"}).limit == 50
    assert decode({"type": "ping"}) == p.Ping()


def test_unknown_fields_are_ignored_for_forward_compatibility():
    assert decode({"type": "ping", "future": 1}) == p.Ping()


@pytest.mark.parametrize("frame", [
    {"type": "teleport"},
    {"token": "t", "device_id": "d"},
    {"type": "send", "conversation_id": "c", "client_msg_id": "m"},
    {"type": "send", "conversation_id": "c", "client_msg_id": "m", "text": ""},
    {"type": "send", "conversation_id": "has space", "client_msg_id": "m", "text": "x"},
    {"type": "send", "conversation_id": "{tag}", "client_msg_id": "m", "text": "x"},
    {"type": "send", "conversation_id": "c" * 129, "client_msg_id": "m", "text": "x"},
    {"type": "ack", "id": "not-an-id"},
    {"type": "ack", "id": 5},
    {"type": "history", "conversation_id": "c", "limit": 0},
    {"type": "history", "conversation_id": "c", "limit": 5000},
    [1, 2, 3],
])
def test_invalid_frames_are_bad_frame(frame):
    with pytest.raises(p.FrameError) as info:
        decode(frame)
    assert info.value.code is p.ErrorCode.BAD_FRAME


def test_non_json_and_binary_and_oversized():
    with pytest.raises(p.FrameError) as info:
        p.decode_client_frame("{nope", MAX)
    assert info.value.code is p.ErrorCode.BAD_FRAME
    with pytest.raises(p.FrameError) as info:
        p.decode_client_frame(b'{"type":"ping"}', MAX)
    assert info.value.code is p.ErrorCode.BAD_FRAME
    with pytest.raises(p.FrameError) as info:
        p.decode_client_frame(json.dumps({"type": "send", "conversation_id": "c", "client_msg_id": "m",
                                          "text": "é" * MAX}), MAX)
    assert info.value.code is p.ErrorCode.TOO_LARGE


def test_invalid_send_echoes_its_client_msg_id():
    with pytest.raises(p.FrameError) as info:
        decode({"type": "send", "conversation_id": "bad id", "client_msg_id": "m-7", "text": "x"})
    assert info.value.to_frame().client_msg_id == "m-7"


def test_server_frames_round_trip_with_their_type_tag():
    frames = [
        p.Welcome(user_id="u", device_id="d", epoch="e", resume_from="0-0", recovered=True),
        p.Accepted(client_msg_id="m", id="1-0"),
        p.Event(id="1-0", conversation_id="c", kind="user", text="hi", client_msg_id="m", device_id="d", ts=5),
        p.HistoryResult(conversation_id="c", messages=[p.HistoryMessage(role="user", text="hi")]),
        p.Pong(),
        p.Error(code=p.ErrorCode.TOO_LARGE, message="big"),
    ]
    for frame in frames:
        text = p.encode_text(frame)
        assert json.loads(text)["type"] == frame.__struct_config__.tag
        assert p.decode_server_frame(text) == frame


def test_error_codes_and_close_codes_are_stable():
    assert {c.value for c in p.ErrorCode} >= {"bad_frame", "unauthorized", "too_large", "unknown_conversation"}
    assert p.CloseCode.UNAUTHORIZED == 4001 and p.CloseCode.GOING_AWAY == 1001
    assert json.loads(p.encode_text(p.Error(code=p.ErrorCode.BAD_FRAME, message="x")))["code"] == "bad_frame"


def test_protocol_module_imports_no_io_library():
    import subprocess
    import sys

    probe = "import sys, switchboard.shared.protocol; print(sorted(m for m in ('redis', 'websockets') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
