"""Redis ACL users, one per tier: the one table of what each may run, on
which keys and channels, rendered as an ACL file or as ``ACL SETUSER``
commands (``switchboard acl``; the embedded Redis loads the same file).

Every key pattern comes from :mod:`.keys` (its functions called with ``*``
for the ids), and the checkpointer's from the library's key layout below.

*How Redis checks*, as measured on the embedded server (Redis 8.2 with
RediSearch 2.10 and RedisJSON 2.8; ``tests/integration/test_redis_acl.py``):

- A script runs with its caller's rights: each command it calls, and each key
  and channel that command touches -- also keys the script builds itself
  (``accept.lua``'s recount of the inbound streams) -- is checked as if the
  caller had sent it.
- ``EVALSHA`` declares its ``KEYS`` read *and* write: a key passed to a script
  needs both, even when the script only reads it (the fanout's read).
- The module commands (``FT.*``, ``JSON.*``) declare their keys read and
  write too, ``JSON.GET`` included, and belong to no ACL category there, so
  they are named one by one; ``FT.SEARCH``/``FT.CREATE`` check the index name
  as their key, and ``FT.SEARCH`` never checks the keys of the documents it
  returns: whoever may search the checkpoint index reads every checkpoint.

With one list of commands and one of keys per user, every write command a
tier holds would reach every key it may pass to a script (the fanout's
``DEL`` of its liveness key would delete users' outbound streams). So each
tier is a list of :class:`Grant`\\s -- commands, with the keys and channels
they may touch -- rendered as ACL *selectors* (Redis 7+): ``(%R~pattern
&channel +command ...)``. A command runs only if one grant allows the command
with all of its keys and channels. Grants without keys or channels (the
connection's own commands) are the user's root rules.

To give a tier a new command, add it to the grant of the keys it touches (or
add a grant): :data:`USERS` is the only place rights are written.
"""

from __future__ import annotations

import enum
import hashlib
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from . import keys
from .errors import SwitchboardError

ANY = "*"  #: the glob standing for any id in a key pattern


class AclError(SwitchboardError, ValueError):
    """A password is missing or unreadable, or a tier is unknown."""


class Access(enum.Enum):
    """What a key pattern lets a command do with a matching key (Redis 7 key
    permissions). Redis asks for *read* when a command reads the key's value
    and for *write* when it changes it; a key spec that does neither
    (``EXISTS``, ``XLEN``) passes with either."""

    READ = "%R~"
    WRITE = "%W~"
    READ_WRITE = "~"


@dataclass(frozen=True)
class Keys:
    pattern: str
    access: Access = Access.READ_WRITE

    def rule(self) -> str:
        return f"{self.access.value}{self.pattern}"


def R(*patterns: str) -> tuple[Keys, ...]:
    return tuple(Keys(p, Access.READ) for p in patterns)


def W(*patterns: str) -> tuple[Keys, ...]:
    return tuple(Keys(p, Access.WRITE) for p in patterns)


def RW(*patterns: str) -> tuple[Keys, ...]:
    return tuple(Keys(p, Access.READ_WRITE) for p in patterns)


@dataclass(frozen=True)
class Grant:
    """Commands a tier may run on ``keys`` and ``channels``, and why it needs
    them. Commands are Redis names, lower case, ``command|subcommand`` for
    one subcommand; no categories (``@read``): a category grows with Redis."""

    why: str
    commands: tuple[str, ...]
    keys: tuple[Keys, ...] = ()
    channels: tuple[str, ...] = ()

    @property
    def root(self) -> bool:
        """Keyless and channel-less: part of the user's root rules."""
        return not self.keys and not self.channels

    def tokens(self) -> list[str]:
        return ([k.rule() for k in self.keys] + [f"&{c}" for c in self.channels]
                + [f"+{c}" for c in self.commands])


