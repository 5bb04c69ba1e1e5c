"""Device authentication: JWTs whose ``sub`` is the user id (PyJWT).

A :class:`Verifier` accepts tokens signed one of two ways, never both:

- **HMAC** (``HS256``/``HS384``/``HS512``) with the shared ``JWT_SECRET``
  (at least 32 bytes; see :func:`switchboard.shared.settings.check_jwt`);
- **a public key** (``RS*``, ``PS*``, ``ES*``, ``EdDSA``) of an identity
  provider: one PEM key (``JWT_PUBLIC_KEY_FILE``) or a JWKS document
  (``JWT_JWKS_FILE``) whose keys are chosen by the token's ``kid``.

Keeping the two families apart is what stops *algorithm confusion*: a token
whose header says ``HS256``, signed with the provider's (public) key as an
HMAC secret, names an algorithm the verifier does not accept and is refused
before any key is used. ``none`` is never accepted.

Claims checked: signature, ``exp`` (required), ``sub`` (required, a valid
user id), ``nbf``/``iat`` if present, ``aud`` only when ``JWT_AUDIENCE`` is set
(then required), ``iss`` only when ``JWT_ISSUER`` is set (then required), and
a maximum lifetime: ``exp`` minus ``iat`` (or minus now, without ``iat``, or
when ``iat`` lies ahead) must not exceed ``JWT_MAX_LIFETIME``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import jwt
import msgspec

from switchboard.shared.errors import SwitchboardError
from switchboard.shared.protocol import Name
from switchboard.shared.settings import GatewaySettings, SettingsError

_name_decoder = msgspec.json.Decoder(Name)


class AuthError(SwitchboardError):
    """The token cannot be accepted; the message is safe to show the client."""


class TokenExpired(AuthError):
    """The token was valid but its ``exp`` (plus leeway) has passed."""


@dataclass(frozen=True)
class Claims:
    """What the gateway keeps of an accepted token."""

    user: str
    expires_at: float  #: the token's ``exp``, Unix seconds


class Verifier:
    """Checks tokens against one key (or key set) and the configured claims.

    ``key`` is the HMAC secret, a public key (PEM text) or ``None`` with
    ``jwks``. Build it with :meth:`from_settings` (which reads key files)."""

    def __init__(self, *, algorithms: tuple[str, ...], key: str | None = None, jwks: jwt.PyJWKSet | None = None,
                 audience: str | None = None, issuer: str | None = None, leeway: float = 5.0,
                 max_lifetime: float = 86_400.0):
        if not algorithms or "none" in algorithms:
            raise SettingsError("JWT_ALGORITHMS must name at least one algorithm, never 'none'")
        if (key is None) == (jwks is None):
            raise SettingsError("a verifier needs exactly one of a key and a JWKS")
        self.algorithms = list(algorithms)
        self.key = key
        self.jwks = jwks
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway
        self.max_lifetime = max_lifetime

    @classmethod
    def from_settings(cls, s: GatewaySettings) -> Verifier:
        """The verifier ``s`` describes; :class:`SettingsError` if a key file is
        missing or holds no usable key."""
        common = dict(algorithms=s.jwt_algorithms, audience=s.jwt_audience, issuer=s.jwt_issuer,
                      leeway=s.jwt_leeway, max_lifetime=s.jwt_max_lifetime)
        if s.jwt_jwks_file:
            return cls(jwks=load_jwks(s.jwt_jwks_file, s.jwt_algorithms), **common)
        if s.jwt_public_key_file:
            return cls(key=load_public_key(s.jwt_public_key_file), **common)
        return cls(key=s.jwt_secret, **common)

    def verify(self, token: str) -> Claims:
        """The claims of a valid token, or :class:`AuthError` (:class:`TokenExpired`
        for one that has expired). PyJWT reads the clock for ``exp``/``nbf``/``iat``;
        the lifetime check reads the same clock."""
        now = time.time()
        try:
            key = self._key_for(token)
            claims = jwt.decode(
                token, key, algorithms=self.algorithms, leeway=self.leeway,
                audience=self.audience, issuer=self.issuer,
                options={"require": ["exp", "sub"], "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise TokenExpired("token expired") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        exp = float(claims["exp"])
        issued = claims.get("iat")
        start = min(float(issued), now) if isinstance(issued, (int, float)) else now
        if exp - start > self.max_lifetime:
            raise AuthError(f"invalid token: lifetime {exp - start:.0f} s exceeds the maximum {self.max_lifetime:.0f} s")
        user = claims["sub"]
        try:
            # The user id becomes part of Redis keys: it must be a valid Name.
            _name_decoder.decode(msgspec.json.encode(user))
        except (msgspec.ValidationError, TypeError):
            raise AuthError("token subject is not a valid user id") from None
        return Claims(user=user, expires_at=exp)

    def _key_for(self, token: str) -> str | jwt.PyJWK:
        if self.jwks is None:
            assert self.key is not None
            return self.key
        kid = jwt.get_unverified_header(token).get("kid")
        if kid is None:
            if len(self.jwks.keys) == 1:
                return self.jwks.keys[0]
            raise jwt.InvalidTokenError("the token has no kid and the key set holds several keys")
        for candidate in self.jwks.keys:
            if candidate.key_id == kid:
                return candidate
        raise jwt.InvalidTokenError(f"no key with kid {str(kid)[:64]!r} in the key set")


def load_jwks(path: str, algorithms: tuple[str, ...]) -> jwt.PyJWKSet:
    """The keys of a JWKS file usable with ``algorithms``. A symmetric
    (``oct``) key or one for another algorithm is dropped: PyJWK would make an
    ``oct`` key an HS256 secret, which is exactly the confusion to avoid."""
    text = _read(path, "JWT_JWKS_FILE")
    try:
        keyset = jwt.PyJWKSet.from_json(text)
    except (jwt.PyJWKSetError, jwt.InvalidKeyError, ValueError) as exc:
        raise SettingsError(f"JWT_JWKS_FILE={path}: not a usable JWKS: {exc}") from None
    usable = [k for k in keyset.keys if k.key_type != "oct" and k.algorithm_name in algorithms]
    if not usable:
        raise SettingsError(f"JWT_JWKS_FILE={path}: no key for JWT_ALGORITHMS={','.join(algorithms)}")
    keyset.keys = usable
    return keyset


def load_public_key(path: str) -> str:
    """The PEM text of a public key file, checked to hold one (at start, not
    at the first token)."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    text = _read(path, "JWT_PUBLIC_KEY_FILE")
    try:
        load_pem_public_key(text.encode())
    except ValueError as exc:
        raise SettingsError(f"JWT_PUBLIC_KEY_FILE={path}: not a PEM public key: {exc}") from None
    return text


def _read(path: str, name: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise SettingsError(f"{name}={path}: cannot be read: {exc.strerror}") from None


def verify(token: str, secret: str, *, leeway: float = 5.0) -> str:
    """The user id of a valid HS256 token (development and tests)."""
    return Verifier(algorithms=("HS256",), key=secret, leeway=leeway).verify(token).user


def mint(user: str, secret: str, *, ttl: float = 86_400.0, audience: str | None = None,
         issuer: str | None = None) -> str:
    """Sign an HS256 token for ``user`` (development and tests; production issues its own)."""
    now = int(time.time())
    claims: dict[str, object] = {"sub": user, "iat": now, "exp": now + int(ttl)}
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm="HS256")
