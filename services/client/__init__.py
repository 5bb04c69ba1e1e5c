"""The reference client of the Switchboard protocol (docs/client.md).

:class:`Client` keeps one device connected, resumes exactly after drops and
yields each event once; :class:`Replies` assembles streamed replies; the
state stores keep the device's position between runs.
"""

from .client import Client, ConnectionState
from .errors import ClientClosed, ClientError, OutcomeUnknown, Overloaded, RequestFailed
from .policy import Backoff, Next, after_close
from .replies import Replies, Reply
from .state import FileState, MemoryState, Position, StateStore
from .stream import Gap

__all__ = ["Backoff", "Client", "ClientClosed", "ClientError", "ConnectionState", "FileState", "Gap",
           "MemoryState", "Next", "OutcomeUnknown", "Overloaded", "Position", "Replies", "Reply",
           "RequestFailed", "StateStore", "after_close"]
