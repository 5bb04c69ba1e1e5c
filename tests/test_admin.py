"""``switchboard inspect``'s text: what a person reads (pure)."""

from switchboard import admin
from switchboard.admin import ConversationInfo, KeyInfo, UserReport, format_report


def test_the_report_says_what_waits_who_holds_it_where_devices_are_and_what_failed():
    report = UserReport("casey", 0, keys=[KeyInfo("sb:{u:casey}:out", "stream", 5, None),
                                          KeyInfo("sb:{u:casey}:conv:a", "hash", 4, 60.0)],
                        outbound={"length": 5, "first": "1-0", "last": "5-0", "epoch": "e1", "trimmed": None},
                        conversations=[ConversationInfo("a", "3-0", "4-0", 2, 1, 12.5, 0, None, 5),
                                       ConversationInfo("b", "2-0", "2-0", 1, 0, None, 2, "2-0", 2)],
                        devices=[{"device": "phone", "gateway": "gw1", "live": True, "acked": "5-0"},
                                 {"device": "old", "connected": False, "acked": None}],
                        usage={"waiting": "1"}, checkpoints={"checkpoint": 3, "checkpoint_latest": 2},
                        dead_letters=[{"id": "9-0", "conv": "b", "cmid": "bad", "attempts": "3", "worker": "w"}])
    text = format_report(report)
    assert "events: 5 (1-0 .. 5-0), epoch e1" in text
    assert "a: 2 messages, answered up to 3-0, newest 4-0, 1 waiting, leased (12.5 s left)" in text
    assert "b: 1 messages, answered up to 2-0, newest 2-0, idle, 2 attempts at 2-0" in text
    assert "phone: on gateway gw1, acked 5-0" in text and "old: not connected, acked -" in text
    assert "quota: 1 unanswered" in text and "checkpoints: 3 checkpoint, 2 checkpoint_latest" in text
    assert "9-0: conversation b, message bad after 3 attempts (worker w)" in text
    assert "sb:{u:casey}:out  stream 5  no expiry" in text and "expires in 60.0 s" in text


def test_a_user_with_nothing_stored_says_so():
    assert format_report(UserReport("nobody", 0)) == "user nobody: nothing stored\n"


def test_an_erasure_summary_says_what_was_or_would_be_deleted():
    erasure = admin.Erasure("alice", keys=["a", "b"], checkpoint_keys=["c"], work_notices=1, dead_letters=2)
    assert erasure.summary(done=False) == ("would delete for user alice: 2 keys, 1 checkpoint keys, 1 work notices, "
                                           "2 dead letters")
    assert erasure.summary(done=True).startswith("deleted for user alice: 2 keys")


def test_an_exported_message_keeps_its_role_text_and_tool_calls():
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    human = admin.message_line("c", HumanMessage(content=[{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}],
                                                 id="m1"))
    assert human == {"type": "message", "conversation": "c", "role": "user", "id": "m1", "text": "hi there"}
    call = admin.message_line("c", AIMessage(content="", id="m2",
                                             tool_calls=[{"name": "weather", "args": {"city": "Oslo"}, "id": "t1"}]))
    assert (call["role"], call["tool_calls"]) == ("assistant", [{"name": "weather", "args": {"city": "Oslo"}, "id": "t1"}])
    result = admin.message_line("c", ToolMessage(content="cold", tool_call_id="t1", id="m3"))
    assert (result["role"], result["text"], result["tool_call_id"]) == ("tool", "cold", "t1")