@dataclass(frozen=True)
class User:
    tier: str  #: gateway, worker, fanout, admin
    name: str  #: the Redis username
    why: str
    grants: tuple[Grant, ...] = ()
    everything: bool = False  #: all commands, keys and channels (the operator)

    def rules(self) -> list[str]:
        """The user's rules after ``reset`` (no command, key or channel) and
        its password: root rules, then one selector per grant with keys or
        channels."""
        if self.everything:
            return ["~*", "&*", "+@all"]
        root = [token for grant in self.grants if grant.root for token in grant.tokens()]
        selectors = ["(" + " ".join(grant.tokens()) + ")" for grant in self.grants if not grant.root]
        return [*root, *selectors]

    def commands(self) -> set[str]:
        return {c for grant in self.grants for c in grant.commands}


# -- the checkpointer's keys ------------------------------------------------------------
#
# langgraph-checkpoint-redis's layout (checked against 0.5.2 by
# tests/shared/test_acl.py, which builds keys with the library itself): a
# document ``checkpoint:<thread>:<ns>:<id>``, the thread's latest pointer
# ``checkpoint_latest:<thread>:<ns>``, pending writes
# ``checkpoint_write:<thread>:...`` and their registry
# ``write_keys_zset:<thread>:...``; the RediSearch indexes are named after the
# two document prefixes. The thread id (:func:`keys.thread_id`) carries the
# user's hash tag, so every pattern starts with the library's prefix and
# ``{u:``: nothing else in Redis matches them.

CHECKPOINT_PREFIX = "checkpoint"
CHECKPOINT_WRITE_PREFIX = "checkpoint_write"
WRITE_REGISTRY_PREFIX = "write_keys_zset"

_THREAD = keys.thread_id(ANY, ANY)
CHECKPOINTS = f"{CHECKPOINT_PREFIX}:{_THREAD}"
CHECKPOINT_LATEST = f"{CHECKPOINT_PREFIX}_latest:{_THREAD}"
CHECKPOINT_WRITES = f"{CHECKPOINT_WRITE_PREFIX}:{_THREAD}"
WRITE_REGISTRY = f"{WRITE_REGISTRY_PREFIX}:{_THREAD}"
#: The index names, which FT.CREATE/FT.INFO/FT.SEARCH check as their key.
CHECKPOINT_INDEXES = (CHECKPOINT_PREFIX, CHECKPOINT_WRITE_PREFIX)


# -- Switchboard's own keys and channels ------------------------------------------------

DEDUP = keys.dedup(ANY, ANY)
INBOUND = keys.inbound(ANY, ANY)
CONVERSATION = keys.conversation(ANY, ANY)
CONVERSATIONS = keys.conversations(ANY)
USAGE = keys.usage(ANY)
LEASE = keys.lease(ANY, ANY)
STAGED = keys.staged_checkpoint(ANY, ANY, ANY)
THREAD_CHECKPOINTS = keys.thread_checkpoints(keys.thread_id(ANY, ANY))
OUTBOUND = keys.outbound(ANY)
META = keys.meta(ANY)
OFFSETS = keys.offsets(ANY)
DEVICES = keys.devices(ANY)
DEVICE_OWNERS = keys.device_owners(ANY)
IP_CONNECTIONS = keys.ip_connections(ANY)
WORK = keys.work(ANY)  # type: ignore[arg-type]  # the shard number as a glob
DEAD_LETTERS = keys.dead_letters()
DEAD_COPIES = keys.dead_copies(ANY)
FANOUTS = keys.fanout_members()
FANOUT_ALIVE = keys.fanout_alive(ANY)
NOTIFY = keys.notify(ANY)
CANCELS = keys.cancels()


def node_grants(tier: str) -> tuple[Grant, ...]:
    """A tier's rights in the node registry (shared/nodes.py): its own tier's
    records and member set only (register, renew, leave, prune expired members)."""
    records, members = keys.node(tier, ANY), keys.node_members(tier)
    return (
        Grant(f"the node registry: this {tier}'s record (register, renew, leave) and, when pruning, its "
              "tier's records", ("set", "del", "mget"), RW(records)),
        Grant(f"... the set of {tier}s: join, leave, and prune members whose record expired",
              ("sadd", "srem", "smembers"), RW(members)),
    )


