"""Part of the hardening issue: HEAD wherever GET answers, no redirects built from the Host
header, unknown assets in read filters, the Idempotency-Key header as the IETF draft defines it,
and reserved user ids."""

from __future__ import annotations

import asyncpg
import pytest

from tests.support import new_key

TOPUP = "/api/v1/transactions/topup"


async def test_head_answers_wherever_get_does_with_the_same_status_and_no_body(client, make_user):
    user = await make_user(GOLD_COINS=5)
    spec = (await client.get("/openapi.json")).json()
    concrete = {
        "user_id": user,
        "transaction_id": "00000000-0000-0000-0000-000000000000",
        "hold_id": "00000000-0000-0000-0000-000000000000",
        "webhook_id": "1",
    }
    paths = [p for p, ops in spec["paths"].items() if "get" in ops] + ["/docs", "/metrics"]
    assert len(paths) >= 8
    for path in paths:
        url = path.format(**concrete)
        get, head = await client.get(url), await client.head(url)
        assert head.status_code == get.status_code, url
        assert head.content == b"", url
        assert head.headers.get("content-type") == get.headers.get("content-type"), url


async def test_a_trailing_slash_is_not_redirected(client):
    response = await client.get("/api/v1/wallets/user_001/balance/", headers={"Host": "evil.example"})
    assert response.status_code == 404 and "location" not in response.headers
    assert response.json()["error"]["code"] == "not_found"


async def test_an_unknown_asset_in_a_read_filter_is_a_404(client, make_user):
    user = await make_user(GOLD_COINS=5)
    for path in (f"/api/v1/wallets/{user}/balance", f"/api/v1/wallets/{user}/transactions"):
        response = await client.get(path, params={"asset_type": "NO_SUCH_ASSET"})
        assert response.status_code == 404, path
        assert response.json()["error"] == {
            "code": "asset_type_not_found",
            "message": "no asset type with code NO_SUCH_ASSET",
            "field": "asset_type",
        }
    ranged = await client.get(
        f"/api/v1/wallets/{user}/transactions",
        params={"asset_type": "NO_SUCH_ASSET", "to": "2030-01-01T00:00:00Z"},
    )
    assert ranged.status_code == 404
    # A known asset with nothing in it is still an empty answer.
    empty = await client.get(f"/api/v1/wallets/{user}/transactions", params={"asset_type": "DIAMONDS"})
    assert empty.status_code == 200 and empty.json()["data"] == []


async def test_a_quoted_idempotency_key_is_the_same_key(client, make_user):
    user = await make_user()
    key = new_key()
    body = {"user_id": user, "asset_type": "GOLD_COINS", "amount": 3}
    first = await client.post(TOPUP, headers={"Idempotency-Key": key}, json=body)
    quoted = await client.post(TOPUP, headers={"Idempotency-Key": f'"{key}"'}, json=body)
    assert first.status_code == quoted.status_code == 201
    assert quoted.headers["Idempotent-Replayed"] == "true" and quoted.content == first.content
    balance = (
        await client.get(f"/api/v1/wallets/{user}/balance", params={"asset_type": "GOLD_COINS"})
    ).json()
    assert balance["balances"][0]["balance"] == 3


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ([("Idempotency-Key", "k-one"), ("Idempotency-Key", "k-two")], 400, "idempotency_key_malformed"),
        ([("Idempotency-Key", "same"), ("Idempotency-Key", "same")], 400, "idempotency_key_malformed"),
        ([("Idempotency-Key", "")], 400, "idempotency_key_missing"),
        ([("Idempotency-Key", "   ")], 400, "idempotency_key_missing"),
        ([("Idempotency-Key", '""')], 400, "idempotency_key_missing"),
        ([("Idempotency-Key", '"a"b"')], 400, "idempotency_key_malformed"),
        ([("Idempotency-Key", '"abc')], 400, "idempotency_key_malformed"),
        ([("Idempotency-Key", 'abc"')], 400, "idempotency_key_malformed"),
        ([("Idempotency-Key", '"a",b')], 400, "idempotency_key_malformed"),
        ([("Idempotency-Key", '"a", "b"')], 400, "idempotency_key_malformed"),
        ([("Idempotency-Key", 'a"b')], 400, "idempotency_key_malformed"),
        ([("Idempotency-Key", '"')], 400, "idempotency_key_malformed"),
        ([("Idempotency-Key", '"a\\x"')], 400, "idempotency_key_malformed"),
        ([("Idempotency-Key", '"abc\\"')], 400, "idempotency_key_malformed"),
        ([("Idempotency-Key", "has space")], 422, "invalid_request"),
    ],
)
async def test_bad_idempotency_key_headers_are_refused_and_write_nothing(
    client, make_user, pool, headers, status, code
):
    user = await make_user(GOLD_COINS=5)
    hold = await client.post(
        "/api/v1/holds",
        headers={"Idempotency-Key": new_key()},
        json={"user_id": user, "asset_type": "GOLD_COINS", "amount": 1},
    )
    before = await pool.fetchval("SELECT count(*) FROM transactions WHERE user_id = $1", user)
    # The fast path (top-up) and the full path (capture) parse the header the same way.
    for path, body in (
        (TOPUP, {"user_id": user, "asset_type": "GOLD_COINS", "amount": 1}),
        (f"/api/v1/holds/{hold.json()['id']}/capture", {}),
    ):
        response = await client.post(path, headers=headers, json=body)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), path
        assert response.json()["error"]["field"] == "idempotency_key"
        assert response.json()["error"]["message"]
    assert await pool.fetchval("SELECT count(*) FROM transactions WHERE user_id = $1", user) == before


