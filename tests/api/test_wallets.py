"""Balances and history: every asset listed, newest first, cursor pages, filters, bounded."""

from __future__ import annotations

from tests.support import new_key


async def _post(client, path, user, amount, asset="GOLD_COINS"):
    response = await client.post(
        f"/api/v1/transactions/{path}",
        headers={"Idempotency-Key": new_key()},
        json={"user_id": user, "asset_type": asset, "amount": amount},
    )
    assert response.status_code == 201, response.text
    return response.json()


async def test_balance_lists_every_asset_of_the_user(client, make_user):
    user = await make_user(GOLD_COINS=12, DIAMONDS=3)
    response = await client.get(f"/api/v1/wallets/{user}/balance")
    assert response.status_code == 200
    data = response.json()
    assert data["user_id"] == user
    by_asset = {b["asset_type"]: (b["balance"], b["available"], b["held"]) for b in data["balances"]}
    assets = {a["code"] for a in (await client.get("/api/v1/asset-types")).json()["data"]}
    assert set(by_asset) == assets  # every asset, each once (tests of lots add assets of their own)
    assert by_asset == {"GOLD_COINS": (12, 12, 0), "DIAMONDS": (3, 3, 0)} | {
        code: (0, 0, 0) for code in assets - {"GOLD_COINS", "DIAMONDS"}
    }
    only = await client.get(f"/api/v1/wallets/{user}/balance", params={"asset_type": "DIAMONDS"})
    assert [b["asset_type"] for b in only.json()["balances"]] == ["DIAMONDS"]


async def test_balance_of_unknown_user_is_404(client):
    response = await client.get("/api/v1/wallets/ghost_user/balance")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "user_not_found"


async def test_history_is_newest_first_with_cursor_pages(client, make_user):
    user = await make_user()
    posted = [await _post(client, "topup", user, amount) for amount in range(1, 8)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        response = await client.get(f"/api/v1/wallets/{user}/transactions", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["data"]) <= 3
        seen += [t["id"] for t in page["data"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == [t["id"] for t in reversed(posted)]


async def test_history_filters_by_asset_and_type(client, make_user):
    user = await make_user(GOLD_COINS=50)
    await _post(client, "spend", user, 5)
    await _post(client, "bonus", user, 2, asset="DIAMONDS")
    spends = (await client.get(f"/api/v1/wallets/{user}/transactions", params={"type": "spend"})).json()
    assert [t["type"] for t in spends["data"]] == ["spend"]
    diamonds = (
        await client.get(f"/api/v1/wallets/{user}/transactions", params={"asset_type": "DIAMONDS"})
    ).json()
    assert [(t["type"], t["asset_type"]) for t in diamonds["data"]] == [("bonus", "DIAMONDS")]
    bad_type = await client.get(f"/api/v1/wallets/{user}/transactions", params={"type": "steal"})
    assert bad_type.status_code == 422
    assert bad_type.json()["error"]["field"] == "type"


async def test_history_limit_is_bounded_and_cursor_checked(client, make_user, settings):
    user = await make_user()
    too_big = await client.get(
        f"/api/v1/wallets/{user}/transactions", params={"limit": settings.page_size_max + 1}
    )
    assert too_big.status_code == 422
    assert too_big.json()["error"]["field"] == "limit"
    for bad in ("zzzz", "!!", "x" * 500):
        response = await client.get(f"/api/v1/wallets/{user}/transactions", params={"cursor": bad})
        assert response.status_code == 422, bad
        assert response.json()["error"]["field"] == "cursor"


async def test_history_of_unknown_user_is_404(client):
    response = await client.get("/api/v1/wallets/ghost_user/transactions")
    assert response.status_code == 404
