"""``switchboard run``: every part of the system on this machine.

``switchboard run`` starts the embedded Redis (unless ``REDIS_URL`` is set),
one gateway, one worker and one fanout. ``--gateways N --workers M`` starts
N gateways on consecutive ports, M workers and (for more than one of either)
two fanouts; with more than one gateway, or ``--nginx``, nginx
(:mod:`switchboard.nginx`) listens on ``WEBSOCKET_PORT`` as the WebSocket
load balancer and the gateways on the ports after it. Every service gets its
own ``SERVER_ID`` (``gateway-1``, ``worker-2`` ...) and ``METRICS_PORT``
(``METRICS_PORT`` and the ports after it, a taken one replaced by a free
one), printed with its pid.

The run lasts while every tier has a process left: a gateway stopped on its
own (to watch its devices move to the others) is reported and the rest go
on. Ctrl-C or SIGTERM stops every process it started, nginx and Redis
included, and waits for each to exit.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from switchboard.shared.redis_url import redacted
from switchboard.shared.settings import DEV_JWT_SECRET, SettingsError

#: The tiers in the order their processes start (fanouts first: gateways
#: attach through them) ...
START_ORDER = ("fanout", "worker", "gateway")
#: ... and in the order of their METRICS_PORTs (today's 9101, 9102, 9103 for one of each).
PORT_ORDER = ("gateway", "worker", "fanout")
RUN_METRICS_PORT = 9101
DEFAULT_WEBSOCKET_PORT = 8765
#: Seconds a stopping service gets before it is killed (above the worker's SHUTDOWN_GRACE default).
STOP_GRACE = 30.0
#: The most processes of one tier `run` starts (a local run, not a fleet).
MAX_PER_TIER = 32


@dataclass(frozen=True)
class Layout:
    """How many of each, and whether nginx is in front of the gateways."""

    gateways: int = 1
    workers: int = 1
    fanouts: int = 1
    nginx: bool = False

    @classmethod
    def from_args(cls, gateways: int, workers: int, fanouts: int | None, nginx: bool) -> Layout:
        """``fanouts`` None: one for a run of one gateway and one worker, else two
        (a fanout can then be stopped too); nginx whenever there are several gateways."""
        if fanouts is None:
            fanouts = 1 if gateways == 1 and workers == 1 and not nginx else 2
        for name, value in (("--gateways", gateways), ("--workers", workers), ("--fanouts", fanouts)):
            if not 1 <= value <= MAX_PER_TIER:
                raise SettingsError(f"{name}={value}: between 1 and {MAX_PER_TIER}")
        return cls(gateways, workers, fanouts, nginx or gateways > 1)

    def count(self, tier: str) -> int:
        return {"gateway": self.gateways, "worker": self.workers, "fanout": self.fanouts}[tier]


@dataclass(frozen=True)
class Spec:
    """One service process to start."""

    tier: str
    server_id: str
    label: str  #: its name in the banner: the tier when it is the only one, else its SERVER_ID
    port: int | None = None  #: WEBSOCKET_PORT of a gateway
    metrics_port: int = 0  #: 0: no health endpoints


def plan(layout: Layout, websocket_port: int, metrics_port: int) -> list[Spec]:
    """The processes of a run, in start order (pure: the ports as wished,
    before any taken one is replaced). Gateways listen on ``websocket_port``
    alone, or behind nginx (which takes it) on the ports after it; the
    health ports count up from ``metrics_port`` (0: none) in PORT_ORDER."""
    first_gateway = websocket_port + 1 if layout.nginx else websocket_port
    metrics: dict[tuple[str, int], int] = {}
    offset = 0
    for tier in PORT_ORDER:
        for index in range(1, layout.count(tier) + 1):
            metrics[tier, index] = metrics_port + offset if metrics_port else 0
            offset += 1
    specs = []
    for tier in START_ORDER:
        count = layout.count(tier)
        for index in range(1, count + 1):
            server_id = f"{tier}-{index}"
            specs.append(Spec(tier, server_id, tier if count == 1 else server_id,
                              first_gateway + index - 1 if tier == "gateway" else None, metrics[tier, index]))
    return specs


def _check_ports(websocket_port: int, metrics_port: int, layout: Layout) -> None:
    total = layout.gateways + layout.workers + layout.fanouts
    if not 0 < websocket_port <= 65535 - layout.gateways:
        raise SettingsError(f"WEBSOCKET_PORT={websocket_port}: `switchboard run` needs it and the "
                            f"{layout.gateways} after it")
    if metrics_port and not 0 < metrics_port <= 65536 - total:
        raise SettingsError(f"METRICS_PORT={metrics_port}: `switchboard run` needs it and the next "
                            f"{total - 1} ports")


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name) or str(default)
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None


def _free_if_taken(port: int, host: str) -> int:
    from switchboard.embedded_redis import free_port, port_in_use

    probe = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return free_port() if port and port_in_use(port, probe) else port


@dataclass
class Child:
    spec: Spec
    process: subprocess.Popen
    reported: bool = False  #: its exit was reported


def run(layout: Layout, env: Mapping[str, str]) -> int:
    """Start everything, print where to connect, wait for Ctrl-C/SIGTERM (or
    a tier with no process left), stop everything."""
    # SIGTERM (from a supervisor, `timeout`, systemd) stops everything like Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    host = env.get("WEBSOCKET_HOST") or "127.0.0.1"
    metrics_host = env.get("METRICS_HOST") or "127.0.0.1"
    websocket_port = _port(env, "WEBSOCKET_PORT", DEFAULT_WEBSOCKET_PORT)
    metrics_port = _port(env, "METRICS_PORT", RUN_METRICS_PORT)
    _check_ports(websocket_port, metrics_port, layout)
    specs = [Spec(s.tier, s.server_id, s.label,
                  _free_if_taken(s.port, host) if s.tier == "gateway" and layout.nginx else s.port,
                  _free_if_taken(s.metrics_port, metrics_host))
             for s in plan(layout, websocket_port, metrics_port)]
    balancer = None
    if layout.nginx:
        from switchboard import nginx

        if nginx.binary() is None:
            raise SettingsError(f"--gateways {layout.gateways} puts nginx in front of them, and nginx is not "
                                f"installed: {nginx.INSTALL_HINT}")
    # Development: the gateway accepts the development JWT_SECRET (and says so).
    child_env = dict(env, SWITCHBOARD_DEV="1")
    redis = None
    credentials: dict[str, dict[str, str]] = {}
    children: list[Child] = []
    try:
        if not env.get("REDIS_URL"):
            from switchboard.cli import _embedded

            redis = _embedded(env)
            redis.start()
            # Each service logs in as its tier's user, with its own password file.
            for name in ("REDIS_USERNAME", "REDIS_PASSWORD", "REDIS_PASSWORD_FILE"):
                child_env.pop(name, None)
            credentials = {tier: redis.client_env(tier) for tier in START_ORDER}
        if layout.nginx:
            # nginx hands the gateways each client's address (X-Forwarded-For): they
            # believe it from nginx only, for the per-address caps.
            child_env.setdefault("TRUSTED_PROXIES", "127.0.0.1/32")
        for spec in specs:
            service_env = dict(child_env, SERVER_ID=spec.server_id, METRICS_PORT=str(spec.metrics_port),
                               **credentials.get(spec.tier, {}))
            if spec.port is not None:
                service_env["WEBSOCKET_PORT"] = str(spec.port)
            process = subprocess.Popen([sys.executable, "-m", "switchboard.cli", spec.tier], env=service_env)
            children.append(Child(spec, process))
        for spec in specs:
            if spec.port is not None:
                _wait_for_port(host, spec.port, children)
        gateway_ports = [s.port for s in specs if s.port is not None]
        url = f"ws://{host}:{gateway_ports[0]}/ws"
        if layout.nginx:
            from switchboard import nginx

            listen = "127.0.0.1" if host in ("0.0.0.0", "") else host
            balancer = nginx.Nginx(Path(env.get("DATA_DIR", ".data")) / "nginx", websocket_port,
                                   [(listen, port) for port in gateway_ports], listen=host)
            balancer.start()
            url = balancer.url
        print(_banner(env, layout, url, specs, children, redis, balancer), flush=True)
        _watch(children)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        # Everything started is stopped, and waited for, even on a second Ctrl-C.
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            _stop(children, balancer, redis)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _watch(children: Sequence[Child]) -> None:
    """Until Ctrl-C/SIGTERM (KeyboardInterrupt) or a tier with no process
    left: report each process that exits."""
    while True:
        for child in children:
            if not child.reported and child.process.poll() is not None:
                child.reported = True
                left = [c for c in children if c.spec.tier == child.spec.tier and c.process.poll() is None]
                print(f"switchboard run: {child.spec.server_id} (pid {child.process.pid}) exited with "
                      f"{child.process.returncode}; {len(left)} {child.spec.tier}(s) left", flush=True)
                if not left:
                    print(f"switchboard run: no {child.spec.tier} left; stopping everything", flush=True)
                    return
        time.sleep(0.2)


def _stop(children: Sequence[Child], balancer, redis) -> None:  # noqa: ANN001 - Nginx, EmbeddedRedis
    """nginx first (no new connections), then every service at once
    (SIGTERM: each stops gracefully), then Redis once they are gone."""
    if balancer is not None:
        balancer.stop()
    for child in children:
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for child in children:
        try:
            child.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"switchboard run: {child.spec.server_id} did not stop within {STOP_GRACE:g} s; killed",
                  file=sys.stderr, flush=True)
            child.process.kill()
            child.process.wait()
    if redis is not None:
        redis.stop()


def _wait_for_port(host: str, port: int, children: Sequence[Child], timeout: float = 60.0) -> None:
    from switchboard.embedded_redis import port_in_use

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_in_use(port, "127.0.0.1" if host in ("0.0.0.0", "") else host):
            return
        for child in children:
            if child.process.poll() is not None:
                raise SystemExit(f"{child.spec.server_id} exited during start-up; see its log above")
        time.sleep(0.1)
    raise SystemExit(f"the gateway did not listen on {host}:{port} within {timeout:g} s")


def _banner(env: Mapping[str, str], layout: Layout, url: str, specs: Sequence[Spec], children: Sequence[Child],
            redis, balancer) -> str:  # noqa: ANN001 - EmbeddedRedis, Nginx
    from switchboard.cli import _users_line
    from switchboard.gateway import auth

    token = auth.mint("dev-user", env.get("JWT_SECRET") or DEV_JWT_SECRET,
                      audience=env.get("JWT_AUDIENCE") or None, issuer=env.get("JWT_ISSUER") or None)
    if redis is not None:
        where = f"{redis.address} (embedded, data in {redis.data_dir})\n  {_users_line(redis)}"
    else:
        where = redacted(env["REDIS_URL"])
    front = f"   (nginx in front of {layout.gateways} gateways)" if balancer is not None else ""
    return ("\nSwitchboard is running.\n"
            f"  Redis:      {where}\n"
            f"  WebSocket:  {url}{front}\n"
            f"{_processes(env, children, balancer)}"
            f"{_health(env, specs)}"
            f"  Dev token for user 'dev-user' (24 h):\n    {token}\n"
            f"  Web chat:   {web_link(url, token)}\n"
            "  First frame: {\"type\":\"hello\",\"token\":TOKEN,\"device_id\":\"laptop\"}\n"
            "  Who is where: switchboard nodes (as REDIS_USERNAME=sb-admin)\n"
            "  Protocol:   docs/protocol.md    Ctrl-C stops everything.\n")


def web_link(url: str, token: str) -> str:
    """The web chat client's address (docs/web-client.md) for the WebSocket
    ``url``, signed in with ``token``. The token is in the fragment, which a
    browser never sends: it reaches no server's or proxy's log."""
    scheme, _, rest = url.partition("://")
    authority = rest.split("/", 1)[0]
    if authority.startswith("0.0.0.0:"):  # listening everywhere: this machine's browser uses loopback
        authority = "127.0.0.1:" + authority.split(":", 1)[1]
    return f"{'https' if scheme == 'wss' else 'http'}://{authority}/#token={token}"


def processes_table(rows: Sequence[tuple[str, int, str, str]]) -> str:
    """The banner's table of processes: SERVER_ID, pid, what it listens on, its metrics port."""
    lines = [("SERVER_ID", "PID", "LISTENS", "METRICS"), *((sid, str(pid), listens, metrics)
                                                          for sid, pid, listens, metrics in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    return "".join("    " + "  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() + "\n" for line in lines)


def _processes(env: Mapping[str, str], children: Sequence[Child], balancer) -> str:  # noqa: ANN001
    host = env.get("WEBSOCKET_HOST") or "127.0.0.1"
    rows = [(c.spec.server_id, c.process.pid, f"ws://{host}:{c.spec.port}/ws" if c.spec.port else "-",
             str(c.spec.metrics_port or "-"))
            for c in sorted(children, key=lambda c: PORT_ORDER.index(c.spec.tier))]
    if balancer is not None and balancer.process is not None:
        rows.append(("nginx", balancer.process.pid, balancer.url, "-"))
    return "  Processes:\n" + processes_table(rows)


def _health(env: Mapping[str, str], specs: Sequence[Spec]) -> str:
    if not any(s.metrics_port for s in specs):
        return "  Health:     off (METRICS_PORT=0)\n"
    host = env.get("METRICS_HOST") or "127.0.0.1"
    width = max(len(s.label) for s in specs) + 1
    urls = "\n".join(f"    {s.label + ':':{width}} http://{host}:{s.metrics_port}/readyz"
                     for s in sorted(specs, key=lambda s: PORT_ORDER.index(s.tier)))
    return f"  Health (/healthz, /readyz):\n{urls}\n"
