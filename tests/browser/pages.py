"""What the tests do with the page and read from it (the DOM, never the page's internals)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:  # the tests are skipped where playwright is missing: no import at collection
    from playwright.async_api import BrowserContext, Page

#: Each message the page shows: its role, client_msg_id, state and text.
MESSAGES_JS = """() => [...document.querySelectorAll('#messages li[data-role]')].map(li => ({
    role: li.dataset.role, cmid: li.dataset.cmid, state: li.dataset.state || null,
    event_id: li.dataset.eventId || null, text: li.querySelector('.body') ? li.querySelector('.body').innerText
        : li.textContent}))"""


async def open_page(context: BrowserContext, base: str, token: str | None = None, *, link: str | None = None) -> Page:
    """A new tab on the client, signed in with ``token`` (in the fragment)
    and connected; or opened on ``link`` (the address `switchboard run` prints)."""
    page = await context.new_page()
    page.on("console", lambda message: message.type == "error" and print(f"console: {message.text}"))
    page.on("pageerror", lambda error: print(f"page error: {error}"))
    await page.goto(link or (f"{base}/#token={token}" if token else f"{base}/"))
    if token or link:
        await wait_connected(page)
    return page


async def wait_connected(page: Page) -> None:
    await page.wait_for_selector('#status[data-state="open"]')


async def messages(page: Page) -> list[dict[str, Any]]:
    return await page.evaluate(MESSAGES_JS)


async def wait_messages(page: Page, predicate, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Poll the page's messages until ``predicate(messages)`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        shown = await messages(page)
        if predicate(shown):
            return shown
        if time.monotonic() > deadline:
            raise AssertionError(f"the page's messages did not reach the expected state in {timeout} s: {shown}")
        await asyncio.sleep(0.05)


async def send(page: Page, text: str) -> None:
    """Type ``text`` into the composer and press Enter."""
    await page.fill("#text", text)
    await page.press("#text", "Enter")


def finals(shown: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in shown if m["role"] == "assistant" and m["state"] in ("done", "error", "cancelled")]


async def open_conversation(page: Page) -> str:
    """The id of the conversation the tab shows."""
    return await page.evaluate("() => sessionStorage.getItem('switchboard.open')")


def stream_messages(stream: list[tuple[str, dict[str, str]]], conversation: str) -> list[tuple[str, str]]:
    """What the page must show of ``conversation``, from the user's outbound
    stream: each user message in stream order as ``("user", client_msg_id)``,
    followed by its final reply ``("assistant", client_msg_id)`` when it has one
    (a chat shows a reply under its message, also when later messages were sent
    before it came). A message with two finals (a regenerate) shows one."""
    finals = {f["cmid"] for _, f in stream
              if f.get("conv") == conversation and f["kind"] in ("assistant", "turn_error", "cancelled")}
    shown: list[tuple[str, str]] = []
    for _, f in stream:
        if f.get("conv") == conversation and f["kind"] == "user":
            shown.append(("user", f["cmid"]))
            if f["cmid"] in finals:
                shown.append(("assistant", f["cmid"]))
    return shown


def shown_messages(shown: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(m["role"], m["cmid"]) for m in shown]


async def device_connection(redis_client, user: str, page: Page) -> str | None:
    """The connection id the tab's device holds on the gateways (None: not connected)."""
    from switchboard.shared import keys
    from switchboard.shared.nodes import parse_owner

    device = await page.evaluate("() => sessionStorage.getItem('switchboard.device')")
    owner = await redis_client.hget(keys.device_owners(user), device)
    return parse_owner(owner)[0] if owner else None
