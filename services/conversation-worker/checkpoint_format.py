"""The checkpoint format: the worker writes langgraph-checkpoint-redis's own
document, and writes it fast.

The turn's final checkpoint is stored by the commit script together with the
reply (see :mod:`.fencing`), so the worker cannot let the library's ``aput``
write it: it builds the very document ``aput`` would store -- same key, same
fields, same encoding -- and the library reads, lists, searches, prunes and
expires it like one of its own. Building it is also where the worker saves
time: a turn encodes only the messages it added (:class:`EncodingSerializer`).

Everything in the worker that depends on how the library stores a checkpoint
is in this module, so a new library version is checked here, and by
``tests/worker/test_checkpoint_format.py`` (the worker's document against the
library's, field for field; a stock ``AsyncRedisSaver`` reading what the
worker wrote).

*Checked against* langgraph-checkpoint-redis 0.5.2; ``pyproject.toml`` allows
``>=0.5,<0.6``. The library internals relied on:

- ``AsyncRedisSaver._make_redis_checkpoint_key_cached(thread, ns, id)``: the
  document's key;
- ``BaseRedisSaver._make_redis_checkpoint_latest_key(thread, ns)``: the
  thread's latest pointer, a string whose value is the newest document's key
  (``aput`` sets it; ``aget_tuple`` without a checkpoint id reads it);
- ``BaseRedisSaver._dump_checkpoint``: the ``checkpoint`` field of a state
  that holds bytes (the library's msgpack route);
- ``BaseRedisSaver._dump_metadata``: the ``metadata`` field (JSON text);
- ``AsyncRedisSaver._redis``: the saver's client, shared by the fenced writes;
- ``BaseRedisSaver.ttl_config["default_ttl"]``: ``CHECKPOINT_TTL``, in minutes
  (the library sets whole seconds, ``int(minutes * 60)``; the worker's
  scripts set milliseconds);
- ``JsonPlusRedisSerializer._default_handler``: overridden to remember
  message encodings, and passed to ``orjson.dumps`` as the library does;
- ``JsonPlusRedisSerializer._preprocess_redis_json``: overridden (LangChain
  objects skip its walk), and called on the ``checkpoint`` field;
- ``JsonPlusRedisSerializer._constructor_class``: overridden by the read side
  this serializer extends, :class:`switchboard.shared.checkpoints.CachingSerializer`
  (in ``shared`` because the gateway reads with it);
- ``langgraph.checkpoint.redis.util.to_storage_safe_id`` / ``to_storage_safe_str``:
  the sentinels for empty ids and namespaces;

and ``aput``'s rules for the document (:func:`document`): its fields
(``thread_id``, ``run_id``, ``checkpoint_ns``, ``checkpoint_id``,
``parent_checkpoint_id``, ``checkpoint_ts``, ``checkpoint``, ``metadata``,
``has_writes``, and ``source`` / ``step`` copied from the metadata when it has
both); the ``checkpoint`` field as ``{"type": "json", **checkpoint,
"pending_sends": []}`` with the channel versions as strings; the parent is
the config's ``checkpoint_id`` when it differs from the checkpoint's own;
``run_id`` comes from the config, else the metadata; ``checkpoint_ts`` is the
id read as a ULID (``python-ulid``) in milliseconds, else the time of writing.
The Redis side of the layout -- ``JSON.SET`` of the document, ``SET`` of the
pointer, the TTL on both -- is written by ``shared/lua/lib/checkpoint.lua``.

*Remembered encodings.* Every checkpoint holds every message, and LangChain's
``to_json`` walks each message's pydantic fields (about 60 us a message,
measured). Messages are values in LangGraph's state -- a node changes the
conversation by returning new messages, not by editing old ones -- so the
serializer remembers each message object's encoded form while the object
lives, and a turn encodes only the messages it added. An attribute
re-assigned on a remembered message (``m.content = ...``) is noticed and
re-encoded; a change made *inside* one of its values
(``m.additional_kwargs["k"] = v``) is not: a graph that edits messages that
way must run with ``CHECKPOINT_CACHE=0``, which turns this off.

A long conversation's message list is encoded the same way, a level up
(:meth:`EncodingSerializer.encode_list`): LangGraph's reducer returns a new
list that begins with the very message objects of the last one, so the list's
encoding is the last one's with the new messages' encodings appended --
instead of one call back into Python per message, which profiling showed to
be a third of the worker's time at a few hundred turns. The document is
encoded in one ``orjson.dumps``, the kept encodings spliced in as fragments.

*Encryption at rest* (ENCRYPTION_KEYS; the envelope format is in
:mod:`switchboard.shared.checkpoints`). A message is sealed when it is
encoded, so what is remembered -- per message and per list -- is its sealed
envelope: a turn seals the messages it added and nothing else of the
conversation, and the document stays the library's (the envelopes are
constructor dicts, which the library's reader hands to the serializer).
Every other channel value is sealed whole, each turn, as it is encoded.
"""

