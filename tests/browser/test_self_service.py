"""The self-service page in a real browser (Debian's Chromium, driven by Playwright): sign in,
see the profile, withdraw a consent with the keyboard, see it in the history, and see the next
app read withheld."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.access.auth import mint_member_token
from gateway.audit.sealer import seal_until_current
from tests.conftest import (
    TEST_SECRET,
    TEST_SIGNER,
    Api,
    add_client,
    add_member,
    lift_audit_guards,
    listening,
    make_settings,
    restore_audit_guards,
)
from tests.helpers import enrich, grant, read

CHROMIUM = Path("/usr/bin/chromium")

if not CHROMIUM.exists():
    if os.environ.get("CI"):
        raise RuntimeError("CI must install Debian's chromium (see .ci/run)")
    pytest.skip("needs Debian's chromium: apt-get install chromium", allow_module_level=True)

from playwright.async_api import Page, async_playwright, expect  # noqa: E402


@pytest.fixture
async def server(db: AsyncEngine, gateway_url: str) -> AsyncIterator[str]:
    """The gateway on a real port, in this event loop."""
    async with listening(make_settings(gateway_url), gateway_url) as url:
        yield url


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

    # In the page's language, never the server's English or a code.
    await expect(page.locator("#status")).to_contain_text("Innloggingen gikk ikke")
    assert "Traceback" not in await page.content()
    assert "UNAUTHENTICATED" not in await page.locator("body").inner_text()
    await page.select_option("#language", "en")
    await page.fill("#token", "not-a-token")
    await page.click("#sign-in-button")
    await expect(page.locator("#status")).to_contain_text("Sign-in failed")


async def test_the_page_runs_its_own_script_and_no_other(page: Page, server: str) -> None:
    await page.goto(f"{server}/me")
    await page.select_option("#language", "en")
    await expect(page.locator("h1")).to_have_text("My data")  # the page's own script ran

    # Script that got into the page by other means (markup shown unescaped, say) does not run.
    ran = await page.evaluate(
        """() => {
          window.injected = [];
          const script = document.createElement("script");
          script.textContent = "window.injected.push('script')";
          document.body.append(script);
          const image = document.createElement("img");
          image.setAttribute("onerror", "window.injected.push('handler')");
          image.src = "data:,not-an-image";
          document.body.append(image);
          return new Promise((done) => setTimeout(() => done(window.injected), 200));
        }"""
    )
    assert ran == []


async def sign_in(page: Page, server: str, member_id: uuid.UUID) -> None:
    token = mint_member_token(member_id, TEST_SECRET, dt.timedelta(minutes=10))
    await page.goto(f"{server}/me")
    await page.fill("#token", token)
    await page.click("#sign-in-button")
    await expect(page.locator("#profile")).to_be_visible()


async def test_member_corrects_their_data_on_the_page(
    page: Page, server: str, db: AsyncEngine
) -> None:
    member_id = await add_member(db, phone="+4791234567")
    await sign_in(page, server, member_id)

    await page.click("#edit-profile")
    await page.fill("#edit-phone", "912 34 567")
    await page.click("#save-profile")
    # The server's refusal, in words, next to the field it is about.
    await expect(page.locator("#error-phone")).to_contain_text("landkode")
    await page.fill("#edit-phone", "+4798765432")
    await page.fill("#edit-city", "Bergen")
    await page.fill("#edit-postalCode", "5003")
    await page.click("#save-profile")

    await expect(page.locator("#status")).to_have_text("Lagret.")
    await expect(page.locator("#profile")).to_contain_text("+4798765432")
    await expect(page.locator("#changes")).to_contain_text("Telefon")
    await expect(page.locator("#changes")).to_contain_text("+4791234567")
    await expect(page.locator("#changes")).to_contain_text("Poststed")
    async with db.connect() as connection:
        city = await connection.scalar(
            text("SELECT city FROM members WHERE id = :id"), {"id": member_id}
        )
    assert city == "Bergen"


async def test_member_grants_a_consent_and_reads_its_receipt(
    page: Page, server: str, db: AsyncEngine
) -> None:
    member_id = await add_member(db)
    await sign_in(page, server, member_id)
    card = page.locator('[data-consent="personalized_offers"]')
    await expect(card).to_contain_text("Ikke samtykke")

    await card.get_by_role("button", name="Gi samtykke").click()

    await expect(card).to_contain_text("Samtykke gitt")
    await card.get_by_role("button", name="Vis kvittering").click()
    receipt = page.locator("#receipt")
    await expect(receipt).to_be_visible()
    await expect(receipt).to_contain_text("Personlige tilbud")
    await expect(receipt).to_contain_text("Uttrykkelig samtykke")
    await expect(receipt).to_contain_text("Mine data-siden")
    await expect(page.locator("#history")).to_contain_text("Gitt")


async def test_member_objects_and_lifts_the_objection(
    page: Page, server: str, db: AsyncEngine
) -> None:
    member_id = await add_member(db)
    await sign_in(page, server, member_id)
    card = page.locator('[data-objection="data_quality"]')
    await expect(card).to_contain_text("Ingen protest")

    await card.get_by_role("button", name="Protester").click()
    await expect(card).to_contain_text("Du har protestert")
    await card.get_by_role("button", name="Trekk protesten").click()

    await expect(card).to_contain_text("Ingen protest")
    await expect(card).to_contain_text("trukket")
    async with db.connect() as connection:
        lifted = await connection.scalar(text("SELECT lifted_at IS NOT NULL FROM objections"))
    assert lifted is True


async def test_member_leaves_the_club(page: Page, server: str, db: AsyncEngine) -> None:
    member_id = await add_member(db)
    grant_id = await grant(db, member_id, "personalized_offers")
    await enrich(db, member_id, grant_id)
    await sign_in(page, server, member_id)

    await page.click("#leave-button")
    await expect(page.locator("#leave-confirm")).to_contain_text("Vil du melde deg ut nå?")
    await page.click("#leave-yes")

    await expect(page.locator("#status")).to_have_text("Du er meldt ut av klubben.")
    await expect(page.locator("#closed-note")).to_be_visible()
    await expect(page.locator('[data-consent="personalized_offers"]')).to_contain_text(
        "Ikke samtykke"
    )
    await expect(page.locator("#profile")).to_contain_text("Avsluttet")
    await expect(page.locator("#edit-profile")).to_be_hidden()
    async with db.connect() as connection:
        status = await connection.scalar(
            text("SELECT membership_status FROM members WHERE id = :id"), {"id": member_id}
        )
        values = await connection.scalar(text("SELECT count(*) FROM enrichment_records"))
    assert status == "CLOSED"
    assert values == 0


async def test_member_erases_their_data(page: Page, server: str, db: AsyncEngine) -> None:
    member_id = await add_member(db, email="kari.erase@example.no")
    await grant(db, member_id, "personalized_offers")
    await sign_in(page, server, member_id)
    await expect(page.locator("#erase")).to_contain_text("Samtykkehistorikken")

    await page.fill("#erase-email", "someone.else@example.no")
    await page.click("#erase-button")
    await expect(page.locator("#status")).to_contain_text("Skriv e-postadressen")
    await page.fill("#erase-email", "kari.erase@example.no")
    await page.click("#erase-button")

    await expect(page.locator("#erased")).to_contain_text("Dataene dine er slettet")
    await expect(page.locator("#erased")).to_contain_text("Kvitteringsnummer")
    await expect(page.locator("#content")).to_be_hidden()
    async with db.connect() as connection:
        members = await connection.scalar(text("SELECT count(*) FROM members"))
        erasures = await connection.scalar(text("SELECT count(*) FROM erasures"))
    assert members == 0
    assert erasures == 1


async def test_who_used_my_data_pages_past_fifty_and_keeps_my_own_visits_apart(
    page: Page, server: str, api: Api, db: AsyncEngine
) -> None:
    member_id = await add_member(db, tier="GOLD")
    grant_id = await grant(db, member_id, "customer_insight", method="CONDITIONAL")
    await enrich(db, member_id, grant_id)
    app_key = (await add_client(db, name="Kampanjeverktøy", purposes=("personalized_offers",))).key
    for _ in range(55):
        await read(api, app_key, member_id, "personalized_offers")
    own_token = mint_member_token(member_id, TEST_SECRET, dt.timedelta(minutes=10))
    await api.graphql("{ me { id } }", token=own_token)  # an earlier visit of their own

    await sign_in(page, server, member_id)

    access = page.locator("#access tbody tr")
    await expect(access).to_have_count(50)
    await expect(page.locator("#own")).to_contain_text("Så dataene dine")
    await expect(page.locator("#own tbody tr")).to_have_count(1)
    await expect(page.locator("#access")).not_to_contain_text("Så dataene dine")
    await page.click("#more-access")
    await expect(access).to_have_count(55)
    await expect(page.locator("#more-access")).to_be_hidden()
    shown = await page.locator("body").inner_text()
    # Plain words only: no field keys, enum names, error codes or GraphQL field names.
    for key in (
        "household_size",
        "householdSize",
        "GOLD",
        "CONDITIONAL",
        "CONSENT_REQUIRED",
        "CATEGORY_NOT_IN_PURPOSE",
        "RELEASED",
        "accessLog",
        "consentHistory",
        "personalized_offers",
    ):
        assert key not in shown, key
    assert "Gull" in shown
    assert "Som del av medlemsvilkårene" in shown
    assert "Husstandsstørrelse" in shown


async def test_the_page_checks_every_access_against_the_signed_log(
    page: Page, server: str, api: Api, db: AsyncEngine
) -> None:
    """The browser verifies the checkpoint's Ed25519 signature, each entry's leaf and its
    inclusion proof (WebCrypto); an event changed in the database afterwards shows as such."""
    member_id = await add_member(db, first_name="Ola")
    app_key = (await add_client(db, name="Kundeservice", purposes=("membership_service",))).key
    for _ in range(3):
        await read(api, app_key, member_id, "membership_service")
    await seal_until_current(db, TEST_SIGNER)
    await read(api, app_key, member_id, "membership_service")  # newer than the checkpoint

    await sign_in(page, server, member_id)
    await page.select_option("#language", "en")

    summary = page.locator("#proof-summary")
    await expect(summary).to_contain_text("Every one of the 3 accesses listed is in the signed log")
    await expect(summary).to_contain_text("1 newer accesses are not sealed yet")
    await expect(page.locator("#access .proof-verified")).to_have_count(3)
    await expect(page.locator("#access .proof-pending")).to_have_count(1)

    # Someone with the database changes what one sealed access says.
    async with db.begin() as connection:
        partitions = await lift_audit_guards(connection)
        await connection.execute(
            text(
                "UPDATE access_events SET fields_released = '{}' WHERE id = (SELECT min(id) "
                "FROM access_events WHERE member_id = :member AND operation = 'member')"
            ),
            {"member": member_id},
        )
        await restore_audit_guards(connection, partitions)
    await page.reload()
    await page.select_option("#language", "en")

    await expect(summary).to_contain_text("1 of the accesses listed are NOT in the signed log")
    await expect(page.locator("#access .proof-failed")).to_have_count(1)
    await expect(page.locator("#access .proof-failed")).to_have_text("✗ DOES NOT MATCH")
