"""Redis clients (connection.py): telling an outage from a refused command,
and a pooled connection made stale by a Redis restart retried, not failed."""

import asyncio

from redis.exceptions import BusyLoadingError, ConnectionError, ResponseError, TimeoutError

from switchboard.embedded_redis import EmbeddedRedis, free_port
from switchboard.shared.connection import is_outage, make_client, make_sync_client
from switchboard.shared.settings import RedisSettings
from tests.support.sentinels import SentinelSet


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


async def test_every_pooled_connection_follows_a_sentinel_failover(tmp_path):
    """After the master is killed and its replica promoted, each stale pooled
    connection reconnects to the new master on its command's retry: none
    fails, none knocks at the dead master (connection.SentinelConnection)."""
    with SentinelSet(tmp_path) as sentinels:
        settings = RedisSettings(url=sentinels.url, max_connections=8, sentinel_password=sentinels.sentinel_password)
        client = make_client(settings)
        sync = make_sync_client(settings)
        try:
            held = [await client.connection_pool.get_connection() for _ in range(8)]
            for connection in held:
                await client.connection_pool.release(connection)
            assert await client.set("before", "1")
            assert await client.execute_command("WAIT", 1, 5000) == 1
            old = sentinels.kill_master()
            new = sentinels.wait_failover(old)
            # Eight commands at once: each takes one of the eight stale connections.
            assert await asyncio.gather(*(client.blpop([f"none{n}"], 0.2) for n in range(8))) == [None] * 8
            pool = client.connection_pool
            assert len(pool._available_connections) == 8
            assert {(c.port, c.is_connected) for c in pool._available_connections} == {(new.port, True)}
            for n in range(8):
                assert await client.set(f"k{n}", n)
            assert await client.get("before") == "1"
            assert sync.get("k7") == "7"  # the command line's client finds the new master too
        finally:
            await client.aclose()
            sync.close()