from __future__ import annotations

import operator
import time
import weakref
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from itertools import chain
from typing import Any

import orjson
import redis.asyncio as aioredis
from langchain_core.load.serializable import Serializable
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import copy_checkpoint
from langgraph.checkpoint.redis.aio import AsyncRedisSaver
from langgraph.checkpoint.redis.util import to_storage_safe_id, to_storage_safe_str

from switchboard.shared.checkpoints import CachingSerializer
from switchboard.shared.encryption import Keyring

try:
    from ulid import ULID  # python-ulid, as the library imports it
except ImportError:  # then the library, too, stamps the time of writing
    ULID = None

#: Upper bound on remembered encodings; live messages are far fewer normally
#: (the worker's checkpoint cache bounds them), this only caps the worst case.
MAX_REMEMBERED = 200_000

#: Lists whose encoding is kept by default (the worker keeps one per
#: conversation whose checkpoint it keeps: ``CHECKPOINT_CACHE``).
MAX_LISTS = 256

#: The graph's own namespace (subgraphs' checkpoints go through the library).
ROOT_NS = ""


# -- keys and settings -------------------------------------------------------------------

def checkpoint_key(saver: AsyncRedisSaver, thread_id: str, checkpoint_id: str) -> str:
    """The key of a checkpoint document of the graph's own namespace."""
    return saver._make_redis_checkpoint_key_cached(thread_id, ROOT_NS, checkpoint_id)


def latest_key(saver: AsyncRedisSaver, thread_id: str) -> str:
    """The thread's latest pointer (its value: the newest document's key)."""
    return saver._make_redis_checkpoint_latest_key(thread_id, ROOT_NS)


def ttl_ms(saver: AsyncRedisSaver) -> int:
    """The saver's checkpoint TTL in milliseconds (0: none)."""
    minutes = (saver.ttl_config or {}).get("default_ttl")
    return int(minutes * 60_000) if minutes else 0


def client(saver: AsyncRedisSaver) -> aioredis.Redis:
    """The saver's Redis client."""
    return saver._redis


# -- the document ------------------------------------------------------------------------

@dataclass(frozen=True)
class Document:
    """A checkpoint of the graph's own namespace, encoded as the library stores it."""

    checkpoint_id: str
    parent_id: str | None
    key: str
    latest_key: str
    body: bytes  #: the JSON document