FANOUT_CONTROL = keys.fanout_control(ANY)
GATEWAY_DELIVERY = keys.gateway_delivery(ANY)

#: What every service's client sends for itself: redis-py's ``CLIENT
#: SETINFO`` after connecting (``HELLO``/``AUTH`` need no right) and ``PING``
#: as its health check, and ``SCRIPT LOAD`` when Redis forgot a script
#: (``NOSCRIPT``). Loading a script gives nothing: it runs with the caller's rights.
#: A Redis Cluster client also reads the slots (``CLUSTER SLOTS``) and the
#: commands' key positions (``COMMAND``), and sends ``ASKING`` before a
#: command redirected while a slot moves; a subscriber checks that its node is a
#: master (``CLUSTER MYID``). On a single Redis they give nothing.
_CONNECTION = ("ping", "client|setinfo", "script|load", "cluster|slots", "cluster|myid", "command", "asking")

#: The outbound stream as every appender touches it (``lib/outbound.lua``:
#: its life, the append, retention, the notice) and as ``stream_state.lua`` reads it.
_APPEND_OUT = ("exists", "xgroup|create", "xadd", "xlen", "xrange", "xrevrange", "xtrim")


GATEWAY = User("gateway", "sb-gateway", "accepts messages, admits connections, stores offsets, reads history", (
    Grant("the connection; TIME for accept.lua's clock; WAIT for replicas (REDIS_WAIT_REPLICAS)",
          (*_CONNECTION, "time", "wait")),
    Grant("run the gateway's scripts (accept, stream_state, store_offset, admit_*, renew_device, release_device): "
          "EVALSHA asks read and write on every key passed",
          ("evalsha",), RW(DEDUP, INBOUND, OUTBOUND, META, CONVERSATION, CONVERSATIONS, USAGE, LEASE, OFFSETS,
                           IP_CONNECTIONS, DEVICES, DEVICE_OWNERS)),
    Grant("accept: the client_msg_id's dedup key", ("get", "set"), RW(DEDUP)),
    Grant("accept: append to a conversation's inbound stream; count the user's waiting messages",
          ("xadd", "xlen"), W(INBOUND)),
    Grant("cancel: the id of the conversation's next waiting entry (the one running)", ("xrange",), R(INBOUND)),
    Grant("cancel and if_busy: interrupt: tell the workers which turns to stop", ("publish",), channels=(CANCELS,)),
    Grant("accept: the conversation's counters and notice times (a first message's sealed title: hsetnx); "
          "cancel: its cancel mark", ("hget", "hmget", "hset", "hsetnx"), RW(CONVERSATION)),
    Grant("accept (retention): a conversation that has a message waiting must not expire",
          ("persist",), RW(CONVERSATION, INBOUND)),
    Grant("accept: whether a drain holds the conversation (its lease exists), never the token",
          ("exists",), R(LEASE)),
    Grant("accept: the user's conversations (MAX_SESSIONS_PER_USER; those idle past retention dropped)",
          ("zscore", "zcard", "zrange", "zadd", "zremrangebyscore", "pexpire"), RW(CONVERSATIONS)),
    Grant("conversations: a page of the user's conversations, newest first", ("zrevrangebyscore",), R(CONVERSATIONS)),
    Grant("accept: the user's quota state (and its lifetime)", ("hget", "hmget", "hset", "hincrby", "pexpire"),
          RW(USAGE)),
    Grant("accept and hello: the user's outbound stream (user events, its life, retention, the replay window)",
          (*_APPEND_OUT, "pexpire"), RW(OUTBOUND)),
    Grant("... and its epoch and newest trimmed id", ("hget", "hset", "pexpire"), RW(META)),
    Grant("accept: the notice of each appended event", ("publish",), channels=(NOTIFY,)),
    Grant("hello and acks: the devices' offsets (and their lifetime)", ("hget", "hset", "pexpire"), RW(OFFSETS)),
    Grant("work notices for the workers, append only", ("xadd",), W(WORK)),
    Grant("admission: the connections of a client address (MAX_CONNECTIONS_PER_IP)",
          ("zrangebyscore", "zremrangebyscore", "zcard", "zadd", "zrem", "pexpire"), RW(IP_CONNECTIONS)),
    Grant("admission: a user's device slots (MAX_DEVICES_PER_USER)",
          ("zrangebyscore", "zremrangebyscore", "zcard", "zadd", "zrem", "pexpire"), RW(DEVICES)),
    Grant("... and the connection holding each slot", ("hget", "hset", "hdel", "pexpire"), RW(DEVICE_OWNERS)),
    Grant("which fanouts are alive", ("smembers",), R(FANOUTS)),
    Grant("... and their incarnations", ("mget",), R(FANOUT_ALIVE)),
    Grant("attach and detach requests to the fanouts", ("publish",), channels=(FANOUT_CONTROL,)),
    Grant("... on a Redis Cluster, whether the fanout heard one (PUBLISH counts one node's subscribers)",
          ("pubsub|numsub",)),
    Grant("the gateway's own delivery channel", ("subscribe", "unsubscribe"), channels=(GATEWAY_DELIVERY,)),
    Grant("history: a thread's latest checkpoint pointer", ("get",), R(CHECKPOINT_LATEST)),
    Grant("history: whether a checkpoint has pending writes, and which", ("exists", "zcard", "zrange"),
          R(WRITE_REGISTRY)),
    Grant("history: read checkpoint documents and pending writes (JSON.GET asks read and write)",
          ("json.get",), RW(CHECKPOINTS, CHECKPOINT_WRITES)),
    Grant("start: the checkpoint indexes, created if missing (by whichever of gateway and worker starts first)",
          ("ft._list",)),
    Grant("... their definitions, checked for case-sensitive tags; history: the search for a checkpoint's "
          "pending writes (FT.SEARCH reads any document of the index)",
          ("ft.info", "ft.create", "ft.search"), RW(*CHECKPOINT_INDEXES)),
    *node_grants("gateway"),
))

