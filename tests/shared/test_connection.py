"""Redis clients (connection.py): telling an outage from a refused command,
and a pooled connection made stale by a Redis restart retried, not failed."""

from redis.exceptions import BusyLoadingError, ConnectionError, ResponseError, TimeoutError

from switchboard.embedded_redis import EmbeddedRedis, free_port
from switchboard.shared.connection import is_outage, make_client
from switchboard.shared.settings import RedisSettings


class WrappedByALibrary(Exception):
    """As redisvl wraps the Redis error of a search it ran for the checkpointer."""


def test_an_outage_is_recognised_also_when_a_library_wrapped_it():
    assert is_outage(ConnectionError("refused"))
    assert is_outage(TimeoutError("timed out"))
    assert is_outage(BusyLoadingError("LOADING"))
    try:
        try:
            raise ConnectionError("reset")
        except ConnectionError as exc:
            raise WrappedByALibrary("search failed") from exc
    except WrappedByALibrary as wrapped:
        assert is_outage(wrapped)


def test_a_refused_command_or_a_graph_error_is_not_an_outage():
    assert not is_outage(ResponseError("WRONGTYPE"))
    assert not is_outage(ValueError("a bug in a graph"))
    assert not is_outage(OSError("a tool's file is missing"))  # the graph's, not Redis's


async def test_every_pooled_connection_survives_a_redis_restart(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis", port=free_port())
    server.start()
    client = make_client(RedisSettings(url=server.url, max_connections=8))
    try:
        # Fill the pool: eight open connections, each made stale by the restart.
        held = [await client.connection_pool.get_connection() for _ in range(8)]
        for connection in held:
            await client.connection_pool.release(connection)
        server.stop()
        server.start()
        # The first command on each stale connection is retried, not failed.
        for n in range(8):
            assert await client.set(f"k{n}", n)
            assert await client.get(f"k{n}") == str(n)
    finally:
        await client.aclose()
        server.stop()