async def test_a_quoted_key_with_escapes_is_the_key_it_spells(client, make_user):
    user = await make_user()
    body = {"user_id": user, "asset_type": "GOLD_COINS", "amount": 2}
    key = new_key()
    in_body = await client.post(TOPUP, json={**body, "idempotency_key": f'{key}"q\\'})
    in_header = await client.post(TOPUP, headers={"Idempotency-Key": f'"{key}\\"q\\\\"'}, json=body)
    assert in_body.status_code == in_header.status_code == 201, in_header.text
    assert in_header.headers["Idempotent-Replayed"] == "true" and in_header.content == in_body.content


@pytest.mark.parametrize("user_id", [".", "..", "....", "SYSTEM_REVENUE", "SYSTEM_TREASURY"])
async def test_reserved_user_ids_are_refused_by_the_api_and_the_database(admin, pool, user_id):
    response = await admin.post("/api/v1/users", json={"user_id": user_id, "name": "Reserved"})
    assert response.status_code == 422 and response.json()["error"]["field"] == "user_id"
    with pytest.raises(asyncpg.exceptions.CheckViolationError):
        await pool.execute("INSERT INTO users (id, name) VALUES ($1, 'x')", user_id)


def _raw(body: str) -> dict:
    return {"content": body, "headers": {"Idempotency-Key": new_key(), "Content-Type": "application/json"}}


@pytest.mark.parametrize(
    ("path", "template"),
    [
        (TOPUP, '{{"user_id": "{user}", "asset_type": "GOLD_COINS", "amount": {amount}}}'),
        (
            "/api/v1/transactions/spend",
            '{{"user_id": "{user}", "asset_type": "GOLD_COINS", "amount": {amount}}}',
        ),
        ("/api/v1/holds", '{{"user_id": "{user}", "asset_type": "GOLD_COINS", "amount": {amount}}}'),
        (
            "/api/v1/transactions/batch",
            '{{"operations": [{{"type": "spend", "user_id": "{user}", "asset_type": "GOLD_COINS", "amount": {amount}}}]}}',
        ),
    ],
)
async def test_amounts_are_judged_on_the_exact_json_text(admin, make_user, pool, path, template):
    user = await make_user(GOLD_COINS=1000)
    for text in (
        "1.99999999999999999",
        "2.0000000000000001",
        "1.5",
        "1e-1",
        "123.456e1",
        "0.9999999999999999999",
        "3.0",
        "3e0",
        "0.3e1",
        "300e-2",
    ):
        response = await admin.post(path, **_raw(template.format(user=user, amount=text)))
        assert response.status_code == 422, (text, response.text)
        assert response.json()["error"]["field"].endswith("amount"), text
    for text in ("3",):
        response = await admin.post(path, **_raw(template.format(user=user, amount=text)))
        assert response.status_code == 201, (text, response.text)
        created = response.json()
        assert (created["transactions"][0] if "transactions" in created else created)["amount"] == 3, text


