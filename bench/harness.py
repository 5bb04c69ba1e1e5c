"""Real service processes, for tests, the chaos run and benchmarks.

Each service runs as its own ``python -m switchboard.cli <service>`` process,
so a test can ``kill -9`` it like an operator's bad day would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from switchboard.embedded_redis import free_port, port_in_use
from switchboard.gateway import auth

JWT_SECRET = "test-secret-0123456789abcdef0123456789"

#: Short timings so failure recovery shows up within seconds in tests.
FAST_ENV = {
    "JWT_SECRET": JWT_SECRET,
    "LOG_LEVEL": "INFO",
    "CLAIM_IDLE": "2",
    "LEASE_TTL": "2",
    "FANOUT_SWEEP": "0.5",
    "FANOUT_ALIVE_TTL": "1.5",
    "HELLO_TIMEOUT": "3",
    # One test, chaos client or benchmark user sends far more than a person:
    # the send quotas stay on (their checks run) with bounds that load never
    # reaches. tests/integration/test_quotas.py tests them at their bounds.
    "SENDS_PER_MINUTE": "10000000",
    "SEND_BYTES_PER_MINUTE": "100000000000",
    "MAX_UNANSWERED": "10000000",
    # Tests, the chaos run and benchmarks open thousands of connections from
    # 127.0.0.1, many devices per user, and send as fast as they can: the
    # admission caps are far above that here; tests of the caps set their own.
    "MAX_CONNECTIONS_PER_IP": "100000",
    "MAX_UNAUTHENTICATED_PER_IP": "100000",
    "MAX_DEVICES_PER_USER": "100000",
    "MAX_FRAMES_PER_SECOND": "100000",
    "FRAME_BURST": "100000",
    "PYTHONUNBUFFERED": "1",
    # The repository root, from which workers import the graphs GRAPH names
    # (bench.graphs, tests.support.graphs): neither ships in the package.
    "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
}

READY_MARKERS = {
    "gateway": "listening on ws",  # ws:// or wss://
    "worker": "ready: graph=",
    "fanout": " live (incarnation",
}


def process_memory(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak RSS) of a process, in bytes (Linux /proc)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(value.split()[0]) * 1024
    return out


def process_cpu_seconds(pid: int) -> float:
    """CPU time of every thread of a process, to the nanosecond (the first
    field of each ``/proc/PID/task/TID/schedstat``; ``/proc/PID/stat`` counts
    in clock ticks, 10 ms, too coarse for a few ms a turn)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):  # a thread that just ended
            pass
    return total / 1e9


def token(user: str, ttl: float = 3600) -> str:
    return auth.mint(user, JWT_SECRET, ttl=ttl)


@dataclass
class Service:
    name: str
    kind: str
    process: subprocess.Popen
    log: Path
    port: int | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Cluster:
    redis_url: str
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)

    def start(self, kind: str, name: str | None = None, timeout: float = 30.0, wait: bool = True,
              **env: str) -> Service:
        name = name or f"{kind}-{len(self.services)}"
        full_env = {**os.environ, **FAST_ENV, **self.env, **env, "REDIS_URL": self.redis_url, "SERVER_ID": name}
        port = None
        if kind == "gateway":
            port = free_port()
            full_env["WEBSOCKET_PORT"] = str(port)
        log = self.workdir / f"{name}.log"
        handle = open(log, "ab")
        process = subprocess.Popen([sys.executable, "-m", "switchboard.cli", kind], env=full_env,
                                   stdout=handle, stderr=subprocess.STDOUT)
        handle.close()
        service = Service(name, kind, process, log, port)
        self.services[name] = service
        if wait:
            self.wait_ready(service, timeout)
        return service

    def start_many(self, *specs: tuple[str, str], timeout: float = 30.0, **env: str) -> None:
        """Start ``(kind, name)`` services in parallel, then wait for all."""
        started = [self.start(kind, name, wait=False, **env) for kind, name in specs]
        for service in started:
            self.wait_ready(service, timeout)

    def wait_ready(self, service: Service, timeout: float = 30.0) -> None:
        """Until ``service`` has logged that it is ready (and a gateway listens), or raise."""
        deadline = time.monotonic() + timeout
        marker = READY_MARKERS[service.kind]
        while time.monotonic() < deadline:
            if service.process.poll() is not None:
                raise RuntimeError(f"{service.name} exited with {service.process.returncode}:\n{service.log_text()}")
            if marker in service.log_text():
                if service.port is None or port_in_use(service.port):
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{service.name} not ready within {timeout} s:\n{service.log_text()}")

    def kill(self, name: str, sig: int = signal.SIGKILL, timeout: float = 30.0) -> bool:
        """Signal a service and wait for it to exit; False if it had to be
        SIGKILLed because it ignored the signal for ``timeout`` seconds."""
        service = self.services[name]
        service.process.send_signal(sig)
        try:
            service.process.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            service.process.send_signal(signal.SIGUSR1)  # log a task dump first
            time.sleep(0.5)
            service.process.kill()
            service.process.wait()
            return False

    def stop(self) -> None:
        for service in self.services.values():
            if service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
        for service in self.services.values():
            try:
                service.process.wait(15)
            except subprocess.TimeoutExpired:
                # A service that ignores SIGTERM is a bug: say so in the logs.
                service.process.send_signal(signal.SIGUSR1)  # log a task dump
                time.sleep(0.5)
                with open(service.log, "a") as log:
                    log.write(f"\n!!! {service.name} did not stop within 15 s of SIGTERM; killed\n")
                    spy = Path(sys.executable).with_name("py-spy")
                    if spy.exists():
                        log.write(subprocess.run([str(spy), "dump", "--pid", str(service.process.pid)],
                                                 capture_output=True, text=True).stdout)
                service.process.kill()
                service.process.wait()

    def logs(self) -> str:
        return "\n".join(f"==== {s.name} ====\n{s.log_text()[-4000:]}" for s in self.services.values())
