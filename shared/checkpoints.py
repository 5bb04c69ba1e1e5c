"""The LangGraph checkpointer as Switchboard reads it (the gateway and the workers).

langgraph-checkpoint-redis revives every stored message by importing the
module its LangChain id names (``langchain.schema.messages`` for a
``HumanMessage``). That legacy module does not exist without the ``langchain``
package, so each revival fails an import -- a search of ``sys.path`` on disk
-- before falling back: most of a turn's CPU time, measured with py-spy on the
worker. :class:`CachingSerializer` remembers each id's outcome, success or
failure, so the search happens once per process.

That is an override of a library internal,
``JsonPlusRedisSerializer._constructor_class`` (checked against
langgraph-checkpoint-redis 0.5.2; ``pyproject.toml`` allows ``>=0.5,<0.6``).
It lives here, not with the worker's other dependencies on the library's
internals (``switchboard.worker.checkpoint_format``, which lists them all and
whose serializer extends this one), because the gateway reads history with it
and imports no service. How checkpoints are *written* is the worker's.

*Encryption at rest.* The library stores a checkpoint as a RedisJSON
document with the channel values inline: whatever the serializer's
``dumps_typed`` made is parsed back to JSON before it is stored
(``BaseRedisSaver._dump_checkpoint``), so a serializer that encrypts its
output whole -- LangGraph's ``EncryptedSerializer`` -- would not encrypt the
document. The reading side, though, revives every LangChain constructor
dict it finds in the channel values through the serializer
(``_recursive_deserialize`` -> ``_revive_if_needed``). With ENCRYPTION_KEYS,
:class:`CachingSerializer` therefore writes each value as such a dict, a
*sealed envelope*::

    {"lc": 1, "type": "constructor", "id": ["switchboard", "sealed"],
     "kwargs": {"v": "f1:<Fernet token of the value's dumps_typed bytes>"}}

(``"t"`` joins ``"v"`` when those bytes are not JSON, e.g. msgpack), and
revives an envelope into the value it holds. The granularity:

- every *message* (every LangChain object) is sealed on its own, when it is
  encoded: so the worker's remembered encodings (``checkpoint_format``) keep
  the sealed form and a turn seals only the messages it added -- the cost per
  turn does not grow with the conversation;
- every other channel value (the default graph's ``topic``, ``keywords``,
  ``last_user_text`` ...) is sealed whole, each turn, as it is encoded each
  turn anyway (:meth:`CachingSerializer.seal_channel_values`); a channel that
  is a list of messages stays a list, of sealed messages;
- pending writes (an interrupt's value, a failed task's error, a subgraph's
  sends) are sealed whole, each (:meth:`SwitchboardRedisSaver.aput_writes`).

What stays in the clear: the document's structure and every field the
library indexes or lists by (thread, namespace, checkpoint and parent ids,
timestamps, channel names and versions, ``source``/``step``), and the
metadata -- LangGraph 1.2 writes ``source``, ``step`` and ``parents`` there,
no message text. So a stock ``AsyncRedisSaver`` given this serializer with
the keys reads encrypted checkpoints, and one without the keys still lists,
prunes and expires them. A checkpoint written before the keys were set
reads as before (nothing in it is an envelope).

The library internals this relies on (checked against 0.5.2, like the
others): ``JsonPlusRedisSerializer._default_handler`` (where LangChain objects
are encoded) and ``_revive_if_needed`` (where constructor dicts are revived);
``BaseRedisSaver._recursive_deserialize`` (the reader's walk of the channel
values, which logs and passes on what it cannot revive -- overridden, so a
value no key opens is an error) and ``_dump_checkpoint`` (the document's
``checkpoint`` field); ``AsyncRedisSaver.aput_writes``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from langchain_core.load.serializable import Serializable
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from langgraph.checkpoint.redis.aio import AsyncRedisSaver
from langgraph.checkpoint.redis.base import CHECKPOINT_PREFIX
from langgraph.checkpoint.redis.key_registry import WRITE_KEYS_ZSET_PREFIX
from langgraph.checkpoint.redis.key_registry import AsyncCheckpointKeyRegistry as AsyncKeyRegistry
from langgraph.checkpoint.redis.jsonplus_redis import JsonPlusRedisSerializer

from . import keys, scripts
from .encryption import CannotOpen, Keyring

log = logging.getLogger(__name__)

_MISSING = object()

#: Where a user message in the graph's state keeps the client_msg_id it was sent
#: with (its ``response_metadata``: a field no model provider is sent); the
#: worker stamps it, ``history``, ``regenerate`` and ``edit`` read it.
CMID_KEY = "client_msg_id"


def client_msg_id(message: Any) -> str | None:
    """The client_msg_id a user message was sent with (None: before they were recorded)."""
    return (getattr(message, "response_metadata", None) or {}).get(CMID_KEY)

#: Upper bound on remembered class look-ups (ids are class names, a small set).
MAX_CLASSES = 10_000


class _Failure:
    __slots__ = ("message",)

    def __init__(self, message: str):
        self.message = message


#: The LangChain id of a sealed envelope (see the module notes). No class has
#: it: a serializer without the keys leaves the envelope as it is.
SEALED_ID = ["switchboard", "sealed"]


def envelope(sealed: str, type_: str = "json") -> dict[str, Any]:
    """A sealed envelope holding ``sealed`` (bytes of ``dumps_typed`` type ``type_``)."""
    kwargs = {"v": sealed} if type_ == "json" else {"t": type_, "v": sealed}
    return {"lc": 1, "type": "constructor", "id": SEALED_ID, "kwargs": kwargs}


def is_envelope(obj: Any) -> bool:
    return (isinstance(obj, dict) and obj.get("id") == SEALED_ID and obj.get("lc") == 1
            and obj.get("type") == "constructor")


def _is_message_list(value: Any) -> bool:
    """A channel holding LangChain objects only (``messages``): its items are sealed one by one."""
    return isinstance(value, list) and bool(value) and all(isinstance(item, Serializable) for item in value)


class CachingSerializer(JsonPlusRedisSerializer):
    """The library's serializer, with each LangChain id's class look-up
    remembered, and with ENCRYPTION_KEYS (``keyring``) the sealing of what it
    writes and the opening of what it reads (see the module notes)."""

    def __init__(self, *args: Any, keyring: Keyring | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._classes: dict[tuple[str, ...], Any] = {}
        self.keyring = keyring or Keyring()
        self._sealing = self.keyring.enabled

    # -- sealing ----------------------------------------------------------------------

    def _default_handler(self, obj: Any) -> Any:
        encoded = super()._default_handler(obj)
        if self._sealing and isinstance(obj, Serializable):
            return envelope(self.keyring.seal_bytes(orjson.dumps(encoded, default=self._default_handler)))
        return encoded

    def seal_value(self, value: Any) -> dict[str, Any]:
        """``value`` as a sealed envelope (keys needed)."""
        type_, data = self.dumps_typed(value)
        return envelope(self.keyring.seal_bytes(data), type_)

    def seal_channel_value(self, value: Any) -> Any:
        """A channel value to store: its envelope, unless it is a list of
        messages (they are sealed as they are encoded). Unchanged without keys."""
        if not self._sealing or _is_message_list(value):
            return value
        return self.seal_value(value)

    def seal_channel_values(self, values: dict[str, Any]) -> dict[str, Any]:
        """:meth:`seal_channel_value` of each channel."""
        if not self._sealing:
            return values
        return {name: self.seal_channel_value(value) for name, value in values.items()}

    def seal_writes(self, writes: Any) -> Any:
        """Pending writes ``(channel, value)`` with each value sealed whole."""
        if not self._sealing:
            return writes
        return [(channel, self.seal_value(value)) for channel, value in writes]

    # -- opening ----------------------------------------------------------------------

    def open_value(self, sealed: dict[str, Any]) -> Any:
        """The value an envelope holds; :class:`CannotOpen` if no key opens it."""
        kwargs = sealed.get("kwargs")
        token = kwargs.get("v") if isinstance(kwargs, dict) else None
        if not isinstance(token, str):
            raise CannotOpen("a sealed envelope without its value")
        return self.loads_typed((kwargs.get("t", "json"), self.keyring.open_bytes(token)))

    def _revive_if_needed(self, obj: Any) -> Any:
        if is_envelope(obj):
            return self.open_value(obj)
        return super()._revive_if_needed(obj)

    # -- class look-ups ---------------------------------------------------------------

    def _constructor_class(self, obj: dict[str, Any]) -> type[Any]:
        id_parts = obj.get("id")
        if not isinstance(id_parts, list) or not all(isinstance(p, str) for p in id_parts):
            return super()._constructor_class(obj)
        key = tuple(id_parts)
        found = self._classes.get(key, _MISSING)
        if found is _MISSING:
            try:
                found = super()._constructor_class(obj)
            except ValueError as exc:
                # Keep the message, not the exception: re-raising one exception
                # object grows its traceback (and what its frames hold) forever.
                found = _Failure(str(exc))
            if len(self._classes) < MAX_CLASSES:
                self._classes[key] = found
        if isinstance(found, _Failure):
            raise ValueError(found.message)
        return found


def _case_sensitive(schema: dict[str, Any]) -> dict[str, Any]:
    fields = [{**f, "attrs": {**f.get("attrs", {}), "case_sensitive": True}} if f["type"] == "tag" else f
              for f in schema["fields"]]
    return {**schema, "fields": fields}


class SwitchboardRedisSaver(AsyncRedisSaver):
    """The library's saver with its indexes' tags matched exactly, and with
    what it writes itself sealed when its serializer has keys.

    RediSearch TAG fields fold case unless declared ``CASESENSITIVE``, so with
    the library's own schema a search for thread ``{u:casey}/c`` also finds
    ``{u:CASEY}/c``: another user's checkpoints, counted by pruning and
    listed by ``alist``. Thread ids carry user ids, which are case-sensitive
    names, so every tag here is. Only the index definition differs: the
    documents, and a stock ``AsyncRedisSaver`` reading them, are unchanged.
    :func:`setup_saver` replaces an index created without it.

    Encryption at rest (module notes): the library's own writes -- ``aput``
    (a subgraph's checkpoints, an operator's ``aupdate_state``) and
    ``aput_writes`` -- seal the channel values and pending writes, and a
    value no key opens raises :class:`CannotOpen` here instead of being
    handed on as its envelope (the library logs and returns a constructor
    dict it cannot revive as it is)."""

    _prune_script: Any = None  #: prune_checkpoints.lua, registered on first use

    @property
    def checkpoints_schema(self) -> dict[str, Any]:
        return _case_sensitive(super().checkpoints_schema)

    async def aput(self, config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
        """The library's ``aput``, the document then listed in its thread's
        index (``keys.thread_checkpoints``), as the worker's scripts list the
        ones they store. (A crash between the two leaves one document out of
        the index: pruning does not see it; it goes with its TTL or a clear.)"""
        saved = await super().aput(config, checkpoint, metadata, new_versions)
        configurable = saved["configurable"]
        thread_id = configurable["thread_id"]
        key = self._make_redis_checkpoint_key_cached(thread_id, configurable.get("checkpoint_ns", ""),
                                                     configurable["checkpoint_id"])
        index = keys.thread_checkpoints(thread_id)
        ttl_minutes = (self.ttl_config or {}).get("default_ttl")
        pipe = self._redis.pipeline(transaction=False)
        pipe.zadd(index, {key: time.time() * 1000})
        if ttl_minutes:
            pipe.pexpire(index, int(ttl_minutes * 60_000))
        await pipe.execute()
        return saved

    async def prune_thread(self, thread_id: str, *, keep: int) -> int:
        """Keep the thread's newest ``keep`` checkpoints and delete the rest,
        with their pending writes and the library's registry of them
        (``prune_checkpoints.lua``: one script, found by the thread's index,
        no search); ``keep`` 0 deletes them all and the latest pointer (a
        clear). The number of checkpoints deleted. ``keep`` counts the
        thread's checkpoints of every namespace together (the default graph
        has only its own)."""
        if self._prune_script is None:
            self._prune_script = scripts.register(self._redis, "prune_checkpoints")["prune_checkpoints"]
        latest = self._make_redis_checkpoint_latest_key(thread_id, "")
        return int(await self._prune_script(keys=[keys.thread_checkpoints(thread_id), latest],
                                            args=[keep, f"{CHECKPOINT_PREFIX}:", f"{WRITE_KEYS_ZSET_PREFIX}:"]))

    @property
    def writes_schema(self) -> dict[str, Any]:
        return _case_sensitive(super().writes_schema)

    def _dump_checkpoint(self, checkpoint: Any) -> dict[str, Any]:
        if isinstance(self.serde, CachingSerializer) and self.serde.keyring.enabled:
            checkpoint = {**checkpoint,
                          "channel_values": self.serde.seal_channel_values(checkpoint.get("channel_values") or {})}
        return super()._dump_checkpoint(checkpoint)

    async def aput_writes(self, config, writes, task_id, task_path=""):  # noqa: ANN001 - LangGraph's signature
        if isinstance(self.serde, CachingSerializer):
            writes = self.serde.seal_writes(writes)
        return await super().aput_writes(config, writes, task_id, task_path)

    def _recursive_deserialize(self, obj: Any) -> Any:
        if is_envelope(obj) and isinstance(self.serde, CachingSerializer):
            return self.serde.open_value(obj)
        return super()._recursive_deserialize(obj)


def use_caching_serializer(saver: AsyncRedisSaver, keyring: Keyring | None = None) -> AsyncRedisSaver:
    """Give ``saver`` Switchboard's serializer, sealing with ``keyring`` (ENCRYPTION_KEYS)."""
    saver.serde = CachingSerializer(keyring=keyring)
    return saver


