"""Redis URLs: the schemes the services take, credentials moved out of a URL
(so that it can be logged), and what a ``redis+sentinel://`` or
``redis+cluster://`` URL names. Plain functions, tested in
tests/shared/test_redis_settings.py; :class:`~.settings.RedisSettings` uses them."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit


REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster")
SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379  #: a sentinel's port when its address names none
#: A Redis Cluster's seed nodes: ``redis+cluster://host[:port][,host[:port]...][/0]``.
CLUSTER_SCHEME = "redis+cluster"
CLUSTER_PORT = 6379
_CREDENTIAL_PARAMS = ("username", "password")


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """``(url without credentials, username, password)``: the user and
    password a Redis URL carries, as its user info (``redis://user:pw@host``,
    percent-decoded as redis-py does) or as ``username=``/``password=`` query
    options, taken out of it."""
    parts = urlsplit(url)
    username = password = None
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        name, colon, secret = userinfo.partition(":")
        username = unquote(name) or None
        password = unquote(secret) if colon else None
    query = parts.query
    params = parse_qsl(query, keep_blank_values=True)
    if any(name in _CREDENTIAL_PARAMS for name, _ in params):
        found = dict(p for p in params if p[0] in _CREDENTIAL_PARAMS)
        username = username or found.get("username") or None
        password = password if password is not None else (found.get("password") or None)
        query = urlencode([p for p in params if p[0] not in _CREDENTIAL_PARAMS])
    if netloc == parts.netloc and query == parts.query:
        return url, username, password
    return _unsplit(parts.scheme, netloc, parts.path, query, parts.fragment), username, password


@dataclass(frozen=True)
class SentinelTarget:
    """What a ``redis+sentinel://`` URL names: the sentinels to ask, the
    master's name they watch, and the database number."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0


def sentinel_target(url: str) -> SentinelTarget:
    """``redis+sentinel://[user:password@]host[:port][,host[:port]...]/MASTER[/DB]``.

    The user and password are the master's (the tier's ACL user), as for a
    ``redis://`` URL; the sentinels' own login is ``REDIS_SENTINEL_USERNAME``
    and ``REDIS_SENTINEL_PASSWORD``. A host without a port is on 26379.
    Raises ``ValueError`` saying what is missing."""
    bare, _, _ = split_credentials(url)
    parts = urlsplit(bare)
    if parts.scheme != SENTINEL_SCHEME:
        raise ValueError(f"not a {SENTINEL_SCHEME}:// URL")
    sentinels = _addresses(parts.netloc, SENTINEL_PORT, "sentinel")
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise ValueError("name the master after the sentinels: redis+sentinel://host:26379/MASTER[/DB]")
    db = 0
    if len(path) == 2:
        if not path[1].isdigit():
            raise ValueError(f"database {path[1]!r} is not a number")
        db = int(path[1])
    return SentinelTarget(sentinels, unquote(path[0]), db)


def _addresses(netloc: str, default_port: int, what: str) -> tuple[tuple[str, int], ...]:
    """``host[:port],host[:port]...`` as (host, port) pairs; ValueError naming ``what``."""
    found = []
    for address in netloc.split(","):
        host, colon, port = address.strip().rpartition(":")
        if not colon:
            host, port = address.strip(), str(default_port)
        host = host.strip("[]")  # an IPv6 address in brackets
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{what} address {address!r} is not host or host:port")
        found.append((host, int(port)))
    return tuple(found)


def cluster_nodes(url: str) -> tuple[tuple[str, int], ...]:
    """The seed nodes a ``redis+cluster://`` URL names (a cluster has only
    database 0). Raises ``ValueError`` saying what is wrong."""
    bare, _, _ = split_credentials(url)
    parts = urlsplit(bare)
    if parts.scheme != CLUSTER_SCHEME:
        raise ValueError(f"not a {CLUSTER_SCHEME}:// URL")
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError("a Redis Cluster has only database 0")
    return _addresses(parts.netloc, CLUSTER_PORT, "cluster node")


def _unsplit(scheme: str, netloc: str, path: str, query: str, fragment: str) -> str:
    """``urlunsplit`` that keeps ``//`` with an empty host (``unix:///path``)."""
    return f"{scheme}://{netloc}{path}" + (f"?{query}" if query else "") + (f"#{fragment}" if fragment else "")


def redacted(url: str) -> str:
    """A Redis URL fit for a log or a banner: its password replaced by ``***``."""
    bare, username, password = split_credentials(url)
    if username is None and password is None:
        return bare
    parts = urlsplit(bare)
    userinfo = quote(username or "", safe="") + (":***" if password is not None else "")
    return _unsplit(parts.scheme, f"{userinfo}@{parts.netloc}", parts.path, parts.query, parts.fragment)
