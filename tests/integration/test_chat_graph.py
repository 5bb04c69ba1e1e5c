"""The chat-model graph (``switchboard.worker.chat``) through real processes,
on a local OpenAI-compatible endpoint (tests/support/fake_openai.py; no
network): its tokens arrive as deltas, its tool calls and their results as
``tool_call`` / ``tool_result`` events on every device, and the
conversation's state carries on to the next turn."""

from __future__ import annotations

import json

import pytest

from tests.support.client import Device, new_user
from tests.support.devices import phone_and_laptop
from tests.support.cluster import token
from tests.support.fake_openai import FakeOpenAI

pytest.importorskip("langchain_openai", reason="the chat graph needs the openai extra: pip install -e '.[openai]'")

CHAT = "switchboard.worker.chat:graph"


@pytest.fixture
def endpoint():
    with FakeOpenAI() as fake:
        yield fake


def _kinds(device: Device, cmid: str) -> list[str]:
    return [e["kind"] for e in device.events if e.get("client_msg_id") == cmid and e["kind"] != "user"]


async def test_a_chat_model_streams_calls_tools_and_remembers(cluster, endpoint):
    cluster.start_many(("fanout", "f"), ("gateway", "gw1"), ("gateway", "gw2"), ("worker", "w"), GRAPH=CHAT,
                       OPENAI_BASE_URL=endpoint.base_url, OPENAI_API_KEY="sk-test", CHAT_MODEL="tiny-chat",
                       CHAT_SYSTEM_PROMPT="Be brief.")
    user = new_user()
    phone, laptop = await phone_and_laptop(cluster, user)
    try:
        await phone.send("c", "m1", "hello there, how are you today")
        reply = await phone.wait_reply("m1")
        assert reply["text"] == "You said: hello there, how are you today"
        deltas = [e for e in phone.events if e["kind"] == "delta" and e["client_msg_id"] == "m1"]
        assert deltas and "".join(e["text"] for e in deltas) == reply["text"]  # streamed, in pieces
        first = endpoint.requests[0]
        assert first["headers"].get("Authorization", first["headers"].get("authorization")) == "Bearer sk-test" and first["body"]["model"] == "tiny-chat"
        assert first["body"]["stream"] is True
        assert first["body"]["messages"][0] == {"role": "system", "content": "Be brief."}
        assert {t["function"]["name"] for t in first["body"]["tools"]} == {"current_time", "calculate"}

        await laptop.send("c", "m2", "calculate: (17 + 4) * 3")
        for device in (phone, laptop):
            assert (await device.wait_reply("m2"))["text"] == "The answer is 63."
            assert _kinds(device, "m2")[:2] == ["tool_call", "tool_result"] and _kinds(device, "m2")[-1] == "assistant"
            call, result = [json.loads(e["text"]) for e in device.events
                            if e.get("client_msg_id") == "m2" and e["kind"] in ("tool_call", "tool_result")]
            assert call == [{"name": "calculate", "args": {"expression": "(17 + 4) * 3"}, "id": "call_1"}]
            assert result == {"id": "call_1", "name": "calculate", "content": "63"}
        # The model saw the whole conversation: system, the first exchange, the tool round.
        last = endpoint.requests[-1]["body"]["messages"]
        assert [m["role"] for m in last] == ["system", "user", "assistant", "user", "assistant", "tool"]
        await phone.send_raw(json.dumps({"type": "history", "conversation_id": "c"}))
        history = await phone.wait_frame("history", conversation_id="c")
        assert [(m["role"], m["text"]) for m in history["messages"]] == [
            ("user", "hello there, how are you today"), ("assistant", "You said: hello there, how are you today"),
            ("user", "calculate: (17 + 4) * 3"), ("assistant", "The answer is 63.")]
    finally:
        await phone.close()
        await laptop.close()


async def test_an_unreachable_model_is_a_turn_error_and_the_conversation_goes_on(cluster, endpoint):
    cluster.start_many(("fanout", "f"), ("gateway", "gw1"), ("gateway", "gw2"), ("worker", "w"), GRAPH=CHAT,
                       OPENAI_BASE_URL="http://127.0.0.1:9/v1", OPENAI_API_KEY="sk-test", MAX_ATTEMPTS="1",
                       CHAT_TIMEOUT="2")
    user = new_user()
    phone = Device(cluster.services["gw1"].url, token(user), "phone")
    await phone.connect()
    try:
        await phone.send("c", "m1", "anyone there?")
        error = await phone.wait_reply("m1", timeout=30)
        assert error["kind"] == "turn_error" and "ConnectionError" in error["text"]
    finally:
        await phone.close()
