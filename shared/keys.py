"""Every Redis key and channel name Switchboard uses, in one place.

All keys of one user carry the hash tag ``{u:<user>}``, so they share one Redis
Cluster slot and the Lua scripts that touch several of them stay atomic there.
User, device and conversation ids are validated by the wire protocol to a
charset without braces, so an id can never open a second hash tag.
"""

from __future__ import annotations

PREFIX = "sb"


def _user(user: str) -> str:
    return f"{PREFIX}:{{u:{user}}}"


# -- per user -----------------------------------------------------------------


def inbound(user: str, conversation_id: str) -> str:
    """Stream of a conversation's accepted ``send`` frames that wait for their
    turn (the durable input log). One stream per conversation, so a worker
    reads exactly the next entry, whatever the user's other conversations
    hold; each entry is removed when its turn is committed."""
    return f"{_user(user)}:in:{conversation_id}"


def inbound_prefix(user: str) -> str:
    """What every :func:`inbound` key of ``user`` starts with (a script that
    recounts the user's waiting messages builds the keys from it)."""
    return f"{_user(user)}:in:"


def conversations(user: str) -> str:
    """Sorted set: the user's conversation ids, scored by the time (ms) of
    their last accepted message."""
    return f"{_user(user)}:convs"


def usage(user: str) -> str:
    """Hash of the user's quota state (fields: :class:`fields.UsageField`)."""
    return f"{_user(user)}:usage"


def outbound(user: str) -> str:
    """Stream of every event for the user's devices; entry ids are event ids."""
    return f"{_user(user)}:out"


def meta(user: str) -> str:
    """Hash: ``epoch`` of the outbound stream's life, ``trimmed`` = newest trimmed id."""
    return f"{_user(user)}:meta"


def offsets(user: str) -> str:
    """Hash: device id -> ``<epoch>|<last acked id>``."""
    return f"{_user(user)}:offsets"


def dedup(user: str, client_msg_id: str) -> str:
    """String: the inbound id already given to this client_msg_id (with a TTL)."""
    return f"{_user(user)}:cmid:{client_msg_id}"


def dead_copies(user: str) -> str:
    """Stream: whole copies of the user's dead-lettered messages (fields:
    :class:`fields.DeadField`), kept so ``switchboard deadletters retry`` can
    queue one again; the newest ``DEAD_LETTERS_PER_USER``, aging with the
    user's keys. The shared :func:`dead_letters` entry names its copy."""
    return f"{_user(user)}:dead"


def conversation(user: str, conversation_id: str) -> str:
    """Hash of the conversation's progress (fields: :class:`fields.ConvField`):
    ``done`` = id of the last inbound entry whose turn is committed."""
    return f"{_user(user)}:conv:{conversation_id}"


def lease(user: str, conversation_id: str) -> str:
    """String with a TTL (``LEASE_TTL``, renewed while a turn runs): token of
    the worker that owns the conversation's turns right now."""
    return f"{_user(user)}:lease:{conversation_id}"


def staged_checkpoint(user: str, conversation_id: str, token: str) -> str:
    """JSON document, PX ``STAGED_TTL_MS``: the checkpoint a commit by lease
    ``token`` is about to place (commit.lua renames it to its key, or deletes
    it when the commit is refused). No index covers it: it is indexed once,
    when it is renamed into place."""
    return f"{_user(user)}:staged:{conversation_id}:{token}"


#: How long a staged checkpoint lives if its commit never runs (a worker that
#: died between the two): a bound on what it can leave behind.
STAGED_TTL_MS = 60_000


def notify(user: str) -> str:
    """Pub/sub channel: an event was appended to the user's outbound stream."""
    return f"{_user(user)}:notify"


def thread_id(user: str, conversation_id: str, generation: int = 0) -> str:
    """LangGraph thread id of a conversation (user ids contain no ``/``).

    It carries the user's hash tag, so the checkpointer's keys for the thread
    (``checkpoint:{u:USER}/CONV:...``) live in the user's Cluster slot too:
    the worker's commit script stores a turn's checkpoint with its reply.

    ``generation``: how many times the conversation was cleared (``clear``);
    each clear starts a new, empty thread, ``{u:USER}/CONV~N`` (``~`` is not
    in the ids' charset, so it never names another conversation)."""
    base = f"{{u:{user}}}/{conversation_id}"
    return f"{base}~{generation}" if generation else base


