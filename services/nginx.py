"""nginx as the WebSocket load balancer of a local multi-gateway run.

``switchboard run --gateways N`` (and the tests) put the Debian package's
nginx in front of N gateways, configured as a production load balancer for
Switchboard would be:

- HTTP/1.1 to the upstreams with the ``Upgrade``/``Connection`` headers
  passed on (RFC 6455 section 4: the handshake is an HTTP/1.1 upgrade; nginx
  forwards it only when told to);
- read and send timeouts far above the heartbeat (``PING_INTERVAL``), so nginx
  never cuts a quiet but healthy connection: the gateway's own pings are what
  notice a dead one;
- no stickiness: any gateway serves any device (a reconnect resumes from
  ``last_id``), so round robin is enough, and a gateway that stops is taken
  out on its first refused connection (``max_fails=1``), the handshake
  retried on the next (``proxy_next_upstream``);
- ``X-Forwarded-For`` set from the client's address, which the gateways use
  for their per-address caps when nginx is a ``TRUSTED_PROXIES`` address;
- no buffering: frames go through as they come;
- one location for everything: the WebSocket (``/ws``) and the web client's
  page and files (``/``, ``/static/``), with the browser's ``Host`` passed on
  as it was (port included), which the gateway's same-origin rule compares
  with the page's ``Origin``.

The process runs in the foreground (``daemon off``) with every path (pid,
logs, temp files) in its own directory, so it needs no root and leaves
nothing outside it.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from switchboard.shared.errors import SwitchboardError

#: Seconds nginx lets a proxied connection be silent (both directions).
#: Far above the heartbeat: gateways ping every PING_INTERVAL (20 s).
PROXY_TIMEOUT = 3600

INSTALL_HINT = "install nginx (Debian/Ubuntu: `apt-get install nginx`)"


class NginxError(SwitchboardError, RuntimeError):
    pass


def binary() -> str | None:
    """The nginx executable, or None when it is not installed."""
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None)


def config(listen: str, port: int, upstreams: Sequence[tuple[str, int]], prefix: Path) -> str:
    """The configuration: ``listen:port`` in front of the gateways ``upstreams``."""
    servers = "\n".join(f"        server {host}:{p} max_fails=1 fail_timeout=5s;" for host, p in upstreams)
    temp = prefix / "temp"
    return f"""# Written by switchboard (switchboard/nginx.py): a WebSocket load balancer for the gateways.
worker_processes 1;
pid {prefix / 'nginx.pid'};
error_log {prefix / 'error.log'} warn;
events {{ worker_connections 4096; }}
http {{
    access_log {prefix / 'access.log'};
    client_body_temp_path {temp / 'body'};
    proxy_temp_path {temp / 'proxy'};
    fastcgi_temp_path {temp / 'fastcgi'};
    uwsgi_temp_path {temp / 'uwsgi'};
    scgi_temp_path {temp / 'scgi'};
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    upstream switchboard_gateways {{
{servers}
    }}
    server {{
        listen {listen}:{port};
        location / {{
            proxy_pass http://switchboard_gateways;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            # The Host the browser used, port included: the gateway compares it with
            # the Origin of its own page's WebSocket (admission.same_origin).
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_read_timeout {PROXY_TIMEOUT}s;
            proxy_send_timeout {PROXY_TIMEOUT}s;
            proxy_connect_timeout 2s;
            proxy_next_upstream error timeout;
            proxy_buffering off;
            # Which gateway took the handshake (local runs: tests, debugging).
            add_header X-Switchboard-Gateway $upstream_addr always;
        }}
    }}
}}
"""


class Nginx:
    """One nginx process in front of the given gateways."""

    def __init__(self, prefix: Path, port: int, upstreams: Sequence[tuple[str, int]], *, listen: str = "127.0.0.1"):
        self.prefix = Path(prefix)
        self.port = port
        self.listen = listen
        self.upstreams = list(upstreams)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.listen}:{self.port}/ws"

    def start(self, timeout: float = 10.0) -> None:
        exe = binary()
        if exe is None:
            raise NginxError(f"nginx is not installed: {INSTALL_HINT}")
        for sub in ("temp/body", "temp/proxy", "temp/fastcgi", "temp/uwsgi", "temp/scgi"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        conf = self.prefix / "nginx.conf"
        conf.write_text(config(self.listen, self.port, self.upstreams, self.prefix))
        check = subprocess.run([exe, "-t", "-q", "-p", str(self.prefix), "-c", str(conf)],
                               capture_output=True, text=True)
        if check.returncode != 0:
            raise NginxError(f"nginx refused its configuration: {check.stderr.strip()}")
        log = open(self.prefix / "stderr.log", "ab")
        self.process = subprocess.Popen([exe, "-p", str(self.prefix), "-c", str(conf), "-g", "daemon off;"],
                                        stdout=log, stderr=subprocess.STDOUT)
        log.close()
        from switchboard.embedded_redis import port_in_use

        deadline = time.monotonic() + timeout
        while not port_in_use(self.port, self.listen):
            if self.process.poll() is not None:
                raise NginxError(f"nginx exited with {self.process.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise NginxError(f"nginx did not listen on {self.port} within {timeout} s: {self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, size: int = 2000) -> str:
        text = ""
        for name in ("stderr.log", "error.log"):
            path = self.prefix / name
            if path.exists():
                text += path.read_text(errors="replace")[-size:]
        return text

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # SIGTERM: nginx's fast shutdown
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