async def setup_saver(saver: AsyncRedisSaver, attempts: int = 5) -> None:
    """``asetup()`` that tolerates other processes creating the indexes at the
    same moment: redisvl checks for an index, then creates it, so pods starting
    together can see "Index already exists". The index is there then; setting
    up again skips it and finishes the rest of the set-up.

    On a Redis Cluster no index is made. This RediSearch has no cluster
    coordinator: an index would live on one node and see only that node's
    documents (docs/scaling.md), and nothing Switchboard does needs one --
    it reads and writes checkpoints by key and finds a thread's checkpoints
    by its own index key (``keys.thread_checkpoints``). The rest of the
    library's set-up is done as ``asetup`` does it."""
    if isinstance(saver._redis, AsyncRedisCluster):
        await saver._redis.initialize()
        saver.loop = asyncio.get_running_loop()
        saver.create_indexes()  # the index objects only; nothing is sent
        await saver._detect_cluster_mode()
        saver._key_registry = AsyncKeyRegistry(saver._redis)
        return
    for attempt in range(attempts):
        try:
            await saver.asetup()
            break
        except Exception as exc:  # noqa: BLE001 - redisvl wraps the ResponseError in its own type
            if "already exists" not in str(exc) or attempt == attempts - 1:
                raise
    if isinstance(saver, SwitchboardRedisSaver):
        await _make_tags_case_sensitive(saver)


