"""The operator console's page and the reads it needs: who the key is, user search, the audit,
daily volume. Through the real ASGI app, on the session's database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import httpx

from tests.support import new_key


async def test_the_page_and_its_assets_are_served_with_a_strict_content_security_policy(client):
    page = await client.get("/console")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "console/assets/console.js" in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["x-frame-options"] == "DENY"
    for name, media_type in (("console.js", "text/javascript"), ("console.css", "text/css")):
        asset = await client.get(f"/console/assets/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(media_type), name
    for name in ("nope.js", "index.html", "..%2F__init__.py", "%2e%2e"):
        missing = await client.get(f"/console/assets/{name}")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found", name
    assert (await client.head("/console")).status_code == 200
    spec = (await client.get("/openapi.json")).json()
    assert not [p for p in spec["paths"] if p.startswith("/console")]


async def test_me_names_the_key_its_scopes_and_restrictions(app, keys, pool):
    from wallet.services.api_keys import KeyRestrictions, create_api_key

    async with pool.acquire() as conn:
        restricted = await create_api_key(
            conn,
            "loyalty-console-test",
            ["credit"],
            restrictions=KeyRestrictions(asset_codes=frozenset({"LOYALTY_POINTS"}), max_amount_minor=10),
        )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://wallet.test") as http:
        admin = (await http.get("/api/v1/me", headers={"Authorization": f"Bearer {keys['admin']}"})).json()
        assert admin["scopes"] == ["admin"] and all(admin["allows"].values())
        assert admin["restrictions"] == {"operations": None, "asset_types": None, "max_amount": None}
        mine = (await http.get("/api/v1/me", headers={"Authorization": f"Bearer {restricted}"})).json()
        assert mine["name"] == "loyalty-console-test" and mine["scopes"] == ["credit"]
        assert mine["allows"]["credit"] and not mine["allows"]["read"] and not mine["allows"]["admin"]
        assert mine["restrictions"]["asset_types"] == ["LOYALTY_POINTS"]
        assert mine["restrictions"]["max_amount"] == 10
        anonymous = await http.get("/api/v1/me")
        assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthenticated"


async def test_search_finds_users_by_exact_id_first_then_id_prefix_and_name(admin, client, keys):
    tag = uuid.uuid4().hex[:8]
    for user_id, name in (
        (f"zq{tag}", "Zed Quill"),
        (f"zq{tag}_2", "Another"),
        (f"other_{tag}", f"Mr zQ{tag} Smith"),
        (f"pct_{tag}", "100% real_name"),
    ):
        response = await admin.post("/api/v1/users", json={"user_id": user_id, "name": name})
        assert response.status_code in (200, 201), response.text

    async def found(q: str, **params: object) -> list[str]:
        response = await client.get("/api/v1/search/users", params={"q": q, **params})
        assert response.status_code == 200, response.text
        return [user["user_id"] for user in response.json()["data"]]

    # The exact id comes first; then ids starting with it and names containing it, by id.
    assert await found(f"zq{tag}_2") == [f"zq{tag}_2"]
    assert await found(f"zq{tag}") == [f"zq{tag}", f"other_{tag}", f"zq{tag}_2"]
    # Case-insensitively (ids are case-sensitive, so no exact match here: in id order).
    assert await found(f"ZQ{tag}") == [f"other_{tag}", f"zq{tag}", f"zq{tag}_2"]
    assert await found(f"zq{tag}", limit=1) == [f"zq{tag}"]
    # LIKE wildcards in the query are plain characters.
    assert await found("0% real_") == [f"pct_{tag}"]
    assert f"pct_{tag}" in await found("%", limit=200)
    assert f"zq{tag}" not in await found("%", limit=200)
    assert await found(f"nobody-{tag}") == []
    for params, code in (({}, "validation_error"), ({"q": ""}, "validation_error"), ({"q": "a\x01"}, "validation_error"),
                         ({"q": "a", "limit": 100_000}, "validation_error")):  # fmt: skip
        response = await client.get("/api/v1/search/users", params=params)
        assert response.status_code == 422 and response.json()["error"]["code"] == code, params
    async with httpx.AsyncClient(
        transport=client._transport,
        base_url="http://wallet.test",
        headers={"Authorization": f"Bearer {keys['credit']}"},
    ) as credit_only:
        refused = await credit_only.get("/api/v1/search/users", params={"q": "a"})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"


async def test_the_audit_is_for_admins_and_reports_clean_books(admin, client):
    refused = await client.get("/api/v1/audit")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    response = await admin.get("/api/v1/audit", params={"full": "true"})
    assert response.status_code == 200, response.text
    audit = response.json()
    assert audit["kind"] == "full" and audit["clean"] is True and audit["problems"] == []
    assert audit["counts"]["transactions"] >= 0 and "OK: the books balance" in audit["report"]
    assert audit["checked_at"].endswith("Z")
    datetime.fromisoformat(audit["checked_at"])


async def test_concurrent_audits_share_one_run(admin, monkeypatch):
    import asyncio

    from wallet.services import audit

    calls = 0
    real = audit.verify_ledger

    async def counting(conn, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.2)
        return await real(conn, **kwargs)

    monkeypatch.setattr(audit, "verify_ledger", counting)
    answers = await asyncio.gather(*(admin.get("/api/v1/audit", params={"full": "true"}) for _ in range(5)))
    assert [a.status_code for a in answers] == [200] * 5
    assert calls == 1
    assert len({a.json()["checked_at"] for a in answers}) == 1


async def test_volume_sums_user_credits_and_debits_per_asset_per_day(client, make_user, admin):
    before = (await client.get("/api/v1/reports/volume", params={"days": 1})).json()
    user = await make_user(DIAMONDS=40)  # a top-up of 40
    spend = await client.post(
        "/api/v1/transactions/spend",
        headers={"Idempotency-Key": new_key()},
        json={"user_id": user, "asset_type": "DIAMONDS", "amount": 15},
    )
    assert spend.status_code == 201
    other = await make_user()
    transfer = await admin.post(
        "/api/v1/transactions/transfer",
        headers={"Idempotency-Key": new_key()},
        json={"from_user_id": user, "to_user_id": other, "asset_type": "DIAMONDS", "amount": 5, "fee": 2},
    )
    assert transfer.status_code == 201, transfer.text
    after = (await client.get("/api/v1/reports/volume", params={"days": 1})).json()
    today = datetime.now(UTC).date().isoformat()
    assert after["days"] == 1 and after["from"] == after["to"] == today

    def diamonds(report: dict) -> dict:  # type: ignore[type-arg]
        rows = [d for d in report["data"] if d["asset_type"] == "DIAMONDS" and d["day"] == today]
        return rows[0] if rows else {"credited": 0, "debited": 0, "transactions": 0}

    # top-up +40; spend -15; transfer: sender -7, receiver +5 (the fee goes to SYSTEM_REVENUE).
    assert diamonds(after)["credited"] - diamonds(before)["credited"] == 45
    assert diamonds(after)["debited"] - diamonds(before)["debited"] == 22
    assert diamonds(after)["transactions"] - diamonds(before)["transactions"] == 3
    window = (await client.get("/api/v1/reports/volume")).json()
    assert window["days"] == 30 and all(window["from"] <= d["day"] <= window["to"] for d in window["data"])
    for days in (0, 91, "x"):
        response = await client.get("/api/v1/reports/volume", params={"days": days})
        assert response.status_code == 422 and response.json()["error"]["code"] == "validation_error", days


async def test_an_audit_past_the_statement_timeout_is_a_503_busy(admin, monkeypatch):
    from wallet.services import audit

    async def too_slow(conn, **_):  # type: ignore[no-untyped-def]
        raise TimeoutError  # what asyncpg raises past the pool's command timeout

    monkeypatch.setattr(audit, "verify_ledger", too_slow)
    response = await admin.get("/api/v1/audit", params={"full": "true"})
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "busy"
    assert "wallet verify" in response.json()["error"]["message"]
