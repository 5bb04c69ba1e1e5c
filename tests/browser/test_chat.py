"""The web client in a real headless chromium: chatting, streaming, two tabs."""

from __future__ import annotations

import contextlib
import http.server
import threading

from switchboard.localrun import web_link
from switchboard.shared import keys
from tests.support.client import new_user
from tests.support.cluster import token

from .pages import (finals, messages, open_conversation, open_page, send, shown_messages, stream_messages,
                    wait_connected, wait_messages)


async def test_a_message_sent_from_the_page_gets_its_reply_streamed(context, gateway_url, redis_client):
    user = new_user()
    # Opened as `switchboard run` prints it: the token in the fragment, which leaves the address bar.
    page = await open_page(context, gateway_url, link=web_link(gateway_url.replace("http:", "ws:") + "/ws", token(user)))
    assert "token" not in page.url
    words = " ".join(f"w{i}" for i in range(25))
    await send(page, f"streamed {words}")
    # The reply shows while it is written (deltas), then once, final.
    streaming = await wait_messages(page, lambda m: any(x["state"] == "streaming" for x in m))
    assert [x["role"] for x in streaming] == ["user", "assistant"]
    shown = await wait_messages(page, lambda m: finals(m))
    stream = await redis_client.xrange(keys.outbound(user))
    final = [f for _, f in stream if f["kind"] == "assistant"]
    assert len(final) == 1
    assert [x["role"] for x in shown] == ["user", "assistant"]
    assert shown[1]["text"].strip() == final[0]["text"] == f"reply 1 to: streamed {words}"
    assert shown[0]["text"] == f"streamed {words}"


async def test_two_tabs_are_two_devices_and_stay_in_sync(context, gateway_url, redis_client):
    user = new_user()
    first = await open_page(context, gateway_url, token(user))
    device = await first.evaluate("() => sessionStorage.getItem('switchboard.device')")
    # The second tab starts as a duplicated tab does: with a copy of the first one's sessionStorage.
    second = await context.new_page()
    await second.add_init_script(
        f"if (!sessionStorage.getItem('switchboard.device')) sessionStorage.setItem('switchboard.device', '{device}')")
    await second.goto(f"{gateway_url}/")  # signed in by the first tab's stored token
    await wait_connected(second)
    devices = [await p.evaluate("() => sessionStorage.getItem('switchboard.device')") for p in (first, second)]
    assert devices[0] == device and devices[1] != device, "a device id per tab"

    await send(first, "from the first tab")
    conversation = await open_conversation(first)
    await wait_messages(first, lambda m: len(finals(m)) == 1)
    # The second tab lists the conversation and opens it.
    await second.click(f'#conversations button[data-conversation="{conversation}"]')
    await wait_messages(second, lambda m: len(finals(m)) == 1)
    await send(second, "from the second tab")
    for page in (first, second):
        await wait_messages(page, lambda m: len(finals(m)) == 2)
    stream = await redis_client.xrange(keys.outbound(user))
    expected = stream_messages(stream, conversation)
    assert len(expected) == 4
    for page in (first, second):
        shown = await messages(page)
        assert shown_messages(shown) == expected
        assert [m["text"].strip() for m in shown] == [
            "from the first tab", "reply 1 to: from the first tab", "from the second tab", "reply 2 to: from the second tab"]
    owners = await redis_client.hgetall(keys.device_owners(user))
    assert set(owners) == set(devices), "both tabs are connected, each as its own device"


async def test_the_page_loads_only_from_the_gateway_with_a_strict_policy(context, gateway_url):
    requests: list[str] = []
    context.on("request", lambda request: requests.append(request.url))
    page = await context.new_page()
    response = await page.goto(f"{gateway_url}/")
    assert response.status == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "script-src 'self'" in response.headers["content-security-policy"]
    await page.wait_for_selector("#sign-in:not([hidden])")
    await page.fill("#token", token(new_user()))
    await page.press("#token", "Enter")  # signing in by the form works too
    await wait_connected(page)
    ws_origin = gateway_url.replace("http://", "ws://")
    assert requests and all(url.startswith((gateway_url + "/", ws_origin + "/")) for url in requests), requests
    missing = await page.request.get(f"{gateway_url}/static/nothing.js")
    assert missing.status == 404


async def test_a_page_of_another_origin_is_refused(context, gateway_url):
    """The same-origin rule lets the gateway's own page in, nothing else (ALLOWED_ORIGINS is empty)."""
    port = gateway_url.rsplit(":", 1)[1]
    opened = """url => new Promise(resolve => { const ws = new WebSocket(url);
        ws.onopen = () => { ws.close(); resolve(true); }; ws.onerror = () => resolve(false); })"""
    own = await context.new_page()
    await own.goto(f"{gateway_url}/")
    assert await own.evaluate(opened, f"ws://127.0.0.1:{port}/ws") is True
    # localhost is another origin than 127.0.0.1 for the browser, though the same socket: its own page passes.
    other_host = await context.new_page()
    await other_host.goto(f"http://localhost:{port}/")
    assert await other_host.evaluate(opened, f"ws://localhost:{port}/ws") is True
    # A page of another origin (another port; no policy of ours applies to it) is refused by the gateway: 403.
    foreign = await context.new_page()
    with _page_server() as elsewhere:
        await foreign.goto(elsewhere)
        refused: list[str] = []
        foreign.on("console", lambda message: refused.append(message.text))
        assert await foreign.evaluate(opened, f"ws://127.0.0.1:{port}/ws") is False
    assert any("403" in text for text in refused), refused


@contextlib.contextmanager
def _page_server():
    """An empty page on another loopback port: another origin, as a foreign site's page would be."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the handler's API
            body = b"<!doctype html><title>elsewhere</title>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
