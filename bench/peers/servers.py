"""The peer servers: what each needs, and how it is installed, started and stopped.

| peer            | package (own venv)                         | processes we start                               |
|-----------------|--------------------------------------------|--------------------------------------------------|
| ``langgraph-dev`` | ``langgraph-cli[inmem]``                 | ``langgraph dev`` (in-memory runtime)            |
| ``langhost``      | ``langhost`` + ``langgraph-runtime-pg``  | PostgreSQL, Redis, ``langhost serve``            |
| ``langrove``      | ``langrove`` (Python >= 3.12)            | PostgreSQL, Redis, ``langrove migrate`` + ``serve`` |

Everything listens on 127.0.0.1 on ports picked free at start, and lives in a temporary
directory (``app/`` with the graph, ``pg/``, ``redis/``, ``logs/``) removed by ``stop()``.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from pathlib import Path

import httpx

from .backing import TempPostgres, TempRedis, backing_unavailable
from .client import sequential_latency
from .errors import PeerError, PeerStartError, PeerUnavailable
from .procs import (
    ChildProcess,
    child_env,
    free_port,
    port_open,
    processes_mentioning,
    run_to_completion,
    wait_http_ok,
)
from .venvs import DEFAULT_VENV_ROOT, PeerVenv, VenvSpec, find_python

logger = logging.getLogger(__name__)

_HERE = Path(__file__).resolve().parent
_APP_FILES = ("graph_app.py", "langgraph.json")
#: The project's default graph, served unchanged by every peer.
_PROJECT_GRAPH = _HERE.parents[1] / "services" / "conversation-worker" / "graph.py"

# The graph library is pinned to the project's own versions, so all peers (and Switchboard)
# run the same LangGraph and the comparison is about the servers.
_SAME_GRAPH_LIBS = ("langgraph==1.2.24", "langchain-core==1.8.3")

#: Environment that keeps every peer offline and quiet towards LangSmith.
_OFFLINE = {
    "LANGGRAPH_CLI_NO_ANALYTICS": "1",
    "LANGSMITH_TRACING": "false",
    "LANGCHAIN_TRACING_V2": "false",
    "PYTHONUNBUFFERED": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
}


class Peer:
    """One peer server. ``await start()`` installs (cached), starts and health-checks it; ``url`` is then set.

    ``processes`` are the peer's own (server, migration); PostgreSQL and Redis belong to
    ``TempPostgres`` / ``TempRedis`` and are stopped after them.

    ``think_ms`` becomes ``PEER_THINK_MS`` for the graph. ``n_jobs_per_worker`` is the
    run concurrency of langgraph-api based peers (their CLIs document 10 but pass 1
    when the flag is absent; we pass it explicitly). ``turn_mode`` is the endpoint
    ``run_turns`` should use for this peer.
    """

    name: str = ""
    spec: VenvSpec
    turn_mode: str = "wait"
    needs_backing: bool = False

    def __init__(
        self,
        *,
        think_ms: float = 0.0,
        n_jobs_per_worker: int = 10,
        venv_root: Path = DEFAULT_VENV_ROOT,
        start_timeout: float = 180.0,
        keep_logs: bool = False,
    ) -> None:
        self.think_ms = think_ms
        self.n_jobs_per_worker = n_jobs_per_worker
        self.venv = PeerVenv(self.spec, venv_root)
        self.start_timeout = start_timeout
        self.keep_logs = keep_logs
        self.url = ""
        self.port = 0
        self.tmpdir: Path | None = None
        self.processes: list[ChildProcess] = []
        self._postgres: TempPostgres | None = None
        self._redis: TempRedis | None = None

    # -- lifecycle ---------------------------------------------------------------

    async def install(self) -> bool:
        """Create the venv unless it is there and importable; True if anything was installed."""
        if reason := self.unavailable():
            raise PeerUnavailable(f"{self.name}: {reason}")
        return await self.venv.ensure()

    async def start(self) -> None:
        await self.install()
        self.tmpdir = Path(tempfile.mkdtemp(prefix=f"bench-peer-{self.name}-"))
        self.tmpdir.chmod(0o755)  # PostgreSQL runs as another user and must reach pg/
        app = self.tmpdir / "app"
        app.mkdir()
        for name in _APP_FILES:
            shutil.copy2(_HERE / name, app / name)
        shutil.copy2(_PROJECT_GRAPH, app / "switchboard_graph.py")  # the one graph source
        try:
            if self.needs_backing:
                self._postgres = TempPostgres(self.tmpdir / "pg", self.log_dir)
                self._redis = TempRedis(self.tmpdir / "redis", self.log_dir)
                database_uri, redis_uri = await asyncio.gather(self._postgres.start(), self._redis.start())
            else:
                database_uri = redis_uri = ""
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            server = await self._start_server(app, database_uri, redis_uri)
            await wait_http_ok(self.url, server, self.start_timeout)
            await self._check_graph(server)
        except BaseException:
            self.keep_logs = True  # the error names a log; keep it readable
            await self.stop()
            raise
        logger.info("%s is up at %s", self.name, self.url)

    async def stop(self) -> None:
        """Stop the server, then its PostgreSQL and Redis; remove the temporary directory."""
        for proc in reversed(self.processes):
            await proc.stop()
        for backing in (self._redis, self._postgres):
            if backing is not None:
                await backing.stop()
        if self.tmpdir is not None and self.tmpdir.exists():
            if self.keep_logs:
                for sub in ("app", "pg", "redis"):
                    shutil.rmtree(self.tmpdir / sub, ignore_errors=True)
                logger.info("%s logs kept in %s", self.name, self.log_dir)
            else:
                shutil.rmtree(self.tmpdir, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """What of this peer still runs after ``stop()``: process groups, listening ports."""
        everything = self.processes + self._backing_processes()
        left = [f"{p.name} (group {p.pid})" for p in everything if p.group_alive()]
        ports = [self.port] + [b.port for b in (self._postgres, self._redis) if b is not None]
        left += [f"port {port} still open" for port in ports if port and port_open(port)]
        markers = [str(self.venv.path)] + ([str(self.tmpdir)] if self.tmpdir else [])
        left += processes_mentioning(markers)
        return left

    async def __aenter__(self) -> Peer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- what subclasses provide -------------------------------------------------

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this peer cannot run here, or None."""
        if find_python(cls.spec.min_python) is None:
            version = ".".join(map(str, cls.spec.min_python))
            return f"needs Python >= {version}; none found (looked at PATH, /usr/bin, pyenv, uv)"
        return backing_unavailable() if cls.needs_backing else None

    async def _start_server(self, app: Path, database_uri: str, redis_uri: str) -> ChildProcess:
        raise NotImplementedError

    # -- helpers -----------------------------------------------------------------

    @property
    def log_dir(self) -> Path:
        assert self.tmpdir is not None
        return self.tmpdir / "logs"

    def _backing_processes(self) -> list[ChildProcess]:
        return [b.process for b in (self._postgres, self._redis) if b is not None and b.process is not None]

    def _env(self, extra: dict[str, str]) -> dict[str, str]:
        return child_env(
            {**_OFFLINE, "PEER_THINK_MS": f"{self.think_ms:g}", **extra}, venv_bin=self.venv.path / "bin"
        )

    async def _spawn(self, name: str, argv: list[str], cwd: Path, env: dict[str, str]) -> ChildProcess:
        proc = ChildProcess(name, argv, log_path=self.log_dir / f"{name}.log", cwd=cwd, env=env)
        self.processes.append(proc)
        await proc.start()
        return proc

    async def _check_graph(self, server: ChildProcess) -> None:
        """The server answers /ok; make sure it also serves our graph (one real turn)."""
        try:
            await sequential_latency(self.url, 1, mode=self.turn_mode, timeout=60.0)
        except (PeerError, httpx.HTTPError) as exc:
            raise PeerStartError(
                f"{self.name} is up but a first turn failed: {exc}\n"
                f"last lines of {server.log_path}:\n{server.log_tail()}"
            ) from exc


