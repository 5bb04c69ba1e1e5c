"""Every tier speaks ``rediss://`` (Redis over TLS), verifying the server's
certificate: a full turn through a TLS-terminating proxy in front of Redis,
with a certificate the test makes. (The embedded redis-server has no TLS
built in, so the proxy stands in for a Redis with TLS enabled.)"""

from __future__ import annotations

from urllib.parse import quote, urlsplit

import pytest

from tests.support.certs import self_signed
from tests.support.client import Device, new_user
from tests.support.cluster import Cluster, token
from tests.support.tlsproxy import TLSProxy


async def test_every_tier_works_over_rediss(clean_redis, tmp_path):
    cert, key = self_signed(tmp_path)
    plain = urlsplit(clean_redis)
    with TLSProxy(plain.port, cert, key) as proxy:
        # The operator's credentials (plain.username/password) let the
        # cluster find each tier's user: the services log in as those.
        login = f"{plain.username or ''}:{plain.password}@" if plain.password else ""
        url = f"rediss://{login}localhost:{proxy.port}/0?ssl_ca_certs={quote(str(cert))}"
        cluster = Cluster(url, tmp_path)
        try:
            cluster.start_many(("fanout", "f"), ("gateway", "gw"), ("worker", "w"))
            phone = Device(cluster.services["gw"].url, token(new_user()), "phone")
            await phone.connect()
            await phone.send("c", "m1", "over TLS to Redis")
            reply = await phone.wait_reply("m1")
            assert reply["text"].startswith("Turn 1.")
            await phone.close()
        finally:
            cluster.stop()
        assert proxy.connections >= 3  # each tier connected through TLS


def test_a_client_that_does_not_trust_the_certificate_does_not_start(clean_redis, tmp_path):
    cert, key = self_signed(tmp_path)
    with TLSProxy(urlsplit(clean_redis).port, cert, key) as proxy:
        cluster = Cluster(f"rediss://localhost:{proxy.port}/0", tmp_path)
        try:
            with pytest.raises(RuntimeError):
                cluster.start("gateway", "gw", timeout=15)
        finally:
            cluster.stop()
