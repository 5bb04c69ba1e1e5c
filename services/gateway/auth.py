"""Device authentication: HS256 JWTs whose ``sub`` is the user id (PyJWT)."""

from __future__ import annotations

import time

import jwt
import msgspec

from switchboard.shared.errors import SwitchboardError
from switchboard.shared.protocol import Name

ALGORITHMS = ["HS256"]
_name_decoder = msgspec.json.Decoder(Name)


class AuthError(SwitchboardError):
    """The token cannot be accepted; the message is safe to show the client."""


def verify(token: str, secret: str, *, leeway: float = 5.0) -> str:
    """Return the user id of a valid token, or raise :class:`AuthError`."""
    try:
        claims = jwt.decode(
            token, secret, algorithms=ALGORITHMS, leeway=leeway,
            options={"require": ["exp", "sub"]},
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired") from None
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"invalid token: {exc}") from None
    user = claims["sub"]
    try:
        # The user id becomes part of Redis keys: it must be a valid Name.
        _name_decoder.decode(msgspec.json.encode(user))
    except (msgspec.ValidationError, TypeError):
        raise AuthError("token subject is not a valid user id") from None
    return user


def mint(user: str, secret: str, *, ttl: float = 86_400.0) -> str:
    """Sign a token for ``user`` (development and tests; production issues its own)."""
    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": now + int(ttl)}, secret, algorithm="HS256")
