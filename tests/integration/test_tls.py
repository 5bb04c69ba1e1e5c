"""wss://: the gateway serves TLS with SSL_CERTFILE/SSL_KEYFILE, with a
certificate the test makes."""

from __future__ import annotations

import ssl

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidMessage

from tests.support.certs import client_context, self_signed
from tests.support.client import Device, new_user
from tests.support.cluster import token


async def test_a_device_chats_over_wss_and_plain_ws_is_refused(cluster, tmp_path):
    cert, key = self_signed(tmp_path)
    cluster.start("fanout", "f")
    cluster.start("worker", "w")
    gateway = cluster.start("gateway", "gw", SSL_CERTFILE=str(cert), SSL_KEYFILE=str(key))
    assert "listening on wss://" in gateway.log_text()
    url = f"wss://127.0.0.1:{gateway.port}/ws"
    phone = Device(url, token(new_user()), "phone", ssl=client_context(cert))
    await phone.connect()
    await phone.send("c", "m1", "over TLS")
    reply = await phone.wait_reply("m1")
    assert reply["text"].startswith("Turn 1.")
    await phone.close()
    # A client that does not trust the certificate, and one without TLS, get nowhere.
    with pytest.raises(ssl.SSLCertVerificationError):
        await connect(url)
    with pytest.raises((InvalidMessage, ConnectionError, OSError)):
        async with connect(f"ws://127.0.0.1:{gateway.port}/ws", open_timeout=5):
            pass


def test_a_gateway_with_a_key_and_no_certificate_does_not_start(cluster, tmp_path):
    _, key = self_signed(tmp_path)
    with pytest.raises(RuntimeError, match="SSL_KEYFILE is set without SSL_CERTFILE"):
        cluster.start("gateway", "gw", SSL_KEYFILE=str(key))