WORKER = User("worker", "sb-worker", "runs turns: leases, replies, deltas, checkpoints, work notices, dead letters", (
    Grant("the connection; TIME for the scripts' clock; MULTI/EXEC for acks and hand-backs; WAIT for replicas",
          (*_CONNECTION, "time", "multi", "exec", "discard", "wait")),
    Grant("run the worker's scripts (begin, find_next, count_attempt, commit, delta, renew, release, "
          "store_checkpoint): EVALSHA asks read and write on every key passed",
          ("evalsha",), RW(LEASE, CONVERSATION, INBOUND, OUTBOUND, META, USAGE, CHECKPOINTS, CHECKPOINT_LATEST,
                           STAGED, THREAD_CHECKPOINTS)),
    Grant("each thread's index of its checkpoints (written with each, read to prune and clear)",
          ("zadd", "zcard", "zrange", "zremrangebyrank", "pexpire", "persist"), RW(THREAD_CHECKPOINTS)),
    Grant("a commit's checkpoint, staged before the commit renames it into place (or deletes it)",
          ("json.set", "pexpire", "del"), RW(STAGED)),
    Grant("... renamed into place (RENAME checks both keys)", ("rename",), RW(STAGED, CHECKPOINTS)),
    Grant("the conversation's lease: take, renew, check, release", ("set", "get", "pexpire", "del"), RW(LEASE)),
    Grant("the conversation's progress and attempts", ("hget", "hmget", "hset", "hdel", "hincrby"), RW(CONVERSATION)),
    Grant("read the next waiting message; remove answered ones", ("xrange", "xtrim"), RW(INBOUND)),
    Grant("retention: an answered conversation's keys start to age", ("pexpire",), RW(CONVERSATION, INBOUND)),
    Grant("replies and deltas to the user's outbound stream (a life begun here ages with the user's keys)",
          (*_APPEND_OUT, "pexpire"), RW(OUTBOUND)),
    Grant("... and its epoch and newest trimmed id", ("hget", "hset", "pexpire"), RW(META)),
    Grant("count an answered message off the user's waiting ones", ("hincrby", "hset"), RW(USAGE)),
    Grant("the notice of each appended event", ("publish",), channels=(NOTIFY,)),
    Grant("which turns to stop (the gateways' cancels)", ("subscribe", "unsubscribe"), channels=(CANCELS,)),
    Grant("the work streams: the consumer group (created at start and after data loss), reading, claiming, "
          "acknowledging, handing back",
          ("xgroup|create", "xreadgroup", "xclaim", "xautoclaim", "xack", "xdel", "xadd"), RW(WORK)),
    Grant("readiness: the consumer group is present on every work stream", ("xinfo|groups",), R(WORK)),
    Grant("dead letters, append only", ("xadd",), W(DEAD_LETTERS)),
    Grant("... and the whole message, in the user's copies for a retry (and their lifetime)", ("xadd", "pexpire"),
          W(DEAD_COPIES)),
    Grant("metrics: how many dead letters there are (never their content)", ("xlen",), R(DEAD_LETTERS)),
    Grant("checkpoint documents and pending writes (LangGraph's saver: write, read, expire, prune)",
          ("json.set", "json.get", "json.merge", "exists", "ttl", "expire", "pexpire", "persist", "del"),
          RW(CHECKPOINTS, CHECKPOINT_WRITES)),
    Grant("a thread's latest checkpoint pointer", ("get", "set", "exists", "ttl", "expire", "pexpire", "del"),
          RW(CHECKPOINT_LATEST)),
    Grant("the registry of a checkpoint's pending writes", ("zadd", "zrange", "zcard", "exists", "ttl", "expire", "del"),
          RW(WRITE_REGISTRY)),
    Grant("pruning and clear: a thread's old checkpoints with their writes and registry, in one DEL",
          ("del",), RW(CHECKPOINTS, CHECKPOINT_WRITES, WRITE_REGISTRY)),
    Grant("start: the checkpoint indexes (created if missing; one whose tags fold case is made again)",
          ("ft._list",)),
    Grant("... and searching them (listing and pruning a thread's checkpoints)",
          ("ft.info", "ft.create", "ft.dropindex", "ft.search", "ft.aggregate"), RW(*CHECKPOINT_INDEXES)),
    *node_grants("worker"),
))

