"""``switchboard nodes`` and ``switchboard devices USER``: who is where, read
from the node registry and the admission keys (:mod:`switchboard.shared.nodes`).

Both read only, as any user with read access to those keys; an operator
runs them as ``sb-admin`` (``REDIS_USERNAME``/``REDIS_PASSWORD_FILE``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Mapping

from redis.exceptions import RedisError

from switchboard.shared import nodes
from switchboard.shared.connection import make_client
from switchboard.shared.settings import RedisSettings


async def _nodes(settings: RedisSettings) -> dict[str, list[nodes.Node]]:
    client = make_client(settings, max_connections=4)
    try:
        return await nodes.list_nodes(client)
    finally:
        await client.aclose()


async def _devices(settings: RedisSettings, user: str) -> tuple[list[nodes.DeviceSlot], set[str]]:
    client = make_client(settings, max_connections=4)
    try:
        devices = await nodes.user_devices(client, user)
        gateways = await nodes.list_nodes(client, ("gateway",))
        return devices, {node.id for node in gateways["gateway"]}
    finally:
        await client.aclose()


def cmd_nodes(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Every live node by tier: its record and the age of its last heartbeat."""
    settings = RedisSettings.from_env(env)
    try:
        listing = asyncio.run(_nodes(settings))
    except (RedisError, OSError) as exc:
        return _unreachable(exc)
    if args.json:
        print(json.dumps({tier: [node.as_json() for node in found] for tier, found in listing.items()}))
    else:
        sys.stdout.write(nodes.format_nodes(listing))
    return 0


def cmd_devices(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """A user's connected devices and the gateway each is on."""
    from switchboard.admin import check_user

    check_user(args.user)  # the ids tokens may carry, as the gateway checks them
    settings = RedisSettings.from_env(env)
    try:
        devices, live = asyncio.run(_devices(settings, args.user))
    except (RedisError, OSError) as exc:
        return _unreachable(exc)
    if args.json:
        print(json.dumps([{**device.as_json(), "gateway_registered": device.gateway in live}
                          for device in devices]))
    else:
        sys.stdout.write(nodes.format_devices(args.user, devices, live))
    return 0


def _unreachable(exc: BaseException) -> int:
    print(f"switchboard: cannot read the registry from Redis: {exc.__class__.__name__}: {exc}", file=sys.stderr)
    return 1
