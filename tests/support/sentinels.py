"""A local Redis Sentinel set made from the embedded server: a master, a
replica, and three sentinels watching them (quorum 2), all on loopback.

Both servers load the same ACL file and passwords as the embedded Redis
(:mod:`switchboard.shared.acl`), so the services log in as their tier's user.
The servers replicate, and the sentinels log in to them, as ``sb-admin``.
Failover is quick (a master is down after ``DOWN_AFTER_MS``) so a test can
kill the master and see its replica promoted in a few seconds.

    with SentinelSet(tmp_path) as s:
        env = s.client_env("gateway")      # REDIS_URL=redis+sentinel://.../sb
        s.kill_master()                     # SIGKILL
        s.wait_failover()                   # the replica is master now
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

import redis

from switchboard.embedded_redis import EmbeddedRedis, EmbeddedRedisError, binaries, free_port
from switchboard.shared import acl

MASTER_NAME = "sb"
DOWN_AFTER_MS = 1000  #: how long a master may be silent before the sentinels call it down
FAILOVER_TIMEOUT_MS = 6000
QUORUM = 2


class _Server(EmbeddedRedis):
    """An embedded Redis whose passwords live in a directory shared with the
    set's other server, and that replicates (when it is a replica) as ``sb-admin``."""

    def __init__(self, data_dir: Path, users_dir: Path, port: int, replica_of: int | None = None):
        super().__init__(data_dir, port=port)
        self._users_dir = users_dir
        self.replica_of = replica_of

    @property
    def users_dir(self) -> Path:
        return self._users_dir

    def command(self) -> list[str]:
        cmd = super().command()
        # Either server may become a replica after a failover: both know how to log in.
        cmd += ["--masteruser", acl.ADMIN.name, "--masterauth", self.passwords()["admin"],
                "--replica-announce-ip", self.host,
                "--repl-diskless-sync-delay", "0"]  # a replica syncs at once, not 5 s later
        if self.replica_of is not None:
            cmd += ["--replicaof", self.host, str(self.replica_of)]
        return cmd


def _sentinel_id(index: int) -> str:
    return f"{index + 1:040x}"