async def test_non_numbers_duplicate_keys_and_overflow_are_malformed_json(admin, make_user, pool):
    user = await make_user(GOLD_COINS=10)
    bodies = [
        f'{{"user_id": "{user}", "asset_type": "GOLD_COINS", "amount": 1, "metadata": {{"x": NaN}}}}',
        f'{{"user_id": "{user}", "asset_type": "GOLD_COINS", "amount": 1, "metadata": {{"x": Infinity}}}}',
        f'{{"user_id": "{user}", "asset_type": "GOLD_COINS", "amount": 1, "metadata": {{"x": -Infinity}}}}',
        f'{{"user_id": "{user}", "asset_type": "GOLD_COINS", "amount": 1, "metadata": {{"x": 1e400}}}}',
        f'{{"user_id": "{user}", "asset_type": "GOLD_COINS", "amount": 1, "amount": 1000}}',
        f'{{"user_id": "{user}", "asset_type": "GOLD_COINS", "amount": 1, "metadata": {{"a": 1, "a": 2}}}}',
        f'{{"user_id": "{user}", "asset_type": "GOLD_COINS", "amount": 1e400}}',
    ]
    for body in bodies:
        response = await admin.post(TOPUP, **_raw(body))
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["code"] == "malformed_json", body
    assert (
        await pool.fetchval("SELECT count(*) FROM transactions WHERE user_id = $1", user) == 1
    )  # the opening


async def test_metadata_numbers_come_back_as_sent_and_depth_is_bounded(admin, make_user):
    user = await make_user()
    body = f'{{"user_id": "{user}", "asset_type": "GOLD_COINS", "amount": 1, "metadata": {{"price": 1.10, "big": 12345678901234567890.5}}}}'
    response = await admin.post(TOPUP, **_raw(body))
    assert response.status_code == 201, response.text
    assert '"price":1.10' in response.text and "12345678901234567890.5" in response.text
    deep = {"user_id": user, "asset_type": "GOLD_COINS", "amount": 1}
    nested: dict = {}
    cursor = nested
    for _ in range(40):
        cursor["n"] = {}
        cursor = cursor["n"]
    too_deep = await admin.post(
        TOPUP, json={**deep, "metadata": nested}, headers={"Idempotency-Key": new_key()}
    )
    assert too_deep.status_code == 422 and too_deep.json()["error"]["code"] == "limit_exceeded"
    hostile = '{{"user_id": "{}", "asset_type": "GOLD_COINS", "amount": 1, "metadata": {}1{}}}'.format(
        user,
        '{"n": ' * 5000,
        "}" * 5000,
    )
    answer = await admin.post(TOPUP, **_raw(hostile))
    assert 400 <= answer.status_code < 500, answer.text


async def test_a_replay_does_not_depend_on_todays_reference_data(create_migrated_database):
    """On a database of its own: it deactivates an asset, which other tests must not see."""
    import httpx

    from tests.support import bearer
    from wallet.api.app import create_app
    from wallet.services.api_keys import create_api_key
    from wallet.services.seed import seed_reference_data
    from wallet.settings import Settings

    url = await create_migrated_database()
    conn = await asyncpg.connect(url)
    try:
        await seed_reference_data(conn)
        await conn.execute("SELECT wallet_ensure_user('replayer', 'Replayer')")
        token = await create_api_key(conn, "replay-test", ["admin"])
    finally:
        await conn.close()
    app = create_app(
        Settings(database_url=url, db_pool_min_size=1, db_pool_max_size=2, hold_sweep_interval_ms=0)
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://wallet.test", headers=bearer(token)
        ) as admin,
    ):
        pool = app.state.resources.pool
        body = {"user_id": "replayer", "asset_type": "DIAMONDS", "amount": 7}
        key = new_key()
        first = await admin.post(TOPUP, headers={"Idempotency-Key": key}, json=body)
        assert first.status_code == 201, first.text
        await pool.execute("UPDATE asset_types SET is_active = false WHERE code = 'DIAMONDS'")
        replay = await admin.post(TOPUP, headers={"Idempotency-Key": key}, json=body)
        assert replay.status_code == 201 and replay.content == first.content
        assert replay.headers["Idempotent-Replayed"] == "true"
        # The key is looked up before anything else: another request under it is a reuse (422),
        # even when what it names does not exist.
        reused = await admin.post(
            TOPUP, headers={"Idempotency-Key": key}, json={**body, "user_id": "nobody_at_all"}
        )
        assert reused.status_code == 422 and reused.json()["error"]["code"] == "idempotency_key_reused"
        fresh = await admin.post(TOPUP, headers={"Idempotency-Key": new_key()}, json=body)
        assert fresh.status_code == 404 and fresh.json()["error"]["code"] == "asset_type_not_found"