FANOUT = User("fanout", "sb-fanout", "reads outbound streams and publishes deliveries to gateways", (
    Grant("the connection; PUBSUB NUMSUB to see which gateways still listen", (*_CONNECTION, "pubsub|numsub")),
    Grant("run read_outbound.lua: EVALSHA asks read and write on the keys passed, the script only reads",
          ("evalsha",), RW(OUTBOUND, META)),
    Grant("read the user's outbound stream", ("xrange",), R(OUTBOUND)),
    Grant("... and its newest trimmed id", ("hget",), R(META)),
    Grant("announce this fanout (and leave)", ("set", "del"), W(FANOUT_ALIVE)),
    Grant("... in the set of fanouts", ("sadd", "srem"), W(FANOUTS)),
    Grant("the sweep: members whose liveness key expired are removed", ("smembers",), R(FANOUTS)),
    Grant("... read from their liveness keys", ("mget",), R(FANOUT_ALIVE)),
    Grant("attach/detach requests and the users' append notices", ("subscribe", "unsubscribe"),
          channels=(FANOUT_CONTROL, NOTIFY)),
    Grant("deliveries to the gateways", ("publish",), channels=(GATEWAY_DELIVERY,)),
    *node_grants("fanout"),
))

ADMIN = User("admin", "sb-admin", "the operator: switchboard deadletters, inspection, repairs, managing these users "
             "(every right; never given to a service)", everything=True)

#: Every user, by tier. The only place rights are written.
USERS: dict[str, User] = {user.tier: user for user in (GATEWAY, WORKER, FANOUT, ADMIN)}
#: The tiers that run as services.
SERVICE_TIERS = ("gateway", "worker", "fanout")

