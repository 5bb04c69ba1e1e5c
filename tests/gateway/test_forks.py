"""Where regenerate and edit fork: the pure rules and the walk back the chain."""

from types import SimpleNamespace

import pytest
from langchain_core.messages import AIMessage, HumanMessage

from switchboard.gateway import forks
from switchboard.shared.protocol import FrameError


def _human(cmid: str, text: str) -> HumanMessage:
    return HumanMessage(text, id=f"in-{cmid}", response_metadata={"client_msg_id": cmid})


CHAT = [_human("a", "hi"), AIMessage("hello", id="r1"), _human("b", "more"), AIMessage("sure", id="r2")]


def test_locate_finds_a_user_message_by_client_msg_id_and_regenerate_only_the_last():
    assert forks.locate(CHAT, "a", last=False) == forks.Target("in-a", "hi")
    assert forks.locate(CHAT, "b", last=True) == forks.Target("in-b", "more")
    for cmid, last, code in (("a", True, "not_last"), ("zz", False, "unknown_message"),
                             ("r1", False, "unknown_message")):
        with pytest.raises(FrameError) as raised:
            forks.locate(CHAT, cmid, last=last)
        assert raised.value.code.value == code and raised.value.client_msg_id == cmid
    # A message from before client_msg_ids were recorded cannot be named.
    with pytest.raises(FrameError):
        forks.locate([HumanMessage("old", id="in-1")], "in-1", last=False)


def _chain(*states: list) -> list:
    """Checkpoint tuples, oldest first, each the parent of the next."""
    tuples = []
    for n, messages in enumerate(states):
        parent = {"configurable": {"checkpoint_id": f"c{n - 1}"}} if n else None
        tuples.append(SimpleNamespace(config={"configurable": {"checkpoint_id": f"c{n}"}}, parent_config=parent,
                                      checkpoint={"channel_values": {"messages": messages}}))
    return tuples


class _Saver:
    def __init__(self, tuples: list, missing: set[str] = frozenset()):
        self.by_id = {t.config["configurable"]["checkpoint_id"]: t for t in tuples}
        self.missing = missing
        self.reads = 0

    async def aget_tuple(self, config):
        self.reads += 1
        wanted = config["configurable"]["checkpoint_id"]
        return None if wanted in self.missing else self.by_id.get(wanted)


async def test_fork_base_is_the_newest_checkpoint_without_the_message():
    chain = _chain(CHAT[:2], CHAT[:2] + [CHAT[2]], CHAT)  # c1: interrupted mid-turn b, c2: turn b done
    saver = _Saver(chain)
    assert await forks.fork_base(saver, chain[-1], "in-b", "b") == "c0"
    assert saver.reads == 2
    assert await forks.fork_base(saver, chain[-1], "in-a", "a") == ""  # the first message: the empty state
    with pytest.raises(FrameError) as raised:
        await forks.fork_base(_Saver(chain, missing={"c0"}), chain[-1], "in-a", "a")  # pruned
    assert raised.value.code.value == "too_old"
