"""Wire protocol v1: every frame is a JSON text frame tagged by ``type``.

The frames are ``msgspec.Struct``s on one tagged base. ``decode_client_frame``
turns the bytes of one WebSocket message into a :data:`ClientFrame` or raises
:class:`FrameError` carrying the stable error code the client gets back.

Schema evolution follows msgspec's rules: new fields get defaults, existing
fields never change type, unknown fields sent by newer clients are ignored.

This module is pure: it imports neither redis nor websockets. See
``docs/protocol.md`` for the full description.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal, Union

import msgspec

from .errors import SwitchboardError

PROTOCOL_VERSION = 1

# -- field types -------------------------------------------------------------

# ``\Z``, not ``$``: msgspec matches with Python's ``re``, where ``$`` also
# matches before a final newline ("1-1\n" passed as a stream id).
_ID_PATTERN = r"^[A-Za-z0-9_.:@\-]+\Z"
#: A user, device or conversation id: safe inside a Redis key, never a hash tag.
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=_ID_PATTERN)]
#: A client-chosen message id (a UUID is typical).
ClientMsgId = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=_ID_PATTERN)]
#: A Redis Stream entry id, ``<ms>-<seq>``.
StreamId = Annotated[str, msgspec.Meta(max_length=41, pattern=r"^[0-9]{1,20}-[0-9]{1,20}\Z")]
Text = Annotated[str, msgspec.Meta(min_length=1)]
Token = Annotated[str, msgspec.Meta(min_length=1, max_length=8192)]
HistoryLimit = Annotated[int, msgspec.Meta(ge=1, le=1000)]
#: Characters of a conversation's title (``rename``; a default title is the first message's start).
MAX_TITLE_LENGTH = 200
Title = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TITLE_LENGTH)]
#: Conversations per ``conversations`` page, at most.
MAX_CONVERSATIONS_PAGE = 100
ConversationsLimit = Annotated[int, msgspec.Meta(ge=1, le=MAX_CONVERSATIONS_PAGE)]
#: A ``conversations`` page's cursor: ``<updated ms>|<conversation id>`` of the last one listed.
Cursor = Annotated[str, msgspec.Meta(max_length=150, pattern=r"^[0-9]{1,20}\|[A-Za-z0-9_.:@-]{1,128}\Z")]
#: The id LangGraph gives an interrupt (hex).
InterruptId = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=_ID_PATTERN)]
#: A message id in ``history`` (LangChain's: the worker's ``in-<entry>``, a model's run id).
MessageRef = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class ErrorCode(str, enum.Enum):
    """Stable ``code`` values of the ``error`` frame."""

    BAD_FRAME = "bad_frame"  #: not JSON, unknown ``type``, or a field is missing/invalid
    TOO_LARGE = "too_large"  #: the frame exceeds MAX_MESSAGE_SIZE
    UNAUTHORIZED = "unauthorized"  #: missing, invalid or expired token (connection closes 4001)
    HELLO_REQUIRED = "hello_required"  #: a frame other than ``hello`` came first (closes 4002)
    DUPLICATE_HELLO = "duplicate_hello"  #: ``hello`` sent twice on one connection
    INVALID_ACK = "invalid_ack"  #: ``ack`` of an id this connection was never sent
    UNKNOWN_CONVERSATION = "unknown_conversation"  #: ``history`` of a conversation with no state
    UNAVAILABLE = "unavailable"  #: a backend (Redis) is unreachable; retry later
    INTERNAL = "internal"  #: a server bug; details are in the server log only
    UNREADABLE = "unreadable"  #: stored text no key of the server's ENCRYPTION_KEYS opens (an event, history)
    # Limits (docs/security.md lists each with its setting and default):
    RATE_LIMITED = "rate_limited"  #: too many sends per minute or frames per second; retry later
    TEXT_TOO_LONG = "text_too_long"  #: ``text`` is longer than MAX_TEXT_LENGTH characters
    TOO_MANY_CONVERSATIONS = "too_many_conversations"  #: a new conversation beyond MAX_SESSIONS_PER_USER
    CONVERSATION_FULL = "conversation_full"  #: the conversation holds MAX_MESSAGES_PER_SESSION messages
    BACKLOG_FULL = "backlog_full"  #: MAX_UNANSWERED messages of the user still wait for replies
    TOO_MANY_CONNECTIONS = "too_many_connections"  #: MAX_DEVICES_PER_USER or MAX_CONNECTIONS_PER_IP reached
    TOKEN_EXPIRED = "token_expired"  #: the connection's token expired without a ``refresh``
    UNKNOWN_GRAPH = "unknown_graph"  #: ``send.graph`` names no graph of the server's GRAPH
    GRAPH_MISMATCH = "graph_mismatch"  #: ``send.graph`` names another graph than the conversation runs
    BUSY = "busy"  #: ``send`` with ``if_busy: reject`` while the conversation has a turn running or waiting
    NOT_RUNNING = "not_running"  #: ``cancel`` of a conversation with no turn running or waiting
    NOT_INTERRUPTED = "not_interrupted"  #: ``resume`` of a turn with no interrupt pending (or another interrupt)
    ALREADY_RESUMED = "already_resumed"  #: a second ``resume`` of the same interrupt
    UNKNOWN_MESSAGE = "unknown_message"  #: ``regenerate``/``edit`` of a message not in the conversation's state
    NOT_LAST = "not_last"  #: ``regenerate`` of a message that is not the conversation's last
    TOO_OLD = "too_old"  #: ``edit`` of a message older than the checkpoints kept (CHECKPOINT_KEEP)


class CloseCode(enum.IntEnum):
    """WebSocket close codes used by the gateway.

    ======  ====================  ==================================================
    code    name                  client should
    ======  ====================  ==================================================
    1000    NORMAL                not reconnect (it asked to close)
    1001    GOING_AWAY            reconnect (gateway shutting down) with last_id
    1009    MESSAGE_TOO_BIG       fix the client: frame above the hard limit
    1011    INTERNAL_ERROR        reconnect with back-off
    4001    UNAUTHORIZED          get a new token, then reconnect
    4002    PROTOCOL_ERROR        fix the client (no ``hello`` first)
    4003    HELLO_TIMEOUT         reconnect, sending ``hello`` promptly
    4004    TOKEN_EXPIRED         get a new token, reconnect with last_id
    4005    TOO_MANY_CONNECTIONS  reconnect later, with back-off
    4006    RATE_LIMITED          reconnect later, with back-off; send slower
    4008    SLOW_CONSUMER         reconnect with last_id (outbox full too long)
    4009    RESYNC                reconnect with last_id (delivery could not resume)
    ======  ====================  ==================================================

    Every 4xxx code ends this connection only; what the client does next is
    in the table (docs/protocol.md has the same table for client authors).
    """

    NORMAL = 1000
    GOING_AWAY = 1001
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    UNAUTHORIZED = 4001
    PROTOCOL_ERROR = 4002
    HELLO_TIMEOUT = 4003
    TOKEN_EXPIRED = 4004
    TOO_MANY_CONNECTIONS = 4005
    RATE_LIMITED = 4006
    SLOW_CONSUMER = 4008
    RESYNC = 4009


class EventKind(str, enum.Enum):
    USER = "user"  #: a user's message, to every device of the user
    ASSISTANT = "assistant"  #: the graph's complete reply to one message
    DELTA = "delta"  #: a piece of a reply still being written (``seq`` 0 starts it afresh)
    TURN_ERROR = "turn_error"  #: the graph failed on one message; the conversation goes on
    CANCELLED = "cancelled"  #: a message's turn was stopped (``cancel``, ``if_busy: interrupt``); its reply so far
    RENAMED = "renamed"  #: the conversation's title changed (``text``: the new title)
    CLEARED = "cleared"  #: the conversation was cleared: the next turn starts from an empty state
    TOOL_CALL = "tool_call"  #: the graph's model asked for tools (``text``: JSON list of name, args, id)
    TOOL_RESULT = "tool_result"  #: a tool answered (``text``: JSON of id, name, content)
    #: the turn asks the person (LangGraph's ``interrupt``; ``text``: JSON of ``id`` and ``value``) and waits for
    #: a ``resume``
    INTERRUPT = "interrupt"
    RESUMED = "resumed"  #: an interrupt was answered (``text``: the ``resume`` value, JSON); the turn runs on
    #: ``regenerate``/``edit``: messages from ``client_msg_id``'s are replaced (``text``: ``reply``: only the replies
    #: after it; ``message``: it and everything after it); the new branch's events follow
    REPLACED = "replaced"


# -- client -> server --------------------------------------------------------


class Frame(msgspec.Struct, tag_field="type", forbid_unknown_fields=False, omit_defaults=False):
    """Base of every frame; ``type`` is the tag."""


class Hello(Frame, tag="hello"):
    token: Token
    device_id: Name
    last_id: StreamId | None = None
    epoch: Annotated[str, msgspec.Meta(max_length=64)] | None = None


class Send(Frame, tag="send"):
    conversation_id: Name
    client_msg_id: ClientMsgId
    text: Text
    graph: Name | None = None  #: the graph a new conversation runs (a ``langgraph.json`` name); None: the default
    #: while the conversation has a turn running or waiting: ``enqueue`` (run after them), ``interrupt``
    #: (stop them: each ends with a ``cancelled`` event; this one runs next) or ``reject`` (error ``busy``)
    if_busy: Literal["enqueue", "interrupt", "reject"] = "enqueue"


class Cancel(Frame, tag="cancel"):
    """Stop the conversation's running turn (or the next to run); queued messages then run."""

    conversation_id: Name
    client_msg_id: ClientMsgId | None = None  #: only if this message is the one running


