"""A conversation lease: at most one worker runs a conversation's turns.

``SET key token NX PX ttl`` takes it (inside the begin script, which learns
where the conversation stands in the same call); renewal and release compare
the token first, so a worker that stalled past its lease can neither extend
nor drop a lease another worker now holds. The commit script checks the
token too, which makes the lease a fencing token for the reply.

One taking of a lease is a small state machine (:class:`Lease`)::

    HOLDING --commit sent--> COMMITTING --commit answered--> HOLDING  (more entries)
                                        \\-------------------> RELEASED (none left:
                                                                the commit let it go)
    HOLDING or COMMITTING --renewal refused / commit refused--> LOST

A renewal refused while a commit is in flight says nothing yet: that commit
may have released the lease itself, and its answer decides (RELEASED, or
LOST if it was refused too). Only a refusal while HOLDING means another
worker has the conversation.

A process recognises its own tokens (:class:`Tokens`, a per-process prefix):
a lease it could not release (Redis was down) it takes back at once instead
of waiting out the TTL.
"""

from __future__ import annotations

import asyncio
import enum
import secrets

from switchboard.shared.errors import SwitchboardError


class LeaseLostError(SwitchboardError):
    """Another worker owns the conversation now; stop without writing."""


class LeaseState(enum.Enum):
    HOLDING = "holding"
    COMMITTING = "committing"  #: a commit that may release the lease is in flight
    RELEASED = "released"  #: the last commit let it go: nothing left to run
    LOST = "lost"  #: another worker may hold it: write nothing more


class Lease:
    """One taking of a conversation's lease, by one drain."""

    def __init__(self, key: str, token: str):
        self.key = key
        self.token = token
        self.state = LeaseState.HOLDING
        self._settled = asyncio.Event()  #: set whenever no commit is in flight
        self._settled.set()

    def commit_sent(self) -> None:
        if self.state is not LeaseState.HOLDING:
            raise LeaseLostError(f"lease {self.key} is {self.state.value}: no commit may be sent")
        self.state = LeaseState.COMMITTING
        self._settled.clear()

    def commit_answered(self, *, released: bool) -> None:
        """The commit succeeded; ``released``: it found nothing left and let the lease go."""
        if self.state is LeaseState.COMMITTING:
            self.state = LeaseState.RELEASED if released else LeaseState.HOLDING
        self._settled.set()

    def commit_unanswered(self) -> None:
        """The commit failed (Redis went away): whether it ran is unknown,
        and the drain ends; the lease is released on the way out if still ours."""
        if self.state is LeaseState.COMMITTING:
            self.state = LeaseState.HOLDING
        self._settled.set()

    def lose(self) -> None:
        self.state = LeaseState.LOST
        self._settled.set()

    def renewal_refused(self) -> bool:
        """A renewal found the lease not ours. True if that means it is lost
        (so the drain must stop); False while a commit is in flight (wait for
        its answer with :meth:`settled`, then renew again)."""
        if self.state is LeaseState.HOLDING:
            self.lose()
            return True
        return self.state is LeaseState.LOST

    async def settled(self) -> None:
        """Wait until no commit is in flight."""
        await self._settled.wait()

    @property
    def must_release(self) -> bool:
        """Whether the drain still has to release it on its way out."""
        return self.state in (LeaseState.HOLDING, LeaseState.COMMITTING)


class Tokens:
    """The lease tokens of one process."""

    def __init__(self) -> None:
        self.prefix = f"{secrets.token_hex(6)}."  #: this process's tokens
        self.active: set[str] = set()  #: tokens of the drains running now

    def new(self) -> str:
        """A token for one taking of a lease; it starts with this process's
        own prefix, so the process can recognise leases it left behind."""
        return self.prefix + secrets.token_hex(8)

    def is_orphan(self, token: str) -> bool:
        """A lease token this process issued but no longer uses: left behind
        when releasing it failed (Redis down, or restarted from its AOF). A
        conversation runs in one task of one process at a time, so no one
        else can be using it."""
        return token.startswith(self.prefix) and token not in self.active
