"""The self-service page in a real browser (Debian's Chromium, driven by Playwright): sign in,
see the profile, withdraw a consent with the keyboard, see it in the history, and see the next
app read withheld."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvicorn
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.access.auth import mint_member_token
from gateway.app import create_app
from tests.conftest import TEST_SECRET, Api, add_client, add_member, make_settings
from tests.helpers import enrich, grant, read

CHROMIUM = Path("/usr/bin/chromium")

if not CHROMIUM.exists():
    if os.environ.get("CI"):
        raise RuntimeError("CI must install Debian's chromium (see .ci/run)")
    pytest.skip("needs Debian's chromium: apt-get install chromium", allow_module_level=True)

from playwright.async_api import Page, async_playwright, expect  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def server(db: AsyncEngine, gateway_url: str) -> AsyncIterator[str]:
    """The gateway on a real port, in this event loop."""
    app = create_app(make_settings(gateway_url), database_url=gateway_url)
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110  # uvicorn offers a flag, not an event
        await asyncio.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


@pytest.fixture
async def page(server: str) -> AsyncIterator[Page]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        context = await browser.new_context(viewport={"width": 375, "height": 740})
        yield await context.new_page()
        await browser.close()


async def test_member_withdraws_a_consent_on_the_page(
    page: Page, server: str, api: Api, db: AsyncEngine
) -> None:
    member_id = await add_member(db, first_name="Kari", last_name="Nordmann")
    grant_id = await grant(db, member_id, "personalized_offers")
    await enrich(db, member_id, grant_id)
    app_key = (await add_client(db, name="Kampanjeverktøy", purposes=("personalized_offers",))).key
    before = await read(api, app_key, member_id, "personalized_offers")
    assert before["data"]["member"]["lifestyleSegment"] == "active_outdoor"
    token = mint_member_token(member_id, TEST_SECRET, dt.timedelta(minutes=10))

    await page.goto(f"{server}/me")
    # Keyboard only: type the token, tab to the button, press Enter.
    await page.locator("#token").focus()
    await page.keyboard.insert_text(token)
    await page.keyboard.press("Tab")
    await page.keyboard.press("Enter")

    await expect(page.locator("#profile")).to_contain_text("Kari Nordmann")
    await expect(page.locator("#enriched")).to_contain_text("active_outdoor")
    card = page.locator('[data-consent="personalized_offers"]')
    await expect(card).to_contain_text("Personlige tilbud")
    await expect(card).to_contain_text("Samtykke gitt")
    await expect(page.locator("#access")).to_contain_text("Kampanjeverktøy")
    # Reads sensibly on a phone: nothing wider than the screen.
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

    withdraw = card.get_by_role("button", name="Trekk samtykke")
    await withdraw.focus()
    await page.keyboard.press("Enter")

    await expect(page.locator("#status")).to_have_text("Lagret.")
    await expect(card).to_contain_text("Ikke samtykke")
    await expect(page.locator("#history")).to_contain_text("Trukket")
    await expect(page.locator("#enriched")).not_to_contain_text("active_outdoor")
    after = await read(api, app_key, member_id, "personalized_offers")
    assert after["data"]["member"]["lifestyleSegment"] is None
    codes = {e["path"][-1]: e["extensions"]["code"] for e in after["errors"]}
    assert codes["lifestyleSegment"] == "CONSENT_WITHDRAWN"

    if os.environ.get("TILLIT_SCREENSHOT"):
        await page.screenshot(path=os.environ["TILLIT_SCREENSHOT"], full_page=True)
    # English descriptions are one switch away.
    await page.select_option("#language", "en")
    await expect(card).to_contain_text("Personalised offers")
    await expect(card).to_contain_text("No consent")


async def test_the_page_shows_errors_in_words(page: Page, server: str) -> None:
    await page.goto(f"{server}/me")
    await page.fill("#token", "not-a-token")
    await page.click("#sign-in-button")

    await expect(page.locator("#status")).to_contain_text("Authentication required")
    assert "Traceback" not in await page.content()