def thread_checkpoints(thread: str) -> str:
    """Sorted set: the checkpoint documents of LangGraph thread ``thread``
    (a :func:`thread_id`), by the time each was written (ms): what pruning
    and a clear find them by, instead of a search (which cannot see every
    shard of a Redis Cluster). In the thread's user's slot."""
    tag, _, rest = thread.partition("/")
    return f"sb:{tag}:cps:{rest}"


def devices(user: str) -> str:
    """Sorted set: device id -> expiry (ms) of its admitted connection, renewed
    by the gateway holding it; entries past their expiry are dead gateways'."""
    return f"{_user(user)}:devices"


def device_owners(user: str) -> str:
    """Hash: device id -> ``<connection id>|<gateway id>``, the connection that
    holds its slot in :func:`devices` and the gateway (``SERVER_ID``) it is on
    (``shared.nodes.owner_value``; a bare connection id from a gateway that
    does not record itself)."""
    return f"{_user(user)}:device_owners"


# -- per client address -----------------------------------------------------------


def ip_connections(ip: str) -> str:
    """Sorted set: connection id -> expiry (ms), the connections of one client
    address (an IPv4 address or an IPv6 /64, see ``gateway.admission.ip_key``)
    over all gateways. Its own hash tag ``{ip:...}``: addresses contain no braces."""
    return f"{PREFIX}:{{ip:{ip}}}:conns"


# -- work distribution ----------------------------------------------------------


def work(shard: int) -> str:
    """Stream of work notices ``(user, conversation)`` -- "this conversation has work" -- read by the worker group."""
    return f"{PREFIX}:{{w:{shard}}}:work"


WORKER_GROUP = "workers"


def work_shard(user: str, shards: int) -> int:
    """Stable shard of a user's work notices (crc32, as Redis Cluster would agree on)."""
    import zlib

    return zlib.crc32(user.encode()) % shards


def cancels() -> str:
    """Pub/sub channel: "stop these turns" -- ``<user> <conversation> <entry id>``,
    every entry of the conversation up to the id -- from the gateways to every
    worker. Only a prompt nudge: the conversation's ``cancel`` field is the
    truth, which the commit script checks."""
    return f"{PREFIX}:cancels"


def dead_letters() -> str:
    """Stream of messages the workers gave up on, for operators to inspect."""
    return f"{PREFIX}:deadletters"


# -- fanout <-> gateway -------------------------------------------------------------


def fanout_members() -> str:
    """Set of fanout instance ids that have announced themselves."""
    return f"{PREFIX}:fanouts"


def fanout_alive(fanout_id: str) -> str:
    """String with a TTL: the incarnation of a live fanout instance."""
    return f"{PREFIX}:fanout:{fanout_id}:alive"


def fanout_control(fanout_id: str) -> str:
    """Pub/sub channel: attach/detach requests from gateways to one fanout."""
    return f"{PREFIX}:fanout:{fanout_id}:ctl"


def gateway_delivery(gateway_id: str) -> str:
    """Pub/sub channel: event batches from fanouts to one gateway."""
    return f"{PREFIX}:gw:{gateway_id}:dlv"


# -- the node registry (shared/nodes.py) ------------------------------------------------
#
# One hash tag for all of them, ``{nodes}``: a listing reads every record of a
# tier in one MGET, which Redis Cluster allows only within one slot.


def node_members(tier: str) -> str:
    """Set of the ids of a tier's nodes (``gateway``, ``worker``, ``fanout``)
    that have registered; members whose :func:`node` key expired are pruned."""
    return f"{PREFIX}:{{nodes}}:{tier}"


def node(tier: str, node_id: str) -> str:
    """String with a TTL (``NODE_TTL``, renewed every ``NODE_HEARTBEAT``):
    the JSON record of one live node (``shared.nodes.NodeRecord``)."""
    return f"{PREFIX}:{{nodes}}:{tier}:{node_id}"
