"""Which request a server frame answers: pure bookkeeping, no I/O.

The protocol gives ``send``s (and ``resume``, ``regenerate``, ``edit``,
``clear`` with an id) an answer naming a ``client_msg_id``; ``history``,
``conversations``, ``cancel`` and ``rename`` have no request id. Frames of one
connection are handled in the order they were sent, so the client keeps at
most one of those *ordered* requests in flight and takes the next answer of
its kind, or the next ``error`` that names no pending send, as its answer. A
request with no success answer (``cancel``, ``rename``) is followed by a
``ping``: its ``pong`` is the success, an ``error`` before it is the failure.

Sends are matched by ``client_msg_id`` (the error of a send names it).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

from switchboard.shared import protocol as p

from .errors import Overloaded

#: Sends not yet accepted, at most (the gateway's MAX_UNANSWERED default is 100).
MAX_PENDING_SENDS = 100
#: Bytes of the frames of those sends, at most.
MAX_PENDING_BYTES = 4 * 1024 * 1024

Expect = Literal["accepted", "history", "conversations", "pong"]


@dataclass(eq=False)
class Request:
    frame: p.Frame  #: what is sent (``then_ping``: followed by a ``ping``)
    expect: Expect  #: the kind of frame that answers it with success
    cmid: str | None = None  #: ``expect == "accepted"``: the ``client_msg_id`` the answer names
    then_ping: bool = False
    resend_safe: bool = True  #: sending it again after a drop cannot act twice
    size: int = 0  #: bytes of the encoded frame
    waiter: Any = field(default=None, repr=False)  #: what the caller waits on (the I/O layer's)


class Matcher:
    def __init__(self, max_sends: int = MAX_PENDING_SENDS, max_bytes: int = MAX_PENDING_BYTES):
        self.sends: OrderedDict[str, Request] = OrderedDict()
        self.current: Request | None = None
        self._max_sends = max_sends
        self._max_bytes = max_bytes
        self._bytes = 0

    def add_send(self, request: Request) -> Request:
        """Register a send; the same ``client_msg_id`` twice returns the first (one answer for both)."""
        assert request.cmid is not None
        if request.cmid in self.sends:
            return self.sends[request.cmid]
        if len(self.sends) >= self._max_sends or self._bytes + request.size > self._max_bytes:
            raise Overloaded(f"{len(self.sends)} sends ({self._bytes} bytes) wait for `accepted`: at most "
                             f"{self._max_sends} ({self._max_bytes} bytes)")
        self.sends[request.cmid] = request
        self._bytes += request.size
        return request

    def start(self, request: Request) -> None:
        """The ordered request now in flight (one at a time)."""
        if self.current is not None:
            raise RuntimeError("an ordered request is already in flight")
        self.current = request

    def match(self, frame: p.ServerFrame) -> Request | None:
        """The request ``frame`` answers (success or error), removed from the pending; None: no request's."""
        match frame:
            case p.Accepted(client_msg_id=cmid):
                if cmid in self.sends:
                    return self._pop_send(cmid)
                if self.current is not None and self.current.expect == "accepted" and self.current.cmid == cmid:
                    return self._pop_current()
            case p.Error(client_msg_id=cmid, code=code):
                if cmid is not None and cmid in self.sends and code != p.ErrorCode.UNREADABLE:
                    return self._pop_send(cmid)
                if self.current is not None:
                    if code == p.ErrorCode.UNREADABLE and self.current.expect != "history":
                        return None  # in place of an event, not an answer
                    return self._pop_current()
            case p.HistoryResult() if self.current is not None and self.current.expect == "history":
                return self._pop_current()
            case p.ConversationsResult() if self.current is not None and self.current.expect == "conversations":
                return self._pop_current()
            case p.Pong() if self.current is not None and self.current.expect == "pong":
                return self._pop_current()
        return None

    def forget(self, request: Request) -> None:
        """A caller gave up waiting (cancelled): drop its bookkeeping."""
        if request.cmid is not None and self.sends.get(request.cmid) is request:
            self._pop_send(request.cmid)
        if self.current is request:
            self.current = None

    def disconnected(self) -> list[Request]:
        """After a drop: the requests that fail (outcome unknown: resending could act twice), removed."""
        current = self.current
        if current is None or current.resend_safe:
            return []
        self.current = None
        return [current]

    def pending(self) -> list[Request]:
        """What to send again on a new connection, in order: every send not yet
        accepted (the same ``client_msg_id``: answered once), then the ordered request."""
        return list(self.sends.values()) + ([self.current] if self.current is not None else [])

    def _pop_send(self, cmid: str) -> Request:
        request = self.sends.pop(cmid)
        self._bytes -= request.size
        return request

    def _pop_current(self) -> Request:
        request, self.current = self.current, None
        assert request is not None
        return request
