"""Several gateways behind nginx (the Debian package), as `switchboard run
--gateways N` runs them: devices chat through the load balancer, a gateway
stops, its devices come back through nginx on the other one and lose and
repeat nothing. Skipped where nginx is not installed (`.ci/run` installs it)."""

from __future__ import annotations

import signal

import pytest

from switchboard import nginx
from switchboard.embedded_redis import free_port
from switchboard.shared import keys
from tests.support.client import Device, new_user
from tests.support.cluster import token

pytestmark = pytest.mark.skipif(nginx.binary() is None, reason=f"nginx is not installed: {nginx.INSTALL_HINT}")


def _gateway_of(device: Device, ports: dict[int, str]) -> str:
    """The gateway nginx gave the device's handshake to."""
    upstream = device.ws.response.headers["X-Switchboard-Gateway"]
    return ports[int(upstream.rsplit(":", 1)[1])]


async def test_devices_chat_through_nginx_and_a_stopped_gateways_devices_resume_on_another(cluster, redis_client,
                                                                                           tmp_path):
    env = dict(TRUSTED_PROXIES="127.0.0.1/32")
    cluster.start_many(("fanout", "f1"), ("fanout", "f2"), ("worker", "w1"), ("worker", "w2"),
                       ("gateway", "gw1"), ("gateway", "gw2"), **env)
    ports = {cluster.services[name].port: name for name in ("gw1", "gw2")}
    balancer = nginx.Nginx(tmp_path / "nginx", free_port(), [("127.0.0.1", port) for port in ports])
    balancer.start()
    try:
        user = new_user()
        phone, tablet = Device(balancer.url, token(user), "phone"), Device(balancer.url, token(user), "tablet")
        await phone.connect()
        await tablet.connect()
        on = {_gateway_of(phone, ports), _gateway_of(tablet, ports)}
        assert on == {"gw1", "gw2"}, "round robin: one device on each gateway"
        await phone.send("c", "m1", "one")
        await tablet.wait_reply("m1")
        await phone.wait_reply("m1")

        leaving = _gateway_of(phone, ports)
        assert cluster.kill(leaving, signal.SIGTERM)
        await phone.wait_for(lambda: phone.close_code is not None)
        assert phone.close_code == 1001  # going away: reconnect
        await tablet.send("c", "m2", "two, while the phone is away")
        await tablet.wait_reply("m2")
        # Back through the same address: nginx finds the gateway that is left.
        welcome = await phone.connect(last_id=phone.event_ids()[-1], epoch=phone.welcome["epoch"])
        assert welcome["recovered"] is True and _gateway_of(phone, ports) != leaving
        await phone.wait_reply("m2")
        newcomer = Device(balancer.url, token(user), "laptop")
        await newcomer.connect()
        assert _gateway_of(newcomer, ports) != leaving
        await newcomer.send("c", "m3", "three")
        for device in (phone, tablet, newcomer):
            await device.wait_reply("m3")

        stream = [(entry_id, f["kind"], f["cmid"]) for entry_id, f in await redis_client.xrange(keys.outbound(user))]
        assert [(kind, cmid) for _, kind, cmid in stream] == [
            ("user", "m1"), ("assistant", "m1"), ("user", "m2"), ("assistant", "m2"), ("user", "m3"), ("assistant", "m3")]
        for device in (phone, tablet):  # every event once, in stream order, across the reconnect
            assert device.event_ids() == [entry_id for entry_id, _, _ in stream]
        for device in (phone, tablet, newcomer):
            await device.close()
    finally:
        balancer.stop()
        print(balancer.log_tail())
