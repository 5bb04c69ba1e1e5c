"""A conversation lease: at most one worker runs a conversation's turns.

``SET key token NX PX ttl`` takes it (inside :mod:`.turns`' begin script,
which learns where the conversation stands in the same call); renewal and
release compare the token first (Lua), so a worker that stalled past its lease can neither extend nor
drop a lease another worker now holds. The commit script checks the token
too, which makes the lease a fencing token for the reply.
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
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    @staticmethod
    def new_token() -> str:
        return secrets.token_hex(8)

    async def renew(self, key: str, token: str) -> bool:
        return bool(await self._renew(keys=[key], args=[token, self.ttl_ms]))

    async def release(self, key: str, token: str) -> None:
        await self._release(keys=[key], args=[token])