class Resume(Frame, tag="resume"):
    """Answer a turn's interrupt: the turn runs on with ``value`` (LangGraph's ``Command(resume=value)``)."""

    conversation_id: Name
    client_msg_id: ClientMsgId  #: the interrupted turn's (its message's)
    value: Any = None  #: any JSON value
    #: the ``interrupt`` event's ``id``: given, only that interrupt is answered (a late resend of an answer
    #: to an earlier interrupt of the same turn is refused); None: whichever is pending
    interrupt_id: InterruptId | None = None


class Regenerate(Frame, tag="regenerate"):
    """Replace the reply to the conversation's last message by a new one (LangGraph time travel)."""

    conversation_id: Name
    client_msg_id: ClientMsgId  #: the last message's
    #: given: a resend with it regenerates once (within DEDUP_TTL); None: each frame regenerates
    request_id: ClientMsgId | None = None


class Edit(Frame, tag="edit"):
    """Replace a message, and everything after it, by ``text``: the conversation forks before it."""

    conversation_id: Name
    client_msg_id: ClientMsgId  #: the message replaced
    text: Text
    new_client_msg_id: ClientMsgId  #: the new message's (a resend with it edits once, as a ``send``)


class Ack(Frame, tag="ack"):
    id: StreamId


class History(Frame, tag="history"):
    conversation_id: Name
    limit: HistoryLimit = 50
    before: MessageRef | None = None  #: the messages before this one (paging backwards); None: the newest


