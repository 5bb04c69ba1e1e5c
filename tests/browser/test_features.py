"""The web client's controls in a real headless chromium: a question answered
from the page, stop, regenerate, and model output that must stay text."""

from __future__ import annotations


from switchboard.shared import keys
from tests.support.client import new_user
from tests.support.cluster import token
from tests.support.wait import until

from .conftest import MAX_TEXT_LENGTH
from .pages import finals, open_conversation, open_page, send, shown_messages, stream_messages, wait_messages


async def test_a_question_of_the_graph_is_answered_from_the_page(context, gateway_url, redis_client):
    user = new_user()
    page = await open_page(context, gateway_url, token(user))
    await send(page, "please ask me")
    await page.wait_for_selector("form.question")
    assert "go on?" in await page.inner_text("form.question .question-text")
    await page.fill("textarea.answer", "yes please")
    await page.press("textarea.answer", "Enter")
    shown = await wait_messages(page, lambda m: len(finals(m)) == 1)
    assert shown[1]["text"].strip() == 'reply 1 to: please ask me answered "yes please"'
    assert await page.locator("form.question").count() == 0
    stream = await redis_client.xrange(keys.outbound(user))
    assert [f["kind"] for _, f in stream if f["kind"] in ("interrupt", "resumed", "assistant")] == [
        "interrupt", "resumed", "assistant"]


async def test_a_running_turn_is_stopped_from_the_page(context, gateway_url, redis_client):
    user = new_user()
    page = await open_page(context, gateway_url, token(user))
    await send(page, "sleep:10 take your time")
    await page.click("#stop")
    shown = await wait_messages(page, lambda m: len(finals(m)) == 1, timeout=8)
    assert finals(shown)[0]["state"] == "cancelled"
    assert await page.locator("#stop").is_hidden()
    stream = await redis_client.xrange(keys.outbound(user))
    assert [f["kind"] for _, f in stream if f["kind"] in ("assistant", "cancelled")] == ["cancelled"]


async def test_the_last_reply_is_regenerated_from_the_page(context, gateway_url, redis_client):
    user = new_user()
    page = await open_page(context, gateway_url, token(user))
    await send(page, "streamed say it again")
    first = await wait_messages(page, lambda m: len(finals(m)) == 1)
    await page.click("#regenerate")

    async def two_replies() -> list | None:
        stream = await redis_client.xrange(keys.outbound(user))
        return stream if sum(f["kind"] == "assistant" for _, f in stream) == 2 else None

    stream = await until(two_replies, 20.0, "the regenerated reply in the outbound stream")
    newest = [entry_id for entry_id, f in stream if f["kind"] == "assistant"][-1]
    assert "replaced" in [f["kind"] for _, f in stream]
    shown = await wait_messages(page, lambda m: [x["event_id"] for x in finals(m)] == [newest])
    conversation = await open_conversation(page)
    assert shown_messages(shown) == stream_messages(stream, conversation)  # one message, one reply
    assert shown[1]["text"] == first[1]["text"]  # the same graph state: the same reply


async def test_markup_in_model_output_shows_as_text(context, gateway_url):
    user = new_user()
    page = await open_page(context, gateway_url, token(user))
    hostile = ("streamed <img src=x onerror=window.pwned=1> <script>window.pwned=2</script> **bold** "
               "[bad](javascript:window.pwned=3) [good](https://example.com/a)")
    await send(page, hostile)
    shown = await wait_messages(page, lambda m: len(finals(m)) == 1)
    reply = page.locator('#messages li[data-role="assistant"]')
    assert "<img src=x onerror=window.pwned=1>" in shown[1]["text"]
    assert "<script>window.pwned=2</script>" in shown[1]["text"]
    assert await page.locator("#messages img, #messages script").count() == 0
    assert await reply.locator("strong").inner_text() == "bold"
    links = await reply.locator("a").evaluate_all("links => links.map(a => a.href)")
    assert links == ["https://example.com/a"]
    assert await page.evaluate("() => window.pwned") is None


async def test_a_refused_message_is_marked_and_explained_in_plain_words(context, gateway_url, redis_client):
    user = new_user()
    page = await open_page(context, gateway_url, token(user))
    await page.fill("#text", "x" * (MAX_TEXT_LENGTH + 1))
    await page.click("#send")  # the button sends as Enter does
    await page.wait_for_selector("#messages li.failed")
    assert "too long" in await page.inner_text("#notice")
    assert "not sent" in await page.inner_text("#messages li.failed")
    await send(page, "a short one")  # the page goes on
    await wait_messages(page, lambda m: len(finals(m)) == 1)
    stream = await redis_client.xrange(keys.outbound(user))
    assert [f["kind"] for _, f in stream] == ["user", "assistant"]
    pending = await page.evaluate("() => sessionStorage.getItem('switchboard.pending.' + sessionStorage.getItem('switchboard.device'))")
    assert pending == "[]", "nothing is left to resend"
