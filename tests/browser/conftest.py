"""Fixtures of the web client's tests: one headless Debian chromium for the
session (driven by Playwright, nothing downloaded), one set of services for
the module, a fresh browser context (fresh storage: a new browser) per test,
and a screenshot of each test's pages in test-artifacts/browser/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import pytest_asyncio
import redis
import redis.asyncio as aioredis

from tests.support.cluster import Cluster

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
INSTALL_HINT = "install Debian's chromium (`apt-get install chromium`) and the dev extras (`make install`)"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
#: The graph the page talks to: streams replies on "streamed", sleeps on "sleep:<s>", asks on "ask".
GRAPH = "tests.support.graphs:slow"
#: Short enough that a test types a longer message at no cost.
MAX_TEXT_LENGTH = 5000


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing: {INSTALL_HINT}"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return f"the playwright package is missing: {INSTALL_HINT}"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = missing()
    if reason:
        for item in items:
            if "tests/browser/" in str(item.path).replace(os.sep, "/"):
                item.add_marker(pytest.mark.skip(reason=f"browser test skipped: {reason}"))


@pytest_asyncio.fixture(scope="session")
async def browser():
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture(scope="module")
def services(redis_url, tmp_path_factory):
    """A fanout, a worker running GRAPH and a gateway, shared by a module's tests (each uses its own user)."""
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    client.close()
    cluster = Cluster(redis_url, tmp_path_factory.mktemp("browser"), env={"GRAPH": GRAPH, "MAX_TEXT_LENGTH": str(MAX_TEXT_LENGTH)})
    try:
        cluster.start_many(("fanout", "fanout"), ("worker", "worker"), ("gateway", "gateway"))
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def gateway_url(services) -> str:
    return f"http://127.0.0.1:{services.services['gateway'].port}"


@pytest_asyncio.fixture
async def context(browser, request):
    """A new browser (its own storage) for the test; its pages are
    screenshotted into ARTIFACTS when the test ends, pass or fail."""
    context = await browser.new_context(viewport={"width": 1000, "height": 700})
    context.set_default_timeout(15000)
    try:
        yield context
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for index, page in enumerate(context.pages):
            if not page.is_closed():
                path = ARTIFACTS / f"{request.node.name}-{index + 1}.png"
                try:
                    await page.screenshot(path=str(path), timeout=5000)
                except Exception as exc:  # noqa: BLE001 - a screenshot is a help, never a failure
                    print(f"screenshot of {request.node.name} page {index + 1} failed: {exc}")
        await context.close()


@pytest_asyncio.fixture
async def redis_client(services):
    """A client of the services' Redis (replies decoded), to compare the page with what was sent."""
    client = aioredis.Redis.from_url(services.redis_url, decode_responses=True)
    yield client
    await client.aclose()
