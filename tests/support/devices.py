"""The usual cast of an integration test: one user's phone and laptop, on two gateways."""

from __future__ import annotations

from tests.support.client import Device
from tests.support.cluster import token


async def phone_and_laptop(cluster, user: str, gateways: tuple[str, str] = ("gw1", "gw2")) -> tuple[Device, Device]:
    """Two devices of ``user``, connected: the phone to the first gateway, the laptop to the second."""
    phone = Device(cluster.services[gateways[0]].url, token(user), "phone")
    laptop = Device(cluster.services[gateways[1]].url, token(user), "laptop")
    await phone.connect()
    await laptop.connect()
    return phone, laptop