class LanggraphDev(Peer):
    """``langgraph dev``: langgraph-api on the in-memory runtime, reload off, no browser."""

    name = "langgraph-dev"
    spec = VenvSpec(
        name="langgraph-dev",
        min_python=(3, 11),
        requirements=(
            "langgraph-cli[inmem]==0.4.40",
            "langgraph-api==0.16.7",
            "langgraph-runtime-inmem==0.36.7",
            *_SAME_GRAPH_LIBS,
        ),
        imports=("langgraph_cli", "langgraph_api", "langgraph_runtime_inmem", "langgraph"),
    )

    async def _start_server(self, app: Path, database_uri: str, redis_uri: str) -> ChildProcess:
        argv = [
            str(self.venv.bin("langgraph")),
            "dev",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--config",
            "langgraph.json",
            "--no-browser",
            "--no-reload",
            "--n-jobs-per-worker",
            str(self.n_jobs_per_worker),
        ]
        return await self._spawn("langgraph-dev", argv, app, self._env({}))


class Langhost(Peer):
    """``langhost serve``: the stock langgraph-api on langgraph-runtime-pg (PostgreSQL + Redis).

    It applies its Alembic migrations itself at start (``LG_RUNTIME_PG_AUTO_MIGRATE``
    defaults to true).
    """

    name = "langhost"
    needs_backing = True
    spec = VenvSpec(
        name="langhost",
        min_python=(3, 11),
        requirements=("langhost==0.11.1.post1", "langgraph-runtime-pg==0.11.1.post1", *_SAME_GRAPH_LIBS),
        imports=("langhost.cli", "langgraph_runtime_pg", "langgraph_api", "langgraph"),
    )

    async def _start_server(self, app: Path, database_uri: str, redis_uri: str) -> ChildProcess:
        argv = [
            str(self.venv.bin("langhost")),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "-c",
            "langgraph.json",
            "--database-uri",
            database_uri,
            "--redis-uri",
            redis_uri,
            "--n-jobs-per-worker",
            str(self.n_jobs_per_worker),
        ]
        return await self._spawn("langhost", argv, app, self._env({}))