def document(saver: AsyncRedisSaver, config: RunnableConfig, checkpoint: Any, metadata: Any) -> Document:
    """The document the library's ``aput(config, checkpoint, metadata, ...)``
    stores for a checkpoint of the graph's own namespace, encoded in one pass
    (messages already encoded are spliced in). ``saver.serde`` must be an
    :class:`EncodingSerializer`."""
    configurable = config["configurable"]
    thread_id = configurable["thread_id"]
    checkpoint_id = checkpoint["id"]
    parent_id = configurable.get("checkpoint_id")
    if parent_id == checkpoint_id:
        parent_id = None
    run_id = configurable.get("run_id", metadata.get("run_id"))
    fields = {
        "thread_id": to_storage_safe_id(thread_id),
        "run_id": to_storage_safe_id(run_id) if run_id else "",
        "checkpoint_ns": to_storage_safe_str(ROOT_NS),
        "checkpoint_id": to_storage_safe_id(checkpoint_id),
        "parent_checkpoint_id": to_storage_safe_id(parent_id) if parent_id else "",
        "checkpoint_ts": _ulid_ms(checkpoint_id),
        "checkpoint": _encode_checkpoint(saver, thread_id, checkpoint),
        "metadata": saver._dump_metadata(metadata),
        "has_writes": False,
    }
    if "source" in metadata and "step" in metadata:
        fields["source"] = metadata["source"]
        fields["step"] = metadata["step"]
    return Document(checkpoint_id=checkpoint_id, parent_id=parent_id,
                    key=checkpoint_key(saver, thread_id, checkpoint_id), latest_key=latest_key(saver, thread_id),
                    body=orjson.dumps(fields))


def _encode_checkpoint(saver: AsyncRedisSaver, thread_id: str, checkpoint: Any) -> Any:
    """The ``checkpoint`` field, as ``_dump_checkpoint`` writes it: JSON text
    spliced into the document (an orjson Fragment), or, for a state holding
    bytes, the library's own (msgpack) route."""
    body = {k: v for k, v in checkpoint.items() if k != "pending_sends"}
    body["channel_versions"] = {k: str(v) for k, v in checkpoint["channel_versions"].items()}
    serde: EncodingSerializer = saver.serde
    try:
        values = body.get("channel_values")
        if isinstance(values, dict):
            body["channel_values"] = values = dict(values)
            for name, value in values.items():
                # The messages: encoded (and, with keys, sealed) once each, a
                # list kept per thread. Any other value is sealed whole with
                # keys: encode_list answers None for a list that is not all
                # LangChain objects.
                encoded = serde.encode_list((thread_id, name), value) if isinstance(value, list) else None
                if encoded is None:
                    sealed = serde.seal_channel_value(value)
                    # An envelope goes in as JSON text, not walked again.
                    encoded = value if sealed is value else orjson.Fragment(orjson.dumps(sealed))
                values[name] = encoded
        return orjson.Fragment(orjson.dumps(
            {"type": "json", **serde._preprocess_redis_json(body), "pending_sends": []},
            default=serde._default_handler))
    except TypeError:  # bytes inside the state (orjson's errors are TypeErrors)
        return saver._dump_checkpoint(copy_checkpoint(checkpoint))


def _ulid_ms(checkpoint_id: str) -> float:
    """The library's ``checkpoint_ts``: the id read as a ULID, else now."""
    if ULID is not None:
        try:
            return ULID.from_str(checkpoint_id).timestamp
        except Exception:  # noqa: BLE001 - the library falls back the same way (LangGraph's ids are UUIDs)
            pass
    return time.time() * 1000


# -- the serializer ----------------------------------------------------------------------