async def test_authentication_and_scope_come_before_the_body(app, keys):
    import httpx

    broken = {"content": b'{"user_id": "x", "amount": ', "headers": {"Content-Type": "application/json"}}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://wallet.test"
    ) as http:
        anonymous = await http.post(TOPUP, **broken)
        assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthenticated"
        reader = await http.post(
            TOPUP, **{**broken, "headers": {**broken["headers"], "Authorization": f"Bearer {keys['read']}"}}
        )
        assert reader.status_code == 403
        allowed = await http.post(
            TOPUP, **{**broken, "headers": {**broken["headers"], "Authorization": f"Bearer {keys['credit']}"}}
        )
        assert allowed.status_code == 400 and allowed.json()["error"]["code"] == "malformed_json"
        for path in ("/api/v1/holds", "/api/v1/transactions/transfer", "/api/v1/users"):
            assert (await http.post(path, **broken)).status_code == 401, path


async def test_field_paths_have_one_format(admin, make_user):
    user = await make_user(GOLD_COINS=5)
    ok = {"type": "spend", "user_id": user, "asset_type": "GOLD_COINS", "amount": 1}
    cases = [
        ([ok, {**ok, "amount": "1"}], "operations[1].amount"),  # refused by validation
        ([ok, {**ok, "amount": 10**9}], "operations[1].amount"),  # refused by a configured limit
        ([ok, {**ok, "amount": 5}], "operations[1].amount"),  # refused by the ledger
    ]
    for operations, field in cases:
        response = await admin.post(
            "/api/v1/transactions/batch",
            headers={"Idempotency-Key": new_key()},
            json={"operations": operations},
        )
        assert response.json()["error"]["field"] == field, response.text


def test_log_lines_escape_control_characters_from_requests(capsys):
    import structlog

    from wallet.logging import configure_logging
    from wallet.settings import Settings

    for json_lines in (False, True):
        configure_logging(Settings(log_json=json_lines))
        structlog.get_logger("test").warning(
            "database_busy", path="/api/v1/wallets/\x1b[2J\nfake line\r/balance"
        )
        out = capsys.readouterr().out
        assert "\x1b" not in out and "\r" not in out and out.count("\n") == 1, repr(out)
        assert "fake line" in out
    configure_logging(Settings())


async def test_a_body_that_never_completes_is_cut_after_the_configured_time(settings, keys):
    import asyncio
    import time

    import httpx

    from wallet.api.app import create_app

    app = create_app(settings.model_copy(update={"request_body_timeout_ms": 300}))
    started_sending = asyncio.Event()

    async def slow_body():
        yield b'{"user_id": "user_001", '
        started_sending.set()
        await asyncio.sleep(30)
        yield b'"asset_type": "GOLD_COINS", "amount": 1}'

    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://wallet.test") as http,
    ):
        started = time.monotonic()
        response = await http.post(
            TOPUP,
            content=slow_body(),
            headers={
                "Authorization": f"Bearer {keys['all']}",
                "Idempotency-Key": new_key(),
                "Content-Type": "application/json",
            },
        )
        assert response.status_code == 408 and response.json()["error"]["code"] == "body_timeout"
        assert time.monotonic() - started < 5
