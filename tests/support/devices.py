"""The usual cast of an integration test -- one user's phone and laptop, on two
gateways -- and what a device has been shown."""

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


#: The event kinds that end a turn: one per message.
FINALS = ("assistant", "turn_error", "cancelled")


def finals(device: Device) -> list[tuple[str, str]]:
    """The turns' final events a device got, in order: (kind, client_msg_id)."""
    return [(e["kind"], e["client_msg_id"]) for e in device.events if e["kind"] in FINALS]


def shown(device: Device) -> list[tuple[str, str, str]]:
    """The events a chat shows (no deltas): kind, client_msg_id, text."""
    return [(e["kind"], e["client_msg_id"], e["text"]) for e in device.events if e["kind"] != "delta"]