#: ``default`` is disabled (``off``, no password): a client that does not
#: name a user cannot log in, and no connection starts logged in as it. It
#: keeps every right all the same, because Redis loads the AOF as ``default``:
#: a transaction replayed from the AOF -- every script's writes are one -- is
#: checked again at ``EXEC`` against the default user's rights, and with none
#: every script write is dropped on restart, silently (redis/redis#14541,
#: seen on the embedded Redis 8.2.3; fixed upstream by redis/redis#14545).
DEFAULT_USER_RULES = ["reset", "off", "~*", "&*", "+@all"]


# -- passwords ---------------------------------------------------------------------------


def new_password() -> str:
    """256 random bits, as hex (safe in a URL, a file, a Secret)."""
    return secrets.token_hex(32)


def password_hash(password: str) -> str:
    """The ACL form of a password: ``#`` and its SHA-256 (the file then holds no password)."""
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def password_path(directory: str | os.PathLike, tier: str) -> Path:
    """Where a directory of passwords keeps ``tier``'s: a file named after its user."""
    return Path(directory) / _user(tier).name


def read_password(path: str | os.PathLike) -> str:
    """A password file's password, without the line end a Secret or an editor may add."""
    try:
        password = Path(path).read_text().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise AclError(f"cannot read the password file {path}: {exc}") from None
    if not password:
        raise AclError(f"the password file {path} is empty")
    return password


def read_passwords(directory: str | os.PathLike, tiers: Iterable[str] = USERS) -> dict[str, str]:
    """Each tier's password from ``directory`` (:func:`password_path`)."""
    return {tier: read_password(password_path(directory, tier)) for tier in tiers}


def ensure_passwords(directory: str | os.PathLike, tiers: Iterable[str] = USERS) -> dict[str, str]:
    """Each tier's password from ``directory``, making a new one for a tier
    without a file. The directory is made 0700 and each file 0600 (tightened
    if a copy left it wider): only the account that runs Redis reads them."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    for tier in tiers:
        path = password_path(directory, tier)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            os.chmod(path, 0o600)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(new_password() + "\n")
    return read_passwords(directory, tiers)


# -- rendering ---------------------------------------------------------------------------


def _user(tier: str) -> User:
    try:
        return USERS[tier]
    except KeyError:
        raise AclError(f"no tier {tier!r}; the tiers are {', '.join(USERS)}") from None


def setuser_rules(tier: str, password: str | None, *, hashed: bool = True) -> list[str]:
    """The ``ACL SETUSER <name>`` arguments of a tier: reset, on, the password
    (hashed unless ``hashed=False``), then its rules."""
    user = _user(tier)
    rules = ["reset", "on"]
    if password is None:
        raise AclError(f"no password for {user.name}")
    rules.append(password_hash(password) if hashed else ">" + password)
    return rules + user.rules()


def acl_file(passwords: Mapping[str, str], *, hashed: bool = True) -> str:
    """An ACL file (``aclfile`` / ``ACL LOAD``) with every user of
    ``passwords`` (tier -> password) and the ``default`` user disabled.
    ACL files have no comments; docs/security.md explains each right."""
    lines = [" ".join(["user", "default", *DEFAULT_USER_RULES])]
    for tier in USERS:
        if tier in passwords:
            lines.append(" ".join(["user", USERS[tier].name, *setuser_rules(tier, passwords[tier], hashed=hashed)]))
    return "\n".join(lines) + "\n"


def setuser_commands(passwords: Mapping[str, str], *, hashed: bool = True) -> str:
    """The same users as ``ACL SETUSER`` commands, one a line, for
    ``redis-cli`` (a managed Redis that loads no ACL file). The ``default``
    user is left as it is: disable it once the admin user works."""
    lines = []
    for tier in USERS:
        if tier in passwords:
            args = setuser_rules(tier, passwords[tier], hashed=hashed)
            lines.append(" ".join(["ACL", "SETUSER", USERS[tier].name, *(_quote(a) for a in args)]))
    return "\n".join(lines) + "\n"


def _quote(arg: str) -> str:
    """A redis-cli argument: a selector has spaces, so it goes in quotes."""
    return f'"{arg}"' if " " in arg else arg
