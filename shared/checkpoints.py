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
"""

from __future__ import annotations

import logging
from typing import Any

from langgraph.checkpoint.redis.aio import AsyncRedisSaver
from langgraph.checkpoint.redis.jsonplus_redis import JsonPlusRedisSerializer

log = logging.getLogger(__name__)

_MISSING = object()

#: Upper bound on remembered class look-ups (ids are class names, a small set).
MAX_CLASSES = 10_000


class _Failure:
    __slots__ = ("message",)

    def __init__(self, message: str):
        self.message = message


class CachingSerializer(JsonPlusRedisSerializer):
    """The library's serializer, with each LangChain id's class look-up
    remembered (see the module notes)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._classes: dict[tuple[str, ...], Any] = {}

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
    """The library's saver with its indexes' tags matched exactly.

    RediSearch TAG fields fold case unless declared ``CASESENSITIVE``, so with
    the library's own schema a search for thread ``{u:casey}/c`` also finds
    ``{u:CASEY}/c``: another user's checkpoints, counted by pruning and
    listed by ``alist``. Thread ids carry user ids, which are case-sensitive
    names, so every tag here is. Only the index definition differs: the
    documents, and a stock ``AsyncRedisSaver`` reading them, are unchanged.
    :func:`setup_saver` replaces an index created without it."""

    @property
    def checkpoints_schema(self) -> dict[str, Any]:
        return _case_sensitive(super().checkpoints_schema)

    @property
    def writes_schema(self) -> dict[str, Any]:
        return _case_sensitive(super().writes_schema)


def use_caching_serializer(saver: AsyncRedisSaver) -> AsyncRedisSaver:
    saver.serde = CachingSerializer()
    return saver


async def setup_saver(saver: AsyncRedisSaver, attempts: int = 5) -> None:
    """``asetup()`` that tolerates other processes creating the indexes at the
    same moment: redisvl checks for an index, then creates it, so pods starting
    together can see "Index already exists". The index is there then; setting
    up again skips it and finishes the rest of the set-up."""
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
