"""The exceptions of :mod:`switchboard.client`.

::

    ClientError                  base of everything the client raises
    ├── RequestFailed            the server answered a request with an ``error`` frame (``code``)
    ├── OutcomeUnknown           the connection dropped before the answer, and resending is not safe
    ├── Overloaded               a documented limit of the client was reached (pending sends)
    └── ClientClosed             the client stopped (``close()``, or a close code it must not reconnect on)
"""

from __future__ import annotations

from switchboard.shared.protocol import Error


class ClientError(Exception):
    """Base of every error :mod:`switchboard.client` raises."""


class RequestFailed(ClientError):
    """An ``error`` frame answered the request: ``code`` is the protocol's stable code."""

    def __init__(self, error: Error):
        super().__init__(f"{error.code.value}: {error.message}")
        self.code: str = error.code.value
        self.message = error.message
        self.client_msg_id = error.client_msg_id
        self.retry_after_ms = error.retry_after_ms


class OutcomeUnknown(ClientError):
    """The connection dropped while the request was in flight and sending it
    again could act twice (``cancel``, ``resume``): look at the events."""


class Overloaded(ClientError):
    """A bound of the client was reached (see :mod:`switchboard.client.limits`)."""


class ClientClosed(ClientError):
    """The client has stopped; ``code`` is the close code that stopped it (None: closed locally)."""

    def __init__(self, message: str, code: int | None = None, reason: str = ""):
        super().__init__(message)
        self.code = code
        self.reason = reason
