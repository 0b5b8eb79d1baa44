"""The operator console in a real headless Chromium (Debian's `chromium`, driven by Playwright)
against a real `wallet serve` on a fresh, seeded database: sign in, find Alice, post an
adjustment and reverse it (each confirmed in the dialog), see the history change, open a
transaction with its entries, see the audit clean and the volume chart; then, with a read-only
key, see the service's 403 on an adjustment.

A screenshot of each step goes to build/console-screenshots/ (or $WALLET_CONSOLE_SCREENSHOTS);
the test prints the folder. docs/console.png in the README is `06-reversed.png` from a run.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
from playwright.async_api import Page, async_playwright, expect
from tools.service_process import ServiceProcess

from wallet.services.api_keys import create_api_key
from wallet.services.seed import seed_demo_data

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("WALLET_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = Path(os.environ.get("WALLET_CONSOLE_SCREENSHOTS") or ROOT / "build" / "console-screenshots")
STEP_TIMEOUT_MS = 15_000

pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"no chromium at {CHROMIUM} (`make browser-deps` installs Debian's; CI runs it)",
)


@dataclass
class Console:
    service: ServiceProcess
    admin_key: str
    read_key: str


@pytest.fixture
async def console(
    create_migrated_database: Callable[[], Awaitable[str]], tmp_path: Path
) -> AsyncIterator[Console]:
    url = await create_migrated_database()
    conn = await asyncpg.connect(url)
    try:
        await seed_demo_data(conn)  # Alice (user_001) and Bob, with three bonuses each
        admin_key = await create_api_key(conn, "console-operator", ["admin"])
        read_key = await create_api_key(conn, "console-support", ["read"])
    finally:
        await conn.close()
    service = ServiceProcess(
        {"WALLET_DATABASE_URL": url, "WALLET_LOG_LEVEL": "WARNING"}, log_path=tmp_path / "service.log"
    )
    service.start()
    try:
        yield Console(service, admin_key, read_key)
    finally:
        service.stop()


class Steps:
    """Numbered full-page screenshots, one per step."""

    def __init__(self, page: Page, folder: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        self.page, self.folder, self.count = page, folder, 0

    async def shot(self, name: str) -> None:
        self.count += 1
        await self.page.screenshot(path=self.folder / f"{self.count:02d}-{name}.png", full_page=True)


async def sign_in(page: Page, key: str) -> None:
    await expect(page.locator("#login-view")).to_be_visible()
    await page.fill("#api-key", key)
    await page.click("#login-form button[type=submit]")
    await expect(page.locator("#who")).to_be_visible()


@pytest.mark.slow
async def test_an_operator_finds_alice_adjusts_and_reverses_in_the_console(console: Console, capsys):
    base = console.service.base_url
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(STEP_TIMEOUT_MS)
            expect.set_options(timeout=STEP_TIMEOUT_MS)
            problems: list[str] = []  # script errors and CSP violations
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on(
                "console",
                lambda message: (
                    problems.append(message.text)
                    if message.type == "error" and not message.text.startswith("Failed to load resource")
                    else None
                ),
            )
            refusals: list[str] = []  # every answer >= 400 the page got
            page.on(
                "response",
                lambda response: (
                    refusals.append(f"{response.status} {response.request.method} {response.url}")
                    if response.status >= 400
                    else None
                ),
            )
            steps = Steps(page, SCREENSHOTS)

            # 1. Sign in with the admin key.
            await page.goto(f"{base}/console")
            await steps.shot("sign-in")
            await sign_in(page, console.admin_key)
            await expect(page.locator("#who-name")).to_have_text("console-operator")

            # 2. Find Alice: her balances and history (the seed's three bonuses).
            await page.fill("#search-q", "alice")
            await page.press("#search-q", "Enter")
            await expect(page.locator("#search-results .user-result")).to_have_count(1)
            await page.click("#search-results .user-result")
            await expect(page.locator("#user-title")).to_contain_text("Alice")
            await expect(page.locator("#user-title")).to_contain_text("user_001")
            gold = page.locator('#balances tr[data-asset="GOLD_COINS"] td.balance')
            await expect(gold).to_have_text("1,000")
            history = page.locator("#history tbody tr")
            await expect(history).to_have_count(3)
            await steps.shot("alice")

            # 3. An adjustment: credit 250 gold with a reason, confirmed in the dialog.
            await page.select_option("#adjust-direction", "credit")
            await page.select_option("#adjust-asset", "GOLD_COINS")
            await page.fill("#adjust-amount", "250")
            await page.fill("#adjust-reason", "goodwill for ticket 4711")
            await page.click("#adjust-form button[type=submit]")
            dialog = page.locator("#confirm-dialog")
            await expect(dialog).to_be_visible()
            await expect(page.locator("#confirm-text")).to_contain_text("Credit 250 GOLD_COINS to Alice")
            await steps.shot("confirm-adjustment")
            await page.click("#confirm-ok")
            await expect(dialog).to_be_hidden()
            await expect(gold).to_have_text("1,250")
            await expect(history).to_have_count(4)
            newest = history.first
            await expect(newest).to_have_attribute("data-type", "bonus")
            await expect(newest).to_have_class(re.compile(r"\bfresh\b"))
            await expect(newest).to_contain_text("Adjustment: goodwill for ticket 4711")
            await expect(newest.locator("td").nth(3)).to_have_text("+250")
            adjustment_id = await newest.get_attribute("data-id")
            assert adjustment_id
            await steps.shot("adjusted")

            # 4. The adjustment with its entries: Alice +250, SYSTEM_PROMOTIONS -250.
            await newest.locator("button.open-transaction").click()
            await expect(page.locator("#transaction-view")).to_be_visible()
            await expect(page.locator("#transaction-title")).to_have_text("bonus of 250 GOLD_COINS")
            entries = page.locator("#entries tbody tr")
            await expect(entries).to_have_count(2)
            await expect(page.locator("#entries tbody")).to_contain_text("SYSTEM_PROMOTIONS")
            idempotency_key = page.locator("#transaction-fields code").nth(2)
            await expect(idempotency_key).to_contain_text("console-")
            await steps.shot("transaction")

            # 5. Reverse it with a reason: a clawback, confirmed; back on Alice's history.
            await page.fill("#reverse-reason", "posted by mistake")
            await page.click("#reverse-form button[type=submit]")
            await expect(dialog).to_be_visible()
            await expect(page.locator("#confirm-text")).to_contain_text("Reverse 250 GOLD_COINS")
            await page.click("#confirm-ok")
            await expect(page.locator("#users-view")).to_be_visible()
            await expect(history).to_have_count(5)
            await expect(history.first).to_have_attribute("data-type", "clawback")
            await expect(history.first.locator("td").nth(3)).to_have_text("−250")
            await expect(gold).to_have_text("1,000")
            await steps.shot("reversed")
            # The history filters: only clawbacks, then only gold.
            await page.select_option("#filter-type", "clawback")
            await page.click("#history-filters button[type=submit]")
            await expect(history).to_have_count(1)
            await page.select_option("#filter-type", "")
            await page.select_option("#filter-asset", "GOLD_COINS")
            await page.click("#history-filters button[type=submit]")
            await expect(history).to_have_count(3)
            await steps.shot("history-filtered")

            # 6. The original now shows as fully reversed, and cannot be reversed again.
            await page.goto(f"{base}/console#/transactions/{adjustment_id}")
            await expect(page.locator("#reverse-note")).to_have_text("Fully reversed.")
            await expect(page.locator("#reverse-form button[type=submit]")).to_be_disabled()

            # A link with ".." for an id is refused by the page, not resolved to another endpoint.
            asked = len(refusals)
            for bad in ("..", "."):
                await page.goto(f"{base}/console#/transactions/{bad}")
                await expect(page.locator("#transaction-fields")).to_contain_text("is not a valid id")
                await page.goto(f"{base}/console#/users/{bad}")
                await expect(page.locator("#balances tbody")).to_contain_text("is not a valid id")
            assert len(refusals) == asked, refusals[asked:]

            # 7. The audit: clean.
            await page.click('#tabs a[data-tab="audit"]')
            await expect(page.locator("#audit-status")).to_have_text("Clean")
            await expect(page.locator("#audit-system tbody tr").first).to_be_visible()
            await steps.shot("audit")

            # 8. Volume per asset per day: today's gold is the seed's (Alice 1,000, Bob 500) and the
            # adjustment's 250 both ways.
            await page.click('#tabs a[data-tab="volume"]')
            chart = page.locator('#volume-charts figure[data-asset="GOLD_COINS"]')
            await expect(chart).to_contain_text("credited 1,750 · debited 250 · 4 transaction(s)")
            await expect(chart.locator("rect.bar-credit")).to_have_count(1)
            await expect(chart.locator("rect.bar-debit")).to_have_count(1)
            await steps.shot("volume")

            # 9. A read-only key: the page shows the service's 403 on an adjustment.
            await page.click("#sign-out")
            await sign_in(page, console.read_key)
            await page.goto(f"{base}/console#/users/user_001")
            await expect(gold).to_have_text("1,000")
            await page.fill("#adjust-amount", "5")
            await page.fill("#adjust-reason", "should be refused")
            await page.click("#adjust-form button[type=submit]")
            await page.click("#confirm-ok")
            await expect(page.locator("#adjust-error")).to_contain_text("403 forbidden")
            await expect(page.locator("#adjust-error")).to_contain_text("lacks the 'credit' scope")
            await expect(history).to_have_count(5)
            await steps.shot("forbidden")

            assert problems == [], problems
            assert refusals == [f"403 POST {base}/api/v1/transactions/bonus"], refusals
        finally:
            await browser.close()

    # What the browser did, as the API sees it: one adjustment with a console idempotency key,
    # reversed once, and nothing else.
    headers = {"Authorization": f"Bearer {console.admin_key}"}
    async with httpx.AsyncClient(base_url=base, headers=headers) as http:
        adjustment = (await http.get(f"/api/v1/transactions/{adjustment_id}")).json()
        assert adjustment["idempotency_key"].startswith("console-")
        assert adjustment["reversed_amount"] == 250
        assert adjustment["metadata"]["reason"] == "goodwill for ticket 4711"
        page_ = (await http.get("/api/v1/wallets/user_001/transactions")).json()
        assert [tx["type"] for tx in page_["data"]] == ["clawback", "bonus", "bonus", "bonus", "bonus"]
        assert page_["data"][0]["description"] == "posted by mistake"
        assert (await http.get("/api/v1/audit")).json()["clean"]
    with capsys.disabled():
        print(f"\nconsole screenshots ({steps.count}): {SCREENSHOTS}")
