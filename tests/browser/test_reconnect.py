"""The web client through network cuts, a stopped gateway and a reload:
every message shown once, in order, as the user's outbound stream holds them."""

from __future__ import annotations

import signal

import pytest

from switchboard import nginx
from switchboard.embedded_redis import free_port
from switchboard.shared import keys
from switchboard.shared.nodes import parse_owner
from tests.support.client import Device, new_user
from tests.support.cluster import token
from tests.support.wait import until

from .pages import (device_connection, finals, messages, open_conversation, open_page, send, shown_messages, stream_messages,
                    wait_connected, wait_messages)


def _ws(url: str) -> str:
    return url.replace("http://", "ws://") + "/ws"


async def test_a_network_cut_while_replies_are_written_loses_and_repeats_nothing(context, gateway_url,
                                                                                redis_client):
    user = new_user()
    page = await open_page(context, gateway_url, token(user))
    await send(page, "before the cut")
    await wait_messages(page, lambda m: len(finals(m)) == 1)
    conversation = await open_conversation(page)
    before = await device_connection(redis_client, user, page)

    await context.set_offline(True)
    await page.wait_for_selector('#status:not([data-state="open"])')
    phone = Device(_ws(gateway_url), token(user), "phone")
    await phone.connect()
    for n in range(4):
        await phone.send(conversation, f"p{n}", f"streamed while the page is offline {n} " + "word " * 10)
    for n in range(4):
        await phone.wait_reply(f"p{n}")
    await context.set_offline(False)

    shown = await wait_messages(page, lambda m: len(finals(m)) == 5)
    stream = await redis_client.xrange(keys.outbound(user))
    assert shown_messages(shown) == stream_messages(stream, conversation)  # each once, in order
    assert all(m["state"] == "done" for m in finals(shown))
    await wait_connected(page)
    assert await device_connection(redis_client, user, page) not in (None, before), "the page reconnected"
    # It acked what it showed (cumulatively, in batches): its stored offset reaches the newest event.
    device = await page.evaluate("() => sessionStorage.getItem('switchboard.device')")
    newest = stream[-1][0]

    async def acked() -> bool:
        return await _offset(redis_client, user, device) == newest

    await until(acked, 10.0, f"the page's stored offset to reach {newest}")
    await phone.close()


async def _offset(redis_client, user: str, device: str) -> str | None:
    stored = await redis_client.hget(keys.offsets(user), device)
    return stored.rsplit("|", 1)[1] if stored else None


async def test_a_reload_mid_reply_shows_the_reply_once(context, gateway_url, redis_client):
    user = new_user()
    page = await open_page(context, gateway_url, token(user))
    await send(page, "streamed " + " ".join(f"w{i}" for i in range(60)))
    await wait_messages(page, lambda m: any(x["state"] == "streaming" for x in m))
    device = await page.evaluate("() => sessionStorage.getItem('switchboard.device')")
    await page.reload()
    await wait_connected(page)
    assert await page.evaluate("() => sessionStorage.getItem('switchboard.device')") == device, \
        "a reload keeps the tab's device"
    shown = await wait_messages(page, lambda m: len(finals(m)) == 1)
    stream = await redis_client.xrange(keys.outbound(user))
    conversation = await open_conversation(page)
    assert shown_messages(shown) == stream_messages(stream, conversation)
    reply = [f for _, f in stream if f["kind"] == "assistant"][0]
    assert shown[1]["text"].strip() == reply["text"]
    assert len(await messages(page)) == 2


@pytest.mark.skipif(nginx.binary() is None, reason=f"nginx is not installed: {nginx.INSTALL_HINT}")
async def test_a_gateway_stopped_under_the_page_moves_it_to_another_through_nginx(context, services, gateway_url,
                                                                                 redis_client, tmp_path):
    services.start_many(("gateway", "gw-a"), ("gateway", "gw-b"), TRUSTED_PROXIES="127.0.0.1/32")
    ports = [services.services[name].port for name in ("gw-a", "gw-b")]
    balancer = nginx.Nginx(tmp_path / "nginx", free_port(), [("127.0.0.1", port) for port in ports])
    balancer.start()
    try:
        user = new_user()
        page = await open_page(context, f"http://127.0.0.1:{balancer.port}", token(user))
        await send(page, "through nginx")
        await wait_messages(page, lambda m: len(finals(m)) == 1)
        conversation = await open_conversation(page)
        device = await page.evaluate("() => sessionStorage.getItem('switchboard.device')")
        leaving = parse_owner(await redis_client.hget(keys.device_owners(user), device))[1]
        assert leaving in ("gw-a", "gw-b")

        phone = Device(_ws(gateway_url), token(user), "phone")  # on the module's own gateway
        await phone.connect()
        await phone.send(conversation, "p0", "streamed while its gateway stops " + "word " * 30)
        await phone.wait_for(lambda: any(e["kind"] == "delta" for e in phone.events))
        assert services.kill(leaving, signal.SIGTERM)  # 1001: the page reconnects through nginx
        await phone.send(conversation, "p1", "streamed after it stopped")
        await phone.wait_reply("p0")
        await phone.wait_reply("p1")

        shown = await wait_messages(page, lambda m: len(finals(m)) == 3)
        await wait_connected(page)
        owner = parse_owner(await redis_client.hget(keys.device_owners(user), device))[1]
        assert owner not in (None, leaving), "the page is on the gateway that is left"
        stream = await redis_client.xrange(keys.outbound(user))
        assert shown_messages(shown) == stream_messages(stream, conversation)
        assert [m["text"].strip() for m in finals(shown)] == [
            f["text"] for _, f in stream if f["kind"] == "assistant"]
        await phone.close()
    finally:
        balancer.stop()
        for name in ("gw-a", "gw-b"):
            if services.services[name].process.poll() is None:
                services.kill(name, signal.SIGTERM)


async def test_a_position_the_server_cannot_resume_reloads_the_conversation_and_says_so(context, gateway_url,
                                                                                       redis_client):
    user = new_user()
    page = await open_page(context, gateway_url, token(user))
    await send(page, "one")
    await wait_messages(page, lambda m: len(finals(m)) == 1)
    await send(page, "two")
    await wait_messages(page, lambda m: len(finals(m)) == 2)
    # Another life of the stream, as after a lost Redis: the stored epoch no longer matches.
    await page.evaluate("""() => { const key = 'switchboard.position.' + sessionStorage.getItem('switchboard.device');
        const position = JSON.parse(localStorage.getItem(key)); position.epoch = 'another-life';
        localStorage.setItem(key, JSON.stringify(position)); }""")
    await page.reload()
    await wait_connected(page)
    await page.wait_for_selector("#notice:not([hidden])")
    assert "reloaded" in await page.inner_text("#notice")
    shown = await wait_messages(page, lambda m: len(finals(m)) == 2)
    stream = await redis_client.xrange(keys.outbound(user))
    assert shown_messages(shown) == stream_messages(stream, await open_conversation(page))
    await send(page, "three")  # and it goes on, from the position of this connection
    await wait_messages(page, lambda m: len(finals(m)) == 3)
