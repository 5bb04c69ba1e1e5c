"""The Origin rule of the handshake: the gateway's own page may connect."""

from __future__ import annotations

import pytest

from switchboard.gateway.admission import origin_allowed, same_origin


@pytest.mark.parametrize("origin, host", [
    ("http://127.0.0.1:8765", "127.0.0.1:8765"),
    ("http://chat.example.com", "chat.example.com"),
    ("http://chat.example.com:80", "chat.example.com"),
    ("https://chat.example.com", "chat.example.com"),  # TLS ended by a proxy in front
    ("https://chat.example.com", "chat.example.com:443"),
    ("HTTP://Chat.Example.COM:8080", "chat.example.com:8080"),
    ("http://[::1]:8765", "[::1]:8765"),
])
def test_the_pages_own_origin_is_allowed(origin, host):
    assert same_origin(origin, host)
    assert origin_allowed(origin, (), host=host)


@pytest.mark.parametrize("origin, host", [
    ("http://evil.example", "chat.example.com"),
    ("http://127.0.0.1:9999", "127.0.0.1:8765"),  # another port is another origin
    ("http://127.0.0.1", "127.0.0.1:8765"),
    ("https://chat.example.com", "chat.example.com:8443"),
    ("http://chat.example.com.evil.example", "chat.example.com"),
    ("null", "chat.example.com"),  # sandboxed frames, file:// pages
    ("file://", "chat.example.com"),
    ("chrome-extension://abc", "abc"),
    ("http://user@chat.example.com", "chat.example.com"),
    ("http://chat.example.com/path", "chat.example.com"),
    ("http://chat.example.com", None),
    ("http://chat.example.com", ""),
    ("http://chat.example.com:0", "chat.example.com:0"),
    ("http://[::1", "[::1"),
])
def test_another_origin_is_refused(origin, host):
    assert not same_origin(origin, host)
    assert not origin_allowed(origin, (), host=host)


def test_allowed_origins_and_clients_without_origin_still_pass():
    assert origin_allowed(None, (), host="chat.example.com")
    assert origin_allowed("https://app.example", ("https://app.example",), host="chat.example.com")
    assert origin_allowed("https://anything.example", ("*",), host=None)
    assert not origin_allowed("https://app.example", ("https://other.example",), host="chat.example.com")