async def _make_tags_case_sensitive(saver: SwitchboardRedisSaver) -> None:
    """An index made before tags were case-sensitive (or by a stock saver)
    is dropped -- its documents stay -- and made again; RediSearch then
    indexes the existing documents anew, in the background."""
    client = saver._redis
    for index in (saver.checkpoints_index, saver.checkpoint_writes_index):
        if await _thread_tag_is_case_sensitive(client, index.name):
            continue
        log.warning("index %s folds the case of thread ids; making it again, case-sensitive", index.name)
        try:
            await client.execute_command("FT.DROPINDEX", index.name)
        except Exception as exc:  # noqa: BLE001 - another process dropped it first
            if "unknown index" not in str(exc).lower() and "no such index" not in str(exc).lower():
                raise
        try:
            await index.create(overwrite=False)
        except Exception as exc:  # noqa: BLE001 - another process made it first
            if "already exists" not in str(exc):
                raise


async def _thread_tag_is_case_sensitive(client: Any, index: str) -> bool:
    info = await client.execute_command("FT.INFO", index)
    if isinstance(info, dict):  # redis-py parses the reply into a dict
        attributes = info.get("attributes", info.get(b"attributes", []))
    else:
        flat = [x.decode() if isinstance(x, bytes) else x for x in info]
        attributes = flat[flat.index("attributes") + 1]
    for attribute in attributes:
        if isinstance(attribute, dict):  # {attribute: thread_id, type: TAG, flags: [...], ...}
            attribute = [*attribute.keys(), *attribute.values()]
        words = _words(attribute)
        if "thread_id" in words:
            return "CASESENSITIVE" in words
    return True  # no thread_id tag: nothing to fold


def _words(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [w for item in value for w in _words(item)]
    return [value.decode() if isinstance(value, bytes) else str(value)]
