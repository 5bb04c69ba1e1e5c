"""Service processes for integration tests (the harness lives in the bench package:
tests import bench, bench never imports tests).

*Under the ACLs.* Every service a test starts here logs in as its tier's
Redis user (``shared/acl.py``), so the whole integration suite runs under
the rules a production Redis gets: a right a tier lacks fails the test that
needs it. The URL a test passes (``redis_url``, ``server.url``) is the
operator's (``sb-admin``); the tiers' passwords are the ones the embedded
Redis keeps in its data directory, found through the server's ``dir``
setting. A Redis without them (``REDIS_URL`` set for the suite, a proxy
whose URL carries no operator) runs the services with the URL as given.

On :meth:`Cluster.stop` the server's ACL log is read: any command, key or
channel refused to a tier user while the cluster ran fails the test
(:class:`AclDenied`) -- redis-py and the services log and retry some
refusals, which would otherwise pass unseen.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.cluster
from redis.exceptions import RedisError

from bench import harness
from bench.harness import FAST_ENV, JWT_SECRET, Service, process_memory, token
from switchboard.embedded_redis import password_files
from switchboard.shared import acl
from switchboard.shared.connection import make_sync_client
from switchboard.shared.settings import RedisSettings

__all__ = ["FAST_ENV", "JWT_SECRET", "AclDenied", "Cluster", "Service", "process_memory", "tier_env", "token"]

_TIER_USERS = {acl.USERS[tier].name for tier in acl.SERVICE_TIERS}


class AclDenied(AssertionError):
    """Redis refused a tier user something while the cluster ran."""


def _operator(url: str, env: dict[str, str] | None = None) -> redis.Redis | None:
    """A client of ``url`` if it logs in as the operator, else None (``env``:
    the services' settings, for a sentinel's password)."""
    settings = RedisSettings(url=url, socket_timeout=5,
                             sentinel_password=(env or {}).get("REDIS_SENTINEL_PASSWORD"))
    if settings.username != acl.ADMIN.name:
        return None
    return make_sync_client(settings)  # redis://, rediss:// or redis+sentinel://


def tier_env(url: str, env: dict[str, str] | None = None) -> dict[str, dict[str, str]]:
    """What each tier's service needs to log in as its user on the embedded
    Redis behind ``url`` (an operator's URL): ``REDIS_USERNAME`` and
    ``REDIS_PASSWORD_FILE``, per tier; empty when there are none to find."""
    client = _operator(url, env)
    if client is None:
        return {}
    try:
        directory = client.config_get("dir")["dir"]
    except (RedisError, OSError, KeyError):
        return {}
    finally:
        client.close()
    files = password_files(directory)
    return {tier: {"REDIS_USERNAME": acl.USERS[tier].name, "REDIS_PASSWORD_FILE": str(files[tier])}
            for tier in acl.SERVICE_TIERS if tier in files}


@dataclass
class Cluster(harness.Cluster):
    """:class:`bench.harness.Cluster` whose services log in as their tier's user."""

    #: Each tier's login (``REDIS_USERNAME``, ``REDIS_PASSWORD_FILE``); None:
    #: found on the embedded Redis behind ``redis_url`` (:func:`tier_env`).
    tiers: dict[str, dict[str, str]] | None = field(default=None, repr=False)
    _logged: bool = field(default=False, repr=False)

    def start(self, kind: str, name: str | None = None, timeout: float = 30.0, wait: bool = True,
              **env: str) -> Service:
        if not self._logged:
            # Looked up when the first service starts: Redis is up by then.
            if self.tiers is None:
                self.tiers = tier_env(self.redis_url, self.env)
            self._reset_acl_log()
            self._logged = True
        # REDIS_USERNAME / REDIS_PASSWORD_FILE replace the credentials of the
        # operator's REDIS_URL the harness passes (RedisSettings).
        return super().start(kind, name, timeout, wait, **{**self.tiers.get(kind, {}), **env})

    def denials(self) -> list[dict]:
        """The ACL log's entries for tier users (newest first; on a Redis
        Cluster, every node's, node by node)."""
        client = _operator(self.redis_url, self.env)
        if client is None:
            return []
        found: list[dict] = []
        try:
            for node in _nodes(client):
                with contextlib.suppress(RedisError, OSError):
                    found += [entry for entry in _on(client, node, "ACL LOG") if entry.get("username") in _TIER_USERS]
            return found
        finally:
            client.close()

    def _reset_acl_log(self) -> None:
        client = _operator(self.redis_url, self.env)
        if client is not None:
            for node in _nodes(client):
                with contextlib.suppress(RedisError, OSError):
                    _on(client, node, "ACL LOG", "RESET")
            client.close()

    def stop(self) -> None:
        super().stop()
        if not self.tiers:
            return
        denied = self.denials()
        self._reset_acl_log()
        if denied:
            summary = [(e["username"], e["reason"], e["object"], _command(e), e.get("context"), e["count"])
                       for e in denied]
            raise AclDenied(f"Redis refused tier users while the cluster ran (user, reason, object, "
                            f"command, context, count): {summary}")


def _nodes(client: Any) -> list[Any]:
    """A cluster client's nodes, or ``[None]`` for a single server's client."""
    return client.get_nodes() if isinstance(client, redis.cluster.RedisCluster) else [None]


def _on(client: Any, node: Any, *command: str) -> Any:
    if node is None:
        return client.execute_command(*command)
    return client.execute_command(*command, target_nodes=node)


def _command(entry: dict) -> str:
    """The command an ACL log entry refused (its client's last command)."""
    info = entry.get("client-info")
    if isinstance(info, dict):
        return info.get("cmd", "?")
    found = [part.split("=", 1)[1] for part in str(info or "").split() if part.startswith("cmd=")]
    return found[0] if found else "?"
