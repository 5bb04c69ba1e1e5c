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

from typing import Any

from langgraph.checkpoint.redis.aio import AsyncRedisSaver
from langgraph.checkpoint.redis.jsonplus_redis import JsonPlusRedisSerializer

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
            return
        except Exception as exc:  # noqa: BLE001 - redisvl wraps the ResponseError in its own type
            if "already exists" not in str(exc) or attempt == attempts - 1:
                raise
