"""Tokens on live connections: expiry closes 4004 and a reconnect with a new
token and ``last_id`` loses nothing; ``refresh`` extends a connection, for
the same user only; identity providers' keys (RS256 key file, ES256 JWKS with
aud/iss); a gateway refuses to start on the development key. Real service
processes, a real Redis and real sockets."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from switchboard.shared import keys
from switchboard.shared.settings import DEV_JWT_SECRET
from tests.support.client import Device, new_user
from tests.support.cluster import JWT_SECRET, token

SLOW = "tests.support.graphs:slow"


@pytest.fixture
def system(cluster):
    """One fanout, worker and gateway; tokens judged with no leeway, so expiry is prompt."""
    cluster.start_many(("fanout", "f"), ("worker", "w"), ("gateway", "gw"), GRAPH=SLOW, JWT_LEEWAY="0")
    return cluster


async def _refused(url: str, token_: str) -> tuple[dict, int | None]:
    """The error frame and close code a hello with ``token_`` gets."""
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "hello", "token": token_, "device_id": "d"}))
        error = json.loads(await asyncio.wait_for(ws.recv(), 10))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        return error, ws.close_code


def _frames_of(device: Device, type_: str) -> list[dict]:
    return [f for f in device.frames if f["type"] == type_]


async def test_an_expired_token_closes_4004_and_a_reconnect_with_last_id_loses_nothing(system, redis_client):
    user = new_user()
    url = system.services["gw"].url
    phone = Device(url, token(user, ttl=4), "phone")
    welcome = await phone.connect()
    assert welcome["expires_at"] - time.time() <= 4
    # Replies keep coming while the token runs out: eight turns of ~0.6 s.
    for i in range(8):
        await phone.send("c", f"m{i}", f"sleep:0.6 message {i}")
    await phone.wait_for(lambda: phone.close_code is not None, timeout=10)
    assert phone.close_code == 4004
    assert _frames_of(phone, "error")[-1]["code"] == "token_expired"
    assert time.time() >= welcome["expires_at"]
    missed_before = len(phone.replies("m7"))
    assert missed_before == 0, "the scenario needs replies still to come after the expiry"

    last_id = phone.events[-1]["id"]
    phone.token = token(user, ttl=60)
    await phone.connect(last_id=last_id, epoch=welcome["epoch"])
    await phone.wait_reply("m7", timeout=20)
    stream = [entry_id for entry_id, _ in await redis_client.xrange(keys.outbound(user))]
    assert phone.event_ids() == stream  # every event exactly once, in order, across both connections
    assert [e["client_msg_id"] for e in phone.events if e["kind"] == "assistant"] == [f"m{i}" for i in range(8)]


async def test_a_send_after_expiry_is_not_accepted(system, redis_client):
    user = new_user()
    phone = Device(system.services["gw"].url, token(user, ttl=3), "phone")
    welcome = await phone.connect()
    await asyncio.sleep(max(0.0, welcome["expires_at"] - time.time()) + 0.05)
    with pytest.raises(ConnectionClosed):
        for i in range(60):  # until the socket is closed under us (within 3 s)
            await phone.send("c", f"late{i}", "after expiry")
            await asyncio.sleep(0.05)
    await phone.wait_for(lambda: phone.close_code is not None, timeout=5)
    assert phone.close_code == 4004
    assert not _frames_of(phone, "accepted")
    assert await redis_client.xlen(keys.inbound(user, "c")) == 0


async def test_refresh_before_expiry_keeps_the_connection_open_past_the_old_expiry(system):
    user = new_user()
    phone = Device(system.services["gw"].url, token(user, ttl=3), "phone")
    welcome = await phone.connect()
    await phone.send_raw(json.dumps({"type": "refresh", "token": token(user, ttl=60)}))
    refreshed = await phone.wait_frame("refreshed", timeout=5)
    assert refreshed["expires_at"] >= welcome["expires_at"] + 50
    await asyncio.sleep(max(0.0, welcome["expires_at"] - time.time()) + 1.0)
    await phone.send("c", "m1", "still here")
    await phone.wait_frame("accepted", client_msg_id="m1", timeout=5)
    await phone.wait_reply("m1")
    assert phone.close_code is None
    await phone.close()


async def test_a_bad_refresh_is_refused_and_another_users_token_closes_4001(system):
    user, other = new_user(), new_user()
    phone = Device(system.services["gw"].url, token(user, ttl=60), "phone")
    await phone.connect()
    expired = token(user, ttl=-30)
    forged = jwt.encode({"sub": user, "exp": int(time.time()) + 60}, "another-secret-0123456789abcdef-x", "HS256")
    for bad in (expired, forged):
        await phone.send_raw(json.dumps({"type": "refresh", "token": bad}))
    await phone.wait_for(lambda: len(_frames_of(phone, "error")) == 2, timeout=5)
    assert [e["code"] for e in _frames_of(phone, "error")] == ["unauthorized", "unauthorized"]
    await phone.send("c", "m1", "the connection goes on")
    await phone.wait_frame("accepted", client_msg_id="m1", timeout=5)

    await phone.send_raw(json.dumps({"type": "refresh", "token": token(other, ttl=60)}))
    await phone.wait_for(lambda: phone.close_code is not None, timeout=5)
    assert phone.close_code == 4001
    assert _frames_of(phone, "error")[-1]["code"] == "unauthorized"


def _pem(private) -> str:
    return private.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo).decode()


async def test_rs256_tokens_of_an_identity_provider_via_a_public_key_file(cluster, tmp_path):
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "idp.pem").write_text(_pem(private))
    cluster.start("fanout", "f")
    gw = cluster.start("gateway", "gw", JWT_ALGORITHMS="RS256", JWT_PUBLIC_KEY_FILE=str(tmp_path / "idp.pem"))
    user = new_user()
    good = jwt.encode({"sub": user, "iat": int(time.time()), "exp": int(time.time()) + 60}, private, "RS256")
    welcome = await Device(gw.url, good, "phone").connect()
    assert welcome["user_id"] == user
    # An HS256 token, even one signed with the public key as its secret, is refused.
    error, code = await _refused(gw.url, token(user))
    assert (error["code"], code) == ("unauthorized", 4001)
    forged = _hs256_with_key(_pem(private), {"sub": user, "exp": int(time.time()) + 60})
    error, code = await _refused(gw.url, forged)
    assert (error["code"], code) == ("unauthorized", 4001) and "alg" in error["message"]


def _hs256_with_key(secret: str, claims: dict) -> str:
    """An HS256 token signed with ``secret`` by hand (PyJWT refuses PEM secrets)."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(json.dumps(claims).encode())
    return (signing_input + b"." + b64(hmac.new(secret.encode(), signing_input, hashlib.sha256).digest())).decode()


