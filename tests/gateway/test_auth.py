"""Token verification (services/gateway/auth.py) and the connection's token
deadline (services/gateway/expiry.py): no sockets, keys made here."""

from __future__ import annotations

import asyncio
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from switchboard.gateway import auth
from switchboard.gateway.expiry import TokenDeadline
from switchboard.shared.settings import GatewaySettings, SettingsError

SECRET = "s" * 32
NOW = 1_800_000_000.0  # for the deadline, whose clock is passed in


def hs(claims: dict, secret: str = SECRET, **headers) -> str:
    return jwt.encode(claims, secret, algorithm="HS256", headers=headers or None)


def claims(user: str = "alice", ttl: float = 600, **extra) -> dict:
    now = int(time.time())  # PyJWT reads the clock itself for exp, nbf and iat
    return {"sub": user, "iat": now, "exp": now + int(ttl), **extra}


def hmac_verifier(**kw) -> auth.Verifier:
    return auth.Verifier(algorithms=("HS256",), key=SECRET, **kw)


def rsa_pair() -> tuple[rsa.RSAPrivateKey, str]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, pem


@pytest.fixture(scope="module")
def rsa_key():
    return rsa_pair()


# -- HMAC ---------------------------------------------------------------------------


def test_tokens_verify_and_fail_with_reasons():
    assert auth.verify(auth.mint("alice", SECRET), SECRET) == "alice"
    with pytest.raises(auth.TokenExpired, match="expired"):
        auth.verify(auth.mint("alice", SECRET, ttl=-60), SECRET)
    with pytest.raises(auth.AuthError, match="invalid"):
        auth.verify(auth.mint("alice", SECRET), "another-secret-of-enough-length!")
    no_exp = jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256")
    with pytest.raises(auth.AuthError):
        auth.verify(no_exp, SECRET)
    none_alg = jwt.encode({"sub": "alice", "exp": time.time() + 60}, None, algorithm="none")
    with pytest.raises(auth.AuthError):
        auth.verify(none_alg, SECRET)
    bad_sub = jwt.encode({"sub": "al{ice}", "exp": time.time() + 60}, SECRET, algorithm="HS256")
    with pytest.raises(auth.AuthError, match="subject"):
        auth.verify(bad_sub, SECRET)


def test_claims_carry_the_user_and_the_expiry():
    token = claims(ttl=90)
    assert hmac_verifier().verify(hs(token)) == auth.Claims("alice", token["exp"])


def test_leeway_accepts_a_token_just_past_exp_and_no_later():
    late = hs({"sub": "alice", "iat": int(time.time()) - 20, "exp": int(time.time()) - 3})
    assert hmac_verifier(leeway=5).verify(late).user == "alice"
    with pytest.raises(auth.TokenExpired):
        hmac_verifier(leeway=0).verify(late)


def test_aud_is_ignored_unless_an_audience_is_configured_then_required():
    now = time.time()
    with_aud = hs({"sub": "alice", "exp": now + 60, "aud": "switchboard"})
    other_aud = hs({"sub": "alice", "exp": now + 60, "aud": "another-app"})
    no_aud = hs({"sub": "alice", "exp": now + 60})
    assert hmac_verifier().verify(with_aud).user == "alice"  # PyJWT alone would refuse it
    assert hmac_verifier().verify(other_aud).user == "alice"
    strict = hmac_verifier(audience="switchboard")
    assert strict.verify(with_aud).user == "alice"
    for token in (other_aud, no_aud):
        with pytest.raises(auth.AuthError, match="(?i)aud"):
            strict.verify(token)


def test_iss_is_required_when_an_issuer_is_configured():
    now = time.time()
    good = hs({"sub": "alice", "exp": now + 60, "iss": "https://id.example"})
    assert hmac_verifier().verify(hs({"sub": "alice", "exp": now + 60})).user == "alice"
    strict = hmac_verifier(issuer="https://id.example")
    assert strict.verify(good).user == "alice"
    for token in (hs({"sub": "alice", "exp": now + 60}), hs({"sub": "alice", "exp": now + 60, "iss": "evil"})):
        with pytest.raises(auth.AuthError, match="iss"):
            strict.verify(token)


def test_a_token_valid_for_longer_than_the_maximum_lifetime_is_refused():
    verifier = hmac_verifier(max_lifetime=3600)
    now = time.time()
    assert verifier.verify(hs({"sub": "a", "iat": int(now), "exp": int(now) + 3600})).user == "a"
    with pytest.raises(auth.AuthError, match="lifetime"):
        verifier.verify(hs({"sub": "a", "iat": int(now), "exp": int(now) + 3601}))
    # Without iat the remaining validity counts; an old iat does not shorten it.
    with pytest.raises(auth.AuthError, match="lifetime"):
        verifier.verify(hs({"sub": "a", "exp": int(now) + 7200}))
    assert verifier.verify(hs({"sub": "a", "exp": int(now) + 600})).user == "a"
    with pytest.raises(auth.AuthError, match="lifetime"):
        verifier.verify(hs({"sub": "a", "iat": int(now) - 100_000, "exp": int(now) + 60}))


# -- public keys ----------------------------------------------------------------------


def test_rs256_with_a_public_key_file(tmp_path, rsa_key):
    private, pem = rsa_key
    (tmp_path / "key.pem").write_text(pem)
    settings = GatewaySettings.from_env({"JWT_ALGORITHMS": "RS256", "JWT_PUBLIC_KEY_FILE": str(tmp_path / "key.pem")})
    verifier = auth.Verifier.from_settings(settings)
    token = jwt.encode({"sub": "alice", "exp": time.time() + 60}, private, algorithm="RS256")
    assert verifier.verify(token).user == "alice"
    other, _ = rsa_pair()
    with pytest.raises(auth.AuthError, match="invalid"):
        verifier.verify(jwt.encode({"sub": "alice", "exp": time.time() + 60}, other, algorithm="RS256"))