class SentinelSet:
    def __init__(self, root: str | os.PathLike, sentinels: int = 3):
        self.root = Path(root).resolve()
        # The first server's own place for them, where the test cluster looks (tests/support/cluster.py).
        self.users_dir = self.root / "server-0" / "users"
        first, second = free_port(), free_port()
        self.servers = [_Server(self.root / "server-0", self.users_dir, first),
                        _Server(self.root / "server-1", self.users_dir, second, replica_of=first)]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.sentinels: list[subprocess.Popen | None] = [None] * sentinels
        self.sentinel_password = secrets.token_hex(16)

    # -- addresses -------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """The services' ``REDIS_URL``: the sentinels and the master's name."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}"

    @property
    def url(self) -> str:
        """The operator's URL (``sb-admin``'s password in it)."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{acl.ADMIN.name}:{self.servers[0].passwords()['admin']}@{hosts}/{MASTER_NAME}"

    def client_env(self, tier: str) -> dict[str, str]:
        return {"REDIS_URL": self.address, "REDIS_USERNAME": acl.USERS[tier].name,
                "REDIS_PASSWORD_FILE": str(self.servers[0].password_file(tier)),
                "REDIS_SENTINEL_PASSWORD": self.sentinel_password}

    def _ask(self, port: int) -> redis.Redis:
        """A client of the sentinel on ``port``."""
        return redis.Redis(port=port, password=self.sentinel_password, socket_timeout=1, decode_responses=True)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for server in self.servers:
            server.start()
        self.wait_replicated(timeout)
        for index in range(len(self.sentinels)):
            self._start_sentinel(index)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._sentinel_sees_all(port) for port in self.sentinel_ports):
                return
            time.sleep(0.1)
        self.stop()
        raise EmbeddedRedisError("the sentinels did not find the master, its replica and each other")

    def _start_sentinel(self, index: int) -> None:
        port = self.sentinel_ports[index]
        directory = self.root / f"sentinel-{index}"
        directory.mkdir(parents=True, exist_ok=True)
        master, replica = self.servers
        # Each sentinel is told its id, the other sentinels and the replica,
        # instead of finding them by hello messages (two seconds apart).
        known = [f"sentinel known-sentinel {MASTER_NAME} 127.0.0.1 {other} {_sentinel_id(i)}"
                 for i, other in enumerate(self.sentinel_ports) if i != index]
        config = directory / "sentinel.conf"
        config.write_text("\n".join([
            f"port {port}",
            "bind 127.0.0.1",
            f"dir {directory}",
            f"logfile {directory / 'sentinel.log'}",
            "sentinel resolve-hostnames no",
            f"sentinel monitor {MASTER_NAME} {master.host} {master.port} {QUORUM}",
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {MASTER_NAME} 1",
            f"sentinel auth-user {MASTER_NAME} {acl.ADMIN.name}",
            f"sentinel auth-pass {MASTER_NAME} {master.passwords()['admin']}",
            f"sentinel myid {_sentinel_id(index)}",
            # The sentinels ask for a password too, and give it to each other.
            f"requirepass {self.sentinel_password}",
            f"sentinel sentinel-pass {self.sentinel_password}",
            f"sentinel known-replica {MASTER_NAME} {replica.host} {replica.port}",
            *known,
            "",
        ]))
        config.chmod(0o600)
        server, _ = binaries()
        self.sentinels[index] = subprocess.Popen([server, str(config), "--sentinel"], stdout=subprocess.DEVNULL,
                                                 stderr=subprocess.DEVNULL, start_new_session=True)

    def _sentinel_sees_all(self, port: int) -> bool:
        try:
            with self._ask(port) as s:
                state = s.sentinel_master(MASTER_NAME)
                replicas = s.sentinel_slaves(MASTER_NAME)
        except redis.RedisError:
            return False
        return (int(state.get("num-other-sentinels", 0)) == len(self.sentinel_ports) - 1
                and any(r.get("flags") == "slave" and r.get("master-link-status") == "ok" for r in replicas))

    def stop(self) -> None:
        for process in self.sentinels:
            if process is not None and process.poll() is None:
                process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(5)
                if process.poll() is None:
                    process.kill()
                    process.wait()
        for server in self.servers:
            server.stop()

    def __enter__(self) -> SentinelSet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults ----------------------------------------------------------------------------------

    def _operator(self, server: _Server) -> redis.Redis:
        return redis.Redis(port=server.port, username=acl.ADMIN.name, password=server.passwords()["admin"],
                           socket_timeout=2, decode_responses=True)

    def master(self) -> _Server:
        """The server the sentinels call master now."""
        with self._ask(self.sentinel_ports[0]) as s:
            _, port = s.sentinel_get_master_addr_by_name(MASTER_NAME)
        return next(server for server in self.servers if server.port == int(port))

    def replica(self) -> _Server:
        """The server that is not the master now."""
        master = self.master()
        return next(server for server in self.servers if server is not master)

    def wait_replicated(self, timeout: float = 20.0) -> None:
        """Until the replica is in sync with the master (``master_link_status:up``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for server in self.servers:
                if server.process is None or server.process.poll() is not None:
                    continue
                with contextlib.suppress(redis.RedisError), self._operator(server) as client:
                    info = client.info("replication")
                    if info.get("role") == "slave" and info.get("master_link_status") == "up":
                        return
            time.sleep(0.1)
        raise EmbeddedRedisError(f"no replica in sync within {timeout} s")

    def kill_master(self) -> _Server:
        """SIGKILL the current master; returns it (restart it with ``restart``)."""
        master = self.master()
        assert master.process is not None
        os.kill(master.process.pid, signal.SIGKILL)
        master.process.wait()
        return master

    def wait_failover(self, old: _Server, timeout: float = 30.0) -> _Server:
        """Until every sentinel names a master other than ``old`` and that
        server says it is master; returns it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ports = set()
            for port in self.sentinel_ports:
                with contextlib.suppress(redis.RedisError), \
                        self._ask(port) as s:
                    ports.add(int(s.sentinel_get_master_addr_by_name(MASTER_NAME)[1]))
            if len(ports) == 1 and old.port not in ports:
                new = next(server for server in self.servers if server.port in ports)
                with contextlib.suppress(redis.RedisError), self._operator(new) as client:
                    if client.info("replication").get("role") == "master":
                        return new
            time.sleep(0.1)
        raise EmbeddedRedisError(f"no failover within {timeout} s")

    def restart(self, server: _Server) -> None:
        """Start a killed server again (the sentinels make it a replica of the new master)."""
        server.replica_of = None
        server.start()
