"""Users and asset types."""

from __future__ import annotations

import uuid


async def test_create_user_is_idempotent_and_gives_accounts(admin, client):
    user_id = f"u_{uuid.uuid4().hex[:10]}"
    first = await admin.post("/api/v1/users", json={"user_id": user_id, "name": "Carol"})
    assert first.status_code == 201
    assert first.json()["user_id"] == user_id
    assert first.json()["name"] == "Carol"
    again = await admin.post("/api/v1/users", json={"user_id": user_id, "name": "Carol"})
    assert again.status_code == 200
    assert again.json() == first.json()
    other_name = await admin.post("/api/v1/users", json={"user_id": user_id, "name": "Mallory"})
    assert other_name.status_code == 409
    assert other_name.json()["error"]["code"] == "user_exists"
    balances = (await client.get(f"/api/v1/wallets/{user_id}/balance")).json()["balances"]
    assets = (await client.get("/api/v1/asset-types")).json()["data"]
    assert len(balances) == len(assets) >= 3  # one account per asset, however many tests created
    assert all(b["balance"] == 0 for b in balances)


async def test_create_user_validates_and_needs_admin(admin, client):
    bad = await admin.post("/api/v1/users", json={"user_id": "has space", "name": "X"})
    assert bad.status_code == 422
    assert bad.json()["error"]["field"] == "user_id"
    for name in ("", " ", "     ", "\t\n", "\u3000\u00a0", "a\x00b"):
        blank = await admin.post("/api/v1/users", json={"user_id": "ok_id", "name": name})
        assert blank.status_code == 422, (name, blank.text)
        assert blank.json()["error"]["field"] == "name"
        assert (await client.get("/api/v1/wallets/ok_id/balance")).status_code == 404
    spaced = await admin.post("/api/v1/users", json={"user_id": f"sp_{uuid.uuid4().hex[:8]}", "name": " Al "})
    assert spaced.status_code == 201 and spaced.json()["name"] == " Al "
    forbidden = await client.post("/api/v1/users", json={"user_id": "ok_id", "name": "X"})
    assert forbidden.status_code == 403


async def test_list_users_pages_through_everyone(admin, client):
    for _ in range(3):
        await admin.post("/api/v1/users", json={"user_id": f"list_{uuid.uuid4().hex[:8]}", "name": "L"})
    ids: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/api/v1/users", params=params)).json()
        assert len(page["data"]) <= 2
        ids += [u["user_id"] for u in page["data"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert ids == sorted(ids)
    assert len(ids) == len(set(ids))
    assert len(ids) >= 3


async def test_asset_types_are_listed(client):
    response = await client.get("/api/v1/asset-types")
    assert response.status_code == 200
    listed = {a["code"]: a["scale"] for a in response.json()["data"]}
    # The seeded three (tests of credit lots add assets of their own to this database).
    assert {code: listed.get(code) for code in ("DIAMONDS", "GOLD_COINS", "LOYALTY_POINTS")} == {
        "DIAMONDS": 0,
        "GOLD_COINS": 0,
        "LOYALTY_POINTS": 0,
    }
    assert list(listed) == sorted(listed)


async def test_names_are_one_name_whichever_unicode_form_they_come_in(admin, client, pool):
    import unicodedata

    tag = uuid.uuid4().hex[:8]
    composed = f"Zoë Ångström {tag}"  # as most keyboards type it (NFC)
    decomposed = unicodedata.normalize("NFD", composed)  # as macOS file names and some IMEs give it
    assert composed != decomposed
    user_id = f"nfc_{tag}"
    first = await admin.post("/api/v1/users", json={"user_id": user_id, "name": decomposed})
    assert first.status_code == 201, first.text
    assert first.json()["name"] == composed  # stored, and answered, in NFC
    assert await pool.fetchval("SELECT name FROM users WHERE id = $1", user_id) == composed
    # The same name in the other form is the same request, not another name.
    again = await admin.post("/api/v1/users", json={"user_id": user_id, "name": composed})
    assert again.status_code == 200 and again.json() == first.json()
    # A search finds it whichever form the query is typed in.
    for q in (unicodedata.normalize("NFD", f"zoë ångström {tag}"), f"ZOË ÅNGSTRÖM {tag}".lower(), "Ångström"):
        response = await client.get("/api/v1/search/users", params={"q": q, "limit": 200})
        assert response.status_code == 200, response.text
        assert user_id in [u["user_id"] for u in response.json()["data"]], q
    # A name written in NFD before names were normalised is found too.
    legacy = f"nfd_{tag}"
    await pool.execute(
        "SELECT wallet_ensure_user($1, $2)", legacy, unicodedata.normalize("NFD", f"Chloë {tag}")
    )
    response = await client.get("/api/v1/search/users", params={"q": f"chloë {tag}"})
    assert [u["user_id"] for u in response.json()["data"]] == [legacy]


async def test_a_name_is_limited_to_200_characters_after_normalisation(admin):
    # U+0958 is one character that NFC writes as two (a composition exclusion).
    response = await admin.post(
        "/api/v1/users", json={"user_id": f"long_{uuid.uuid4().hex[:8]}", "name": "\u0958" * 150}
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "name"