def test_an_hs256_token_signed_with_the_public_key_is_refused(rsa_key):
    """Algorithm confusion: the public key is public; as an HMAC secret it
    would let anyone sign."""
    _, pem = rsa_key
    verifier = auth.Verifier(algorithms=("RS256",), key=pem)
    header = {"alg": "HS256", "typ": "JWT"}
    payload = {"sub": "mallory", "exp": int(time.time()) + 60}
    # Forged by hand: PyJWT itself refuses to use a PEM key as an HMAC secret.
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = b64(json.dumps(header).encode()) + b"." + b64(json.dumps(payload).encode())
    forged = (signing_input + b"." + b64(hmac.new(pem.encode(), signing_input, hashlib.sha256).digest())).decode()
    with pytest.raises(auth.AuthError, match="alg"):
        verifier.verify(forged)


def test_es256_from_a_jwks_file_chosen_by_kid(tmp_path):
    one, two = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    jwks = {"keys": [
        {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(k.public_key())), "kid": kid, "alg": "ES256", "use": "sig"}
        for k, kid in ((one, "k1"), (two, "k2"))
    ] + [{"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA", "kid": "sym"}]}
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    settings = GatewaySettings.from_env({"JWT_ALGORITHMS": "ES256", "JWT_JWKS_FILE": str(tmp_path / "jwks.json")})
    verifier = auth.Verifier.from_settings(settings)
    exp = time.time() + 60
    assert verifier.verify(jwt.encode({"sub": "a", "exp": exp}, one, "ES256", headers={"kid": "k1"})).user == "a"
    assert verifier.verify(jwt.encode({"sub": "b", "exp": exp}, two, "ES256", headers={"kid": "k2"})).user == "b"
    with pytest.raises(auth.AuthError, match="invalid"):  # signed by k1, claims k2
        verifier.verify(jwt.encode({"sub": "a", "exp": exp}, one, "ES256", headers={"kid": "k2"}))
    with pytest.raises(auth.AuthError, match="no key"):
        verifier.verify(jwt.encode({"sub": "a", "exp": exp}, one, "ES256", headers={"kid": "k9"}))
    with pytest.raises(auth.AuthError, match="kid"):
        verifier.verify(jwt.encode({"sub": "a", "exp": exp}, one, "ES256"))
    # The symmetric key in the set is never used: it would be an HS256 secret.
    sym = jwt.encode({"sub": "a", "exp": exp}, b"secret-secret-secret-secret-secret", "HS256", headers={"kid": "sym"})
    with pytest.raises(auth.AuthError):
        verifier.verify(sym)


def test_key_files_that_cannot_be_used_stop_the_start(tmp_path):
    env = {"JWT_ALGORITHMS": "RS256"}
    with pytest.raises(SettingsError, match="cannot be read"):
        auth.Verifier.from_settings(GatewaySettings.from_env({**env, "JWT_PUBLIC_KEY_FILE": str(tmp_path / "none")}))
    (tmp_path / "bad.pem").write_text("not a key")
    with pytest.raises(SettingsError, match="not a PEM public key"):
        auth.Verifier.from_settings(GatewaySettings.from_env({**env, "JWT_PUBLIC_KEY_FILE": str(tmp_path / "bad.pem")}))
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}))
    with pytest.raises(SettingsError, match="JWT_JWKS_FILE"):
        auth.Verifier.from_settings(GatewaySettings.from_env({**env, "JWT_JWKS_FILE": str(tmp_path / "jwks.json")}))


# -- the connection's deadline ----------------------------------------------------------


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_deadline_is_exp_plus_leeway_and_a_refresh_moves_it():
    clock = Clock(NOW)
    deadline = TokenDeadline(NOW + 10, leeway=2, clock=clock)
    clock.now = NOW + 11.9
    assert not deadline.passed()
    clock.now = NOW + 12
    assert deadline.passed()
    deadline.move(NOW + 100)
    assert not deadline.passed()
    assert deadline.end() and not deadline.end()  # the connection is closed once


async def test_the_timer_follows_a_refresh_both_ways():
    deadline = TokenDeadline(time.time() + 0.3, leeway=0)
    waiter = asyncio.create_task(deadline.wait())
    await asyncio.sleep(0.1)
    deadline.move(time.time() + 0.6)  # refreshed: later
    await asyncio.sleep(0.35)
    assert not waiter.done()
    deadline.move(time.time() + 0.05)  # a token that expires sooner: sooner
    await asyncio.wait_for(waiter, 0.3)
    assert deadline.passed()


# -- the frames ---------------------------------------------------------------------------


def test_refresh_and_refreshed_frames():
    from switchboard.shared import protocol as p

    assert p.decode_client_frame('{"type": "refresh", "token": "t"}', 1024) == p.Refresh(token="t")
    for bad in ('{"type": "refresh"}', '{"type": "refresh", "token": ""}', '{"type": "refresh", "token": 5}'):
        with pytest.raises(p.FrameError) as info:
            p.decode_client_frame(bad, 1024)
        assert info.value.code is p.ErrorCode.BAD_FRAME
    for frame in (p.Refreshed(expires_at=1_800_000_000),
                  p.Welcome(user_id="u", device_id="d", epoch="e", resume_from="0-0", recovered=True, expires_at=9)):
        text = p.encode_text(frame)
        assert p.decode_server_frame(text) == frame
    assert json.loads(p.encode_text(p.Refreshed(expires_at=7))) == {"type": "refreshed", "expires_at": 7}
    assert p.CloseCode.TOKEN_EXPIRED == 4004 and p.ErrorCode.TOKEN_EXPIRED.value == "token_expired"
