"""The one exception hierarchy of Switchboard.

::

    SwitchboardError
    ├── SettingsError          an environment variable cannot be used (settings)
    ├── ScriptError            a Redis script file is missing (scripts)
    ├── FrameError             a client frame is invalid: answered with its `error` code (protocol)
    ├── AuthError              a token is refused (gateway.auth)
    ├── GraphLoadError         GRAPH names nothing runnable (worker.loader)
    ├── TurnFailed             one attempt at a turn failed in the graph (worker.turns)
    ├── LeaseLostError         another worker owns the conversation now (worker.lease)
    ├── CannotOpen             no key of ENCRYPTION_KEYS opens a sealed value (encryption)
    ├── InvalidKey             an ENCRYPTION_KEYS entry is not a Fernet key (encryption)
    ├── AclError               a Redis user's password is missing or unreadable (acl)
    └── EmbeddedRedisError     the embedded Redis cannot start (embedded_redis)

Redis errors stay redis-py's own (``redis.exceptions.RedisError``): the
services tell an outage from a refused command with
:func:`switchboard.shared.connection.is_outage`.
"""

from __future__ import annotations


class SwitchboardError(Exception):
    """Base of every error Switchboard raises itself."""