class Conversations(Frame, tag="conversations"):
    """List the user's conversations, newest first (by their last message)."""

    limit: ConversationsLimit = 20
    before: Cursor | None = None  #: the previous page's ``next``


class Clear(Frame, tag="clear"):
    """Start the conversation afresh: messages already queued run first; the next one after starts empty."""

    conversation_id: Name
    #: given: answered by ``accepted``, and a resend with it clears once (as a ``send``'s, within DEDUP_TTL)
    client_msg_id: ClientMsgId | None = None


class Rename(Frame, tag="rename"):
    conversation_id: Name
    title: Title


class Ping(Frame, tag="ping"):
    pass


class Refresh(Frame, tag="refresh"):
    """A new token for the connection's user, before the current one expires."""

    token: Token


ClientFrame = Union[Hello, Send, Cancel, Resume, Regenerate, Edit, Ack, History, Conversations, Rename, Clear, Ping,
                    Refresh]

# -- server -> client --------------------------------------------------------


class Welcome(Frame, tag="welcome"):
    user_id: str
    device_id: str
    epoch: str
    resume_from: str
    recovered: bool
    protocol: int = PROTOCOL_VERSION
    expires_at: int | None = None  #: the token's ``exp`` (Unix s): ``refresh`` before it, or be closed 4004


class Accepted(Frame, tag="accepted"):
    client_msg_id: str
    id: str


class Event(Frame, tag="event"):
    id: str
    conversation_id: str
    kind: str
    text: str
    client_msg_id: str | None = None
    device_id: str | None = None
    ts: int = 0
    seq: int | None = None  #: ``delta`` only: 0, 1, 2 ... within one attempt at the reply


