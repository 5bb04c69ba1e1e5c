"""The web client's files as the gateway serves them (services/gateway/web.py)."""

from __future__ import annotations

import pytest
from websockets.datastructures import Headers
from websockets.http11 import Request

from switchboard.gateway import web


def _get(path: str, **headers: str):
    request = Request(path, Headers({"Host": "chat.example.com:8765", **headers}))
    assert web.is_page(path)
    return web.respond(request, path)


def test_the_page_and_its_files_are_served_with_their_types():
    page = _get("/")
    assert page.status_code == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert b'<script type="module" src="/static/app.js">' in page.body
    for name, content_type in (("app.js", "text/javascript"), ("connection.js", "text/javascript"),
                               ("markdown.js", "text/javascript"), ("style.css", "text/css")):
        answer = _get(f"/static/{name}")
        assert answer.status_code == 200 and answer.headers["Content-Type"].startswith(content_type)
        assert int(answer.headers["Content-Length"]) == len(answer.body) > 0


def test_every_answer_carries_a_strict_policy_and_nosniff():
    answer = _get("/")
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    csp = dict(part.strip().split(" ", 1) for part in answer.headers["Content-Security-Policy"].split(";"))
    assert csp["default-src"] == "'self'"
    assert csp["script-src"] == "'self'"  # no 'unsafe-inline', no other origin
    assert csp["connect-src"] == "'self' ws://chat.example.com:8765 wss://chat.example.com:8765"
    assert csp["frame-ancestors"] == "'none'"
    assert "unsafe" not in answer.headers["Content-Security-Policy"]


def test_a_host_header_that_is_not_a_host_stays_out_of_the_policy():
    request = Request("/", Headers({"Host": "evil.example; script-src *"}))
    policy = web.respond(request, "/").headers["Content-Security-Policy"]
    assert "connect-src 'self';" in policy and "evil" not in policy


def test_an_unchanged_file_is_answered_not_modified():
    first = _get("/static/app.js")
    assert first.headers["Cache-Control"] == "no-cache"
    again = _get("/static/app.js", **{"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304 and again.body == b""


@pytest.mark.parametrize("path", ["/static/", "/static/../web.py", "/web.py", "/static/nope.js", "/index.html",
                                  "/static/%2e%2e/web.py", "/static"])
def test_nothing_else_is_a_page(path):
    assert not web.is_page(path)