class EncodingSerializer(CachingSerializer):
    """The worker's serializer: the gateway's (class look-ups cached, sealing
    with ``keyring``) plus remembered encodings (see the module notes).
    ``remember_encodings=False`` (``CHECKPOINT_CACHE=0``) encodes -- and
    seals -- everything every time, as the library does."""

    def __init__(self, *args: Any, remember_encodings: bool = True, max_lists: int = MAX_LISTS, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._remember = remember_encodings
        # id(message) -> (weak reference, its attribute values, its encoding).
        # The weak reference's callback drops the entry when the message dies,
        # before its id can be reused by another object.
        self._encoded: dict[int, tuple[weakref.ref, tuple[Any, ...], Any]] = {}
        # key -> the list last encoded under it: its items, their attribute
        # values and its encoding (LRU, bounded).
        self._lists: OrderedDict[Hashable, _EncodedList] = OrderedDict()
        self.max_lists = max_lists

    def _default_handler(self, obj: Any) -> Any:
        if not (self._remember and isinstance(obj, Serializable)):
            return super()._default_handler(obj)
        key = id(obj)
        fields = tuple(obj.__dict__.values())
        known = self._encoded.get(key)
        if known is not None and known[0]() is obj and _same(known[1], fields):
            return known[2]
        # Kept as JSON text (an orjson Fragment): later checkpoints splice it
        # in without walking, encoding -- or sealing -- it again.
        encoded = orjson.Fragment(orjson.dumps(super()._default_handler(obj), default=self._default_handler))
        if len(self._encoded) < MAX_REMEMBERED:
            try:
                ref = weakref.ref(obj, lambda _, key=key, table=self._encoded: table.pop(key, None))
            except TypeError:  # not weakly referenceable: encode it every time
                return encoded
            self._encoded[key] = (ref, fields, encoded)
        return encoded

    def encode_list(self, key: Hashable, items: list[Any]) -> orjson.Fragment | None:
        """The JSON of a list of LangChain objects (a conversation's messages),
        as ``orjson.dumps`` would write it here, reusing the encoding last made
        under ``key`` for as long a prefix as holds the very same, unchanged
        objects. None when the list is not one this applies to (empty, or an
        item is not a LangChain object): encode it the usual way."""
        if not (self._remember and items):
            return None
        # Every item's attribute values, and the comparisons below, run in C
        # (map over builtins): per item this costs far less than one call back.
        try:
            fields = list(map(tuple, map(dict.values, map(vars, items))))
        except TypeError:  # an item without attributes (a str, a dict): not a list for this
            return None
        previous = self._lists.get(key)
        kept = 0
        if previous is not None and len(items) >= len(previous.items):
            head = fields[:len(previous.items)]
            if (all(map(operator.is_, items, previous.items))
                    and list(map(len, head)) == list(map(len, previous.fields))
                    and all(map(operator.is_, chain.from_iterable(head), chain.from_iterable(previous.fields)))):
                kept = len(previous.items)
        fresh = items[kept:]  # (the kept ones were checked when they were new)
        if not all(isinstance(item, Serializable) for item in fresh):
            return None
        parts = [orjson.dumps(item, default=self._default_handler) for item in fresh]
        if kept:
            encoded = b"".join([previous.encoded[:-1], b",", b",".join(parts), b"]"]) if parts else previous.encoded
        else:
            encoded = b"[" + b",".join(parts) + b"]"
        self._lists[key] = _EncodedList(list(items), fields, encoded)
        self._lists.move_to_end(key)
        while len(self._lists) > self.max_lists:
            self._lists.popitem(last=False)
        return orjson.Fragment(encoded)

    def _preprocess_redis_json(self, obj: Any, **kwargs: Any) -> Any:
        # A LangChain object passes through the library's walk unchanged (it
        # is none of the types it rewrites); skip the walk's type tests.
        if self._remember and isinstance(obj, Serializable):
            return obj
        return super()._preprocess_redis_json(obj, **kwargs)

    def remembered(self) -> int:
        """How many encodings are remembered now (for tests and metrics)."""
        return len(self._encoded)


class _EncodedList:
    __slots__ = ("items", "fields", "encoded")

    def __init__(self, items: list[Any], fields: list[tuple[Any, ...]], encoded: bytes):
        self.items = items
        self.fields = fields
        self.encoded = encoded


def _same(before: tuple[Any, ...], now: tuple[Any, ...]) -> bool:
    """The same attribute objects, by identity (cheap; see the module notes)."""
    return len(before) == len(now) and all(a is b for a, b in zip(before, now))


def use_encoding_serializer(saver: AsyncRedisSaver, *, remember_encodings: bool = True,
                            max_lists: int = MAX_LISTS, keyring: Keyring | None = None) -> AsyncRedisSaver:
    """Give ``saver`` the worker's serializer (:func:`document` needs it),
    sealing with ``keyring`` (ENCRYPTION_KEYS)."""
    saver.serde = EncodingSerializer(remember_encodings=remember_encodings, max_lists=max_lists, keyring=keyring)
    return saver