class HistoryMessage(msgspec.Struct):
    role: Literal["user", "assistant"]
    text: str
    id: str | None = None  #: the message's id (pass it as ``before`` for the page before it)
    client_msg_id: str | None = None  #: a user message's (``regenerate``, ``edit`` name it); None: an older one


class HistoryResult(Frame, tag="history"):
    conversation_id: str
    messages: list[HistoryMessage]
    has_more: bool = False  #: older messages exist before the first one here


class PendingInterrupt(msgspec.Struct):
    client_msg_id: str  #: the interrupted turn's
    id: str  #: the interrupt's (``resume.interrupt_id``)
    value: Any = None  #: what the graph asked (``interrupt(value)``)


class ConversationInfo(msgspec.Struct):
    conversation_id: str
    title: str | None  #: ``rename``'s, or the start of the first message (None: a conversation from before titles)
    created_at: int | None  #: ms of its first message (None: from before it was recorded)
    updated_at: int  #: ms of its last message
    message_count: int  #: messages accepted
    graph: str | None = None  #: the graph it runs
    pending_interrupt: PendingInterrupt | None = None  #: the turn waiting for a ``resume``, if one does


class ConversationsResult(Frame, tag="conversations"):
    conversations: list[ConversationInfo]
    next: str | None = None  #: pass as ``before`` for the next (older) page; None: this is the last


class Pong(Frame, tag="pong"):
    pass


class Refreshed(Frame, tag="refreshed"):
    """The ``refresh`` was accepted: the connection now lasts until ``expires_at``."""

    expires_at: int  #: the new token's ``exp``, Unix seconds


class Error(Frame, tag="error"):
    code: ErrorCode
    message: str
    client_msg_id: str | None = None
    retry_after_ms: int | None = None  #: ``rate_limited``: when the same frame would be accepted


ServerFrame = Union[Welcome, Accepted, Event, HistoryResult, ConversationsResult, Pong, Refreshed, Error]

# -- codecs (built once; msgspec perf tip) ------------------------------------

_client_decoder = msgspec.json.Decoder(ClientFrame)
_server_decoder = msgspec.json.Decoder(ServerFrame)
_encoder = msgspec.json.Encoder()


class FrameError(SwitchboardError):
    """A client frame that cannot be accepted; ``code`` goes into the error frame."""

    def __init__(self, code: ErrorCode, message: str, client_msg_id: str | None = None,
                 retry_after_ms: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.client_msg_id = client_msg_id
        self.retry_after_ms = retry_after_ms

    def to_frame(self) -> Error:
        return Error(code=self.code, message=self.message, client_msg_id=self.client_msg_id,
                     retry_after_ms=self.retry_after_ms)


def decode_client_frame(data: str | bytes, max_size: int) -> ClientFrame:
    """Decode one client frame; raise :class:`FrameError` on anything invalid."""
    size = len(data.encode() if isinstance(data, str) else data)
    if size > max_size:
        raise FrameError(ErrorCode.TOO_LARGE, f"frame of {size} bytes exceeds the limit of {max_size}")
    if isinstance(data, bytes):
        # Binary frames are not part of v1: the protocol is JSON text frames.
        raise FrameError(ErrorCode.BAD_FRAME, "binary frames are not accepted; send JSON text frames")
    try:
        return _client_decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise FrameError(ErrorCode.BAD_FRAME, f"invalid frame: {exc}", _client_msg_id_of(data)) from None
    except msgspec.DecodeError as exc:
        raise FrameError(ErrorCode.BAD_FRAME, f"not a JSON frame: {exc}") from None
    except RecursionError:
        # msgspec raises this (not a DecodeError) past Python's recursion limit.
        raise FrameError(ErrorCode.BAD_FRAME, "invalid frame: nested too deeply") from None


def _client_msg_id_of(data: str) -> str | None:
    """Best effort: echo the client_msg_id of an invalid ``send`` so it can match the error."""
    try:
        raw = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return None
    if isinstance(raw, dict):
        value = raw.get("client_msg_id")
        if isinstance(value, str) and len(value) <= 128:
            return value
    return None


def encode(frame: Frame) -> bytes:
    return _encoder.encode(frame)


def encode_text(frame: Frame) -> str:
    """Encode a server frame for a WebSocket *text* frame."""
    return _encoder.encode(frame).decode()


def decode_server_frame(data: str | bytes) -> ServerFrame:
    """Used by clients (tests, benchmarks, the CLI) to read server frames."""
    return _server_decoder.decode(data)
