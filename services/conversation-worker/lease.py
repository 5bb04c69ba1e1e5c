"""A conversation lease: at most one worker runs a conversation's turns.

``SET key token NX PX ttl`` takes it (inside :mod:`.turns`' begin script,
which learns where the conversation stands in the same call); renewal and
release compare the token first (Lua), so a worker that stalled past its lease can neither extend nor
drop a lease another worker now holds. The commit script checks the token
too, which makes the lease a fencing token for the reply. A process
recognises its own tokens (a per-process prefix): a lease it could not
release (Redis was down) it takes back at once instead of waiting out the
TTL.
"""

from __future__ import annotations

import secrets

import redis.asyncio as aioredis

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class LeaseLost(Exception):
    """Another worker owns the conversation now; stop without writing."""


class Leases:
    def __init__(self, redis: aioredis.Redis, ttl: float):
        self.redis = redis
        self.ttl_ms = int(ttl * 1000)
        self.prefix = f"{secrets.token_hex(6)}."  #: this process's tokens
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    def new_token(self) -> str:
        """A token for one taking of a lease; it starts with this process's
        own prefix, so the process can recognise leases it left behind."""
        return self.prefix + secrets.token_hex(8)

    def is_orphan(self, token: str, active: set[str]) -> bool:
        """A lease token this process issued but no longer uses: left behind
        when releasing it failed (Redis down, or restarted from its AOF). A
        conversation runs in one task of one process at a time, so no one
        else can be using it."""
        return token.startswith(self.prefix) and token not in active

    async def renew(self, key: str, token: str) -> bool:
        return bool(await self._renew(keys=[key], args=[token, self.ttl_ms]))

    async def release(self, key: str, token: str) -> None:
        await self._release(keys=[key], args=[token])