class Langrove(Peer):
    """``langrove serve`` after ``langrove migrate``, on PostgreSQL + Redis.

    Only the API process is started: it runs ``/runs/wait`` and ``/runs/stream``
    inline; ``langrove worker`` (Celery) serves background runs, which we do not use.
    Its ``/runs/wait`` fails on any graph whose state holds message objects (it
    ``orjson.dumps`` the state without a default), so turns go through ``/runs/stream``.
    """

    name = "langrove"
    needs_backing = True
    turn_mode = "stream"
    spec = VenvSpec(
        name="langrove",
        min_python=(3, 12),
        requirements=("langrove==0.3.0", *_SAME_GRAPH_LIBS),
        imports=("langrove.app", "langgraph"),
    )

    async def _start_server(self, app: Path, database_uri: str, redis_uri: str) -> ChildProcess:
        env = self._env(
            {
                "LANGROVE_DATABASE_URL": database_uri,
                "LANGROVE_REDIS_URL": redis_uri,
                "LANGROVE_CONFIG_PATH": str(app / "langgraph.json"),
            }
        )
        migrate = ChildProcess(
            "langrove-migrate",
            [str(self.venv.bin("langrove")), "migrate", "--config", "langgraph.json"],
            log_path=self.log_dir / "langrove-migrate.log",
            cwd=app,
            env=env,
        )
        self.processes.append(migrate)
        await run_to_completion(migrate, timeout=120.0)
        argv = [
            str(self.venv.bin("langrove")),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--config",
            "langgraph.json",
        ]
        return await self._spawn("langrove", argv, app, env)


PEERS: dict[str, type[Peer]] = {cls.name: cls for cls in (LanggraphDev, Langhost, Langrove)}


def get_peer(name: str, **options: object) -> Peer:
    """A new, not yet started peer by name (see ``PEERS``); options go to ``Peer.__init__``."""
    try:
        cls = PEERS[name]
    except KeyError:
        raise ValueError(f"unknown peer {name!r}; known: {', '.join(PEERS)}") from None
    return cls(**options)  # type: ignore[arg-type]


def unavailable_peers() -> dict[str, str]:
    """Peers that cannot run on this machine, each with the reason."""
    return {name: reason for name, cls in PEERS.items() if (reason := cls.unavailable())}


def available_peers() -> list[str]:
    """Names of the peers that can run here (``unavailable_peers()`` says why the others cannot)."""
    missing = unavailable_peers()
    return [name for name in PEERS if name not in missing]