async def test_es256_tokens_from_a_jwks_file_with_required_audience_and_issuer(cluster, tmp_path):
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key())), "kid": "2026-12", "alg": "ES256"}
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    cluster.start("fanout", "f")
    gw = cluster.start("gateway", "gw", JWT_ALGORITHMS="ES256", JWT_JWKS_FILE=str(tmp_path / "jwks.json"),
                       JWT_AUDIENCE="switchboard", JWT_ISSUER="https://id.example")
    user, now = new_user(), int(time.time())
    claims = {"sub": user, "iat": now, "exp": now + 60, "aud": "switchboard", "iss": "https://id.example"}

    def sign(**changes) -> str:
        return jwt.encode({k: v for k, v in {**claims, **changes}.items() if v is not None}, private, "ES256",
                          headers={"kid": "2026-12"})

    assert (await Device(gw.url, sign(), "phone").connect())["user_id"] == user
    for bad in (sign(aud=None), sign(aud="another-app"), sign(iss=None), sign(iss="https://evil.example"),
                sign(exp=now + 2 * 86_400)):  # longer than JWT_MAX_LIFETIME (24 h)
        error, code = await _refused(gw.url, bad)
        assert (error["code"], code) == ("unauthorized", 4001), error


def test_a_gateway_refuses_to_start_on_the_development_key(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JWT_", "SWITCHBOARD_"))}
    for extra, message in (({}, "development key"), ({"JWT_SECRET": DEV_JWT_SECRET}, "development key"),
                           ({"JWT_SECRET": "short"}, "at least 32"),
                           ({"JWT_ALGORITHMS": "RS256", "JWT_PUBLIC_KEY_FILE": str(tmp_path / "none.pem")},
                            "cannot be read")):
        result = subprocess.run([sys.executable, "-m", "switchboard.cli", "gateway"], env={**env, **extra},
                                capture_output=True, text=True, timeout=30)  # refused at start, never serving
        assert result.returncode == 2 and message in result.stderr, result.stderr
    assert JWT_SECRET != DEV_JWT_SECRET and len(JWT_SECRET) >= 32  # the test harness needs no development mode
