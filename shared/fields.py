"""Field names of the Redis hashes and stream entries that Lua scripts write
and Python reads, defined once.

The script loader (:mod:`.scripts`) hands every script these names as the Lua
table ``F`` (``F.conv_done`` is ``ConvField.DONE``), so a field is spelled in
one place for both languages.
"""

from __future__ import annotations


class ConvField:
    """The conversation hash (:func:`keys.conversation`)."""

    DONE = "done"  #: id of the last inbound entry whose turn is committed
    ATTEMPT_OF = "attempt_of"  #: the inbound entry the attempts below are at
    ATTEMPTS = "attempts"  #: attempts begun at that entry (a poison-message bound)
    ATTEMPT_TOKEN = "attempt_token"  #: the lease token the last attempt was begun under
    DELTA = "delta"  #: mark (token, attempt, seq) of the last delta written: a repeated write is a no-op
    LAST = "last"  #: id of the newest accepted entry (``done`` equal to it: nothing waits)
    COUNT = "count"  #: messages ever accepted (the MAX_MESSAGES_PER_SESSION bound)
    NOTICED = "noticed"  #: ms of the last work notice a new message asked for (see accept.lua)
    RENOTICED = "renoticed"  #: ms of the last work notice a repeated message asked for
    GRAPH = "graph"  #: the graph the conversation runs, fixed by its first message (``send.graph``)
    CANCEL = "cancel"  #: every entry up to this id is cancelled (``cancel``, ``if_busy: interrupt``)
    TITLE = "title"  #: its title: ``rename``'s, else the start of its first message (sealed as stored text)
    CREATED = "created"  #: ms of its first message
    GEN = "gen"  #: times it was cleared: its LangGraph thread is ``keys.thread_id(..., gen)``
    #: ``<entry id> <interrupt id> <client_msg_id>``: the waiting entry's turn asked the person (LangGraph's
    #: ``interrupt``) and waits for a ``resume``; nothing behind it runs meanwhile
    INTERRUPT = "interrupt"
    INTERRUPT_TEXT = "interrupt_text"  #: that ``interrupt`` event's text (JSON of id and value; sealed as stored)
    RESUME = "resume"  #: the ``resume`` value given (JSON, sealed as stored text): the turn continues with it
    #: the thread's latest checkpoint pointer before the interrupted turn ran ('-': there was none): what
    #: a cancel of that turn puts back
    BASE = "base"


class UsageField:
    """The user's quota state (:func:`keys.usage`)."""

    TAT = "tat"  #: the send rate limiter's theoretical arrival time (GCRA), ms
    BTAT = "btat"  #: the same for the text bytes rate limiter
    WAITING = "waiting"  #: accepted messages not yet answered (MAX_UNANSWERED)
    KEPT = "kept"  #: ms until which the user's keys are set to live (see accept.lua: retention)


class MetaField:
    """The outbound stream's metadata hash (:func:`keys.meta`)."""

    EPOCH = "epoch"  #: the stream's current life
    TRIMMED = "trimmed"  #: newest id removed by retention


class InboundField:
    """An entry of a conversation's inbound stream (:func:`keys.inbound`): one accepted ``send``."""

    CMID = "cmid"
    DEV = "dev"
    TEXT = "text"
    TS = "ts"
    GRAPH = "graph"  #: the conversation's graph (absent in entries written before graphs were chosen: the default)
    GEN = "gen"  #: the conversation's generation the entry runs in (absent: 0)
    KIND = "kind"  #: absent: a message; ``clear``: start afresh; ``edit``, ``regenerate``: fork (see below)
    #: ``edit``/``regenerate``: the checkpoint the turn forks from ('': the empty state, before the first message)
    BASE = "base"
    HUMAN = "human"  #: ``regenerate``: the id of the message run again (absent: ``in-<entry id>``)


class EventField:
    """An entry of the outbound stream (:func:`keys.outbound`): one event."""

    KIND = "kind"
    CONV = "conv"
    TEXT = "text"
    CMID = "cmid"
    DEV = "dev"
    TS = "ts"
    IN = "in"  #: the inbound id the event answers (or is, for ``user``)
    SEQ = "seq"  #: a delta's position within its attempt


class DeadField:
    """A copy of a dead-lettered message (:func:`keys.dead_copies`): its inbound entry as stored."""

    CONV = "conv"
    ENTRY = "entry"  #: the inbound id it had
    CMID = "cmid"
    DEV = "dev"
    TEXT = "text"  #: sealed as it was stored
    GRAPH = "graph"  #: the conversation's graph


class WorkField:
    """A work notice (:func:`keys.work`): "this conversation has work"."""

    USER = "user"
    CONV = "conv"


def lua_table() -> dict[str, str]:
    """Every field as ``<hash>_<field>`` -> name, for the scripts' ``F`` table."""
    table: dict[str, str] = {}
    for prefix, cls in (("conv", ConvField), ("usage", UsageField), ("meta", MetaField), ("in", InboundField),
                        ("event", EventField), ("work", WorkField), ("dead", DeadField)):
        for attr, value in vars(cls).items():
            if attr.isupper():
                table[f"{prefix}_{attr.lower()}"] = value
    return table
