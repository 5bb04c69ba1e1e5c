"""The web chat client the gateway serves at ``/`` (docs/web-client.md).

Every file comes from ``static/`` beside this module (shipped as package
data), read once and kept in memory: a handful of small files. Only the
files found there are served, by name -- no path from the request ever
reaches the file system. Each answer carries:

- the right ``Content-Type`` and ``X-Content-Type-Options: nosniff``, so a
  browser never guesses a type (a script is run only as a script);
- a strict ``Content-Security-Policy``: scripts, styles and images from this
  origin only, no inline script, connections to this origin's WebSocket,
  no framing -- the page's own defence if server text ever reached the DOM
  as markup;
- ``Cache-Control: no-cache`` with an ``ETag``: a browser keeps the files and
  asks each time whether they changed (``304 Not Modified``), so a new
  gateway version takes effect at the next load, never half of it.
"""

from __future__ import annotations

import email.utils
import functools
import hashlib
import http
import re
from dataclasses import dataclass
from pathlib import Path

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

STATIC = Path(__file__).resolve().parent / "static"

#: The types of the files the client is made of; any other file is not served.
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
    ".png": "image/png",
}

#: A Host header this module will write back into the policy (host, optional port).
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


@functools.cache
def assets() -> dict[str, Asset]:
    """URL path -> file, read on first use: ``/`` is ``index.html``, every
    other file is ``/static/<name>``."""
    found: dict[str, Asset] = {}
    if not STATIC.is_dir():
        return found
    for path in sorted(STATIC.iterdir()):
        content_type = TYPES.get(path.suffix)
        if content_type is None or not path.is_file():
            continue
        body = path.read_bytes()
        asset = Asset(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:20] + '"')
        found[f"/static/{path.name}"] = asset
        if path.name == "index.html":
            found["/"] = asset
    return found


def policy(host: str | None) -> str:
    """The Content-Security-Policy. ``connect-src`` names the WebSocket of
    the origin the page came from (``'self'`` covers ``ws:``/``wss:`` of the
    same host in CSP 3 browsers; the explicit origins are for older ones)."""
    connect = "'self'"
    if host and _HOST.match(host):
        connect += f" ws://{host} wss://{host}"
    return ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
            f"connect-src {connect}; object-src 'none'; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'")


def is_page(path: str) -> bool:
    """Whether ``path`` (without its query) is one of the client's files."""
    return path in assets()


def respond(request: Request, path: str) -> Response:
    """The answer to a GET of one of the client's files (``is_page(path)``)."""
    asset = assets()[path]
    status = http.HTTPStatus.OK
    body = asset.body
    if asset.etag in [tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")]:
        status, body = http.HTTPStatus.NOT_MODIFIED, b""
    headers = Headers([
        ("Date", email.utils.formatdate(usegmt=True)),
        ("Connection", "close"),
        ("Content-Length", str(len(body))),
        ("Content-Type", asset.content_type),
        ("Cache-Control", "no-cache"),
        ("ETag", asset.etag),
        ("X-Content-Type-Options", "nosniff"),
        ("Content-Security-Policy", policy(request.headers.get("Host"))),
        ("Referrer-Policy", "no-referrer"),
        ("X-Frame-Options", "DENY"),
        ("Cross-Origin-Opener-Policy", "same-origin"),
    ])
    return Response(status.value, status.phrase, headers, body)
