"""The LangGraph checkpointer as Switchboard uses it.

langgraph-checkpoint-redis revives every stored message by importing the
module its LangChain id names (``langchain.schema.messages`` for a
``HumanMessage``). That legacy module does not exist without the ``langchain``
package, so each revival fails an import -- a search of ``sys.path`` on disk
-- before falling back: most of a turn's CPU time, measured with py-spy on the
worker. :class:`CachingSerializer` remembers each id's outcome, success or
failure, so the search happens once per process.

Writing is the other cost that grows with the conversation: every checkpoint
holds every message, and LangChain's ``to_json`` walks each message's pydantic
fields (about 60 us a message, measured). Messages are values in LangGraph's
state -- a node changes the conversation by returning new messages, not by
editing old ones -- so :class:`CachingSerializer` also remembers each message
object's encoded form while the object lives, and a turn encodes only the
messages it added. An attribute re-assigned on a remembered message (``m.content
= ...``) is noticed and re-encoded; a change made *inside* one of its values
(``m.additional_kwargs["k"] = v``) is not: a graph that edits messages that way
must run with ``CHECKPOINT_CACHE=0``, which turns this off.

A long conversation's message list is encoded the same way, a level up
(:meth:`CachingSerializer.encode_list`): LangGraph's reducer returns a new list
that begins with the very message objects of the last one, so the list's
encoding is the last one's with the new messages' encodings appended --
instead of one call back into Python per message, which profiling showed to
be a third of the worker's time at a few hundred turns.
"""

from __future__ import annotations

import operator
import weakref
from itertools import chain
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import orjson
from langchain_core.load.serializable import Serializable

from langgraph.checkpoint.redis.aio import AsyncRedisSaver
from langgraph.checkpoint.redis.jsonplus_redis import JsonPlusRedisSerializer

_MISSING = object()


class _Failure:
    __slots__ = ("message",)

    def __init__(self, message: str):
        self.message = message


#: Upper bound on remembered encodings; live messages are far fewer normally
#: (the worker's checkpoint cache bounds them), this only caps the worst case.
MAX_REMEMBERED = 200_000


#: Lists whose encoding is kept by default (the worker keeps one per
#: conversation whose checkpoint it keeps: ``CHECKPOINT_CACHE``).
MAX_LISTS = 256


class CachingSerializer(JsonPlusRedisSerializer):
    def __init__(self, *args: Any, remember_encodings: bool = True, max_lists: int = MAX_LISTS, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._classes: dict[tuple[str, ...], Any] = {}
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
        # in without walking or encoding it again.
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
            if len(self._classes) < 10_000:  # bounded: ids are class names, a small set
                self._classes[key] = found
        if isinstance(found, _Failure):
            raise ValueError(found.message)
        return found


class _EncodedList:
    __slots__ = ("items", "fields", "encoded")

    def __init__(self, items: list[Any], fields: list[tuple[Any, ...]], encoded: bytes):
        self.items = items
        self.fields = fields
        self.encoded = encoded


def _same(before: tuple[Any, ...], now: tuple[Any, ...]) -> bool:
    """The same attribute objects, by identity (cheap; see the module notes)."""
    return len(before) == len(now) and all(a is b for a, b in zip(before, now))


def use_caching_serializer(saver: AsyncRedisSaver, *, remember_encodings: bool = True,
                           max_lists: int = MAX_LISTS) -> AsyncRedisSaver:
    saver.serde = CachingSerializer(remember_encodings=remember_encodings, max_lists=max_lists)
    return saver


async def setup_saver(saver: AsyncRedisSaver, attempts: int = 5) -> None:
    """``asetup()`` that tolerates other processes creating the indexes at the
    same moment: redisvl checks for an index, then creates it, so pods starting
    together can see "Index already exists". The index is there then; setting
    up again skips it and finishes the rest of the set-up."""
    for attempt in range(attempts):
        try:
            await saver.asetup()
            return
        except Exception as exc:  # noqa: BLE001 - redisvl wraps the ResponseError in its own type
            if "already exists" not in str(exc) or attempt == attempts - 1:
                raise
