"""The parameters every read shares, walked from the OpenAPI document: each time (`as_of`, `from`,
`to`), page size (`limit`) and cursor (`cursor`, `after`) of every GET route is read by one parser
and refused, naming it, with the one code of its rule; the extreme instants the API accepts work
and are echoed exactly."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.support import new_key, post
from wallet.services.pagination import (
    CursorList,
    encode_int_cursor,
    encode_numbers_cursor,
    encode_text_cursor,
)

EARLIEST, LATEST = "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z"


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


# Every GET route that takes one of these, and which. A route added with one fails this test until
# it is listed, and so gets the cases below.
EXPECTED = {
    "/api/v1/wallets/{user_id}/balance": {"time": ["as_of"]},
    "/api/v1/wallets/{user_id}/transactions": {
        "limit": ["limit"],
        "cursor": ["cursor"],
        "time": ["from", "to"],
    },
    "/api/v1/wallets/{user_id}/holds": {"limit": ["limit"], "cursor": ["cursor"]},
    "/api/v1/users": {"limit": ["limit"], "cursor": ["cursor"]},
    "/api/v1/events": {"limit": ["limit"], "cursor": ["after"]},
    "/api/v1/webhooks/{webhook_id}/dead-letters": {"limit": ["limit"], "cursor": ["cursor"]},
    "/api/v1/search/users": {"limit": ["limit"]},
    "/api/v1/reports/liabilities": {"time": ["as_of", "from", "to"]},
}


def _issued(routes: dict[str, tuple[str, dict[str, list[str]]]]) -> dict[str, str]:
    """A cursor the service could issue for each list (one of one list is refused by every other)."""
    user = routes["/api/v1/wallets/{user_id}/transactions"][0].split("/")[4]
    webhook_id = routes["/api/v1/webhooks/{webhook_id}/dead-letters"][0].split("/")[4]
    return {
        "/api/v1/wallets/{user_id}/transactions": encode_int_cursor(CursorList.HISTORY, 2**62, scope=user),
        "/api/v1/wallets/{user_id}/holds": encode_int_cursor(CursorList.HOLDS, 2**62, scope=user),
        "/api/v1/users": encode_text_cursor(CursorList.USERS, "a"),
        "/api/v1/events": encode_numbers_cursor(CursorList.EVENTS, 1, 1),
        "/api/v1/webhooks/{webhook_id}/dead-letters": encode_int_cursor(
            CursorList.DEAD_LETTERS, 2**62, scope=webhook_id
        ),
    }


REQUIRED = {"/api/v1/search/users": {"q": "a"}}


def _classify(parameter: dict[str, Any]) -> str | None:
    if parameter["in"] != "query":
        return None
    if parameter["name"] == "limit":
        return "limit"
    if parameter["name"] in ("cursor", "after"):
        return "cursor"
    schema = parameter["schema"]
    formats = {s.get("format") for s in [schema, *schema.get("anyOf", [])]}
    return "time" if "date-time" in formats else None


@pytest.fixture
async def routes(app, admin, make_user) -> AsyncIterator[dict[str, tuple[str, dict[str, list[str]]]]]:
    """Each route of EXPECTED as a URL with real path parameters, and its parameters by class."""
    user = await make_user(GOLD_COINS=10)
    for _ in range(2):
        await post(admin, "spend", user_id=user, asset_type="GOLD_COINS", amount=1)
        hold = await admin.post(
            "/api/v1/holds",
            headers={"Idempotency-Key": new_key()},
            json={"user_id": user, "asset_type": "GOLD_COINS", "amount": 1},
        )
        assert hold.status_code == 201, hold.text
    webhook = await admin.post("/api/v1/webhooks", json={"url": "http://127.0.0.1:9/never"})
    assert webhook.status_code == 201, webhook.text
    webhook_id = webhook.json()["id"]
    assert (await admin.patch(f"/api/v1/webhooks/{webhook_id}", json={"active": False})).status_code == 200
    found: dict[str, tuple[str, dict[str, list[str]]]] = {}
    for path, operations in app.openapi()["paths"].items():
        classes: dict[str, list[str]] = {}
        for parameter in operations.get("get", {}).get("parameters", []):
            kind = _classify(parameter)
            if kind:
                classes.setdefault(kind, []).append(parameter["name"])
        if classes:
            url = path.replace("{user_id}", user).replace("{webhook_id}", str(webhook_id))
            found[path] = (url, classes)
    assert {path: classes for path, (_, classes) in found.items()} == EXPECTED
    yield found
    await admin.delete(f"/api/v1/webhooks/{webhook_id}")


async def _refused(http: httpx.AsyncClient, url: str, params: dict[str, str], code: str, field: str) -> str:
    response = await http.get(url, params=params)
    assert response.status_code == 422, (url, params, response.text)
    error = response.json()["error"]
    assert (error["code"], error["field"]) == (code, field), (url, params, error)
    return str(error["message"])


BAD_TIMES = {
    "1700000000": "bare number",
    "1700000000.5": "bare number",
    "-1": "bare number",
    "1e9": "bare number",
    "2026-01-31": "without an offset",
    "2026-01-31T12:00:00": "without an offset",
    "2026-01-31 12:00:00Z": "joined by 'T'",
    "2026-01-31T12:00:00 01:00": "%2B",  # a '+' sent unencoded arrives as a space
    "2026-01-31T12:00Z": "not a time",
    "2026-01-31T12:00:00+0100": "not a time",
    "now": "not a time",
    "": "not a time",
    "２０２６-01-31T12:00:00Z": "not a time",
    "2026-02-30T12:00:00Z": "no such date",
    "2026-13-01T12:00:00Z": "no such date",
    "2026-01-31T24:00:00Z": "out of range",
    "2026-01-31T12:60:00Z": "out of range",
    "2026-12-31T23:59:60Z": "leap second",
    "2026-01-31T12:00:00+24:00": "offset out of range",
    "2026-01-31T12:00:00.1234567Z": "microsecond",
    "9999-12-31T23:59:59.999999-08:00": "after 9999-12-31T23:59:59.999999Z",
    "0001-01-01T00:00:00+00:01": "before 0001-01-01T00:00:00.000000Z",
    "0000-12-31T23:59:59Z": "before 0001-01-01T00:00:00.000000Z",
    "10000-01-01T00:00:00Z": "not a time",
}


async def test_every_time_parameter_refuses_what_names_no_instant_naming_it(admin, routes):
    for url, classes in routes.values():
        for name in classes.get("time", []):
            for value, reason in BAD_TIMES.items():
                message = await _refused(admin, url, {name: value}, "validation_error", name)
                assert message.startswith(f"{name}: ") and reason in message, (url, name, value, message)


# Extreme but valid: each names an instant from EARLIEST to LATEST (with the UTC form it is echoed in).
EXTREME_TIMES = {
    EARLIEST: "0001-01-01T00:00:00.000000Z",
    LATEST: "9999-12-31T23:59:59.999999Z",
    "9999-12-31T15:59:59.999999-08:00": "9999-12-31T23:59:59.999999Z",
    "0000-12-31T23:00:00-01:00": "0001-01-01T00:00:00.000000Z",
    "0001-01-01T05:30:00+05:30": "0001-01-01T00:00:00.000000Z",
    "2026-01-31t12:00:00.500000000z": "2026-01-31T12:00:00.500000Z",
    "2026-01-31T12:00:00-00:00": "2026-01-31T12:00:00.000000Z",
}


async def test_every_time_parameter_takes_the_extreme_instants(admin, routes):
    for url, classes in routes.values():
        for name in classes.get("time", []):
            for value in EXTREME_TIMES:
                # The other end of the period at its own extreme, so that [from, to) is a period.
                other = {"from": {"to": LATEST}, "to": {"from": EARLIEST}}.get(name, {})
                response = await admin.get(url, params={name: value, **other})
                assert response.status_code == 200, (url, name, value, response.text)


async def test_the_balance_and_the_report_echo_as_of_exactly_at_the_extremes(admin, routes):
    balance_url = routes["/api/v1/wallets/{user_id}/balance"][0]
    report_url = routes["/api/v1/reports/liabilities"][0]
    for value, echoed in EXTREME_TIMES.items():
        balance = await admin.get(balance_url, params={"as_of": value})
        assert balance.status_code == 200 and balance.json()["as_of"] == echoed, (value, balance.text)
        report = await admin.get(report_url, params={"as_of": value, "from": EARLIEST, "to": value})
        assert report.status_code == 200, (value, report.text)
        assert (report.json()["as_of"], report.json()["from"], report.json()["to"]) == (
            echoed,
            "0001-01-01T00:00:00.000000Z",
            echoed,
        )
    # The ledger as of the earliest instant holds nothing; as of the latest, what it holds now.
    before = (await admin.get(balance_url, params={"as_of": EARLIEST, "asset_type": "GOLD_COINS"})).json()
    after = (await admin.get(balance_url, params={"as_of": LATEST, "asset_type": "GOLD_COINS"})).json()
    assert (before["balances"][0]["balance"], after["balances"][0]["balance"]) == (0, 8)


async def test_a_period_that_ends_before_it_starts_is_refused_naming_from(admin, routes):
    for url, classes in routes.values():
        if {"from", "to"} <= set(classes.get("time", [])):
            params = {"from": "2026-02-01T00:00:00Z", "to": "2026-01-31T23:59:59.999999Z"}
            message = await _refused(admin, url, params, "validation_error", "from")
            assert "must not be after to" in message
            same = await admin.get(url, params={"from": params["from"], "to": params["from"]})
            assert same.status_code == 200, same.text  # empty, not refused


async def test_every_page_size_outside_its_bounds_gets_one_code(admin, routes, settings):
    bad = ["0", "-1", str(settings.page_size_max + 1), "1000000", "99999999999999999999", "1.5", "1e2",
           "abc", "", " 5", "+5", "٥"]  # fmt: skip
    for path, (url, classes) in routes.items():
        for name in classes.get("limit", []):
            for value in bad:
                message = await _refused(
                    admin, url, {**REQUIRED.get(path, {}), name: value}, "validation_error", name
                )
                assert (
                    message
                    == f"limit: must be a whole number from 1 to {settings.page_size_max} (WALLET_PAGE_SIZE_MAX)"
                )
            # The key is looked at first, whatever the limit.
            anonymous = await admin.get(url, params={name: "0"}, headers={"Authorization": ""})
            assert anonymous.status_code == 401, anonymous.text
            for value in ("1", str(settings.page_size_max)):
                response = await admin.get(url, params={**REQUIRED.get(path, {}), name: value})
                assert response.status_code == 200, (url, value, response.text)


async def test_every_cursor_the_service_did_not_issue_for_that_list_is_refused_naming_it(admin, routes):
    issued_for = _issued(routes)
    for path, (url, classes) in routes.items():
        for name in classes.get("cursor", []):
            issued = issued_for[path]
            ok = await admin.get(url, params={name: issued})
            assert ok.status_code == 200, (url, ok.text)
            edited = issued[:5] + ("A" if issued[5] != "A" else "B") + issued[6:]
            others = [c for p, c in issued_for.items() if p != path]
            bad = [
                "", "x" * 201, "!!", "zzzz", "not-a-cursor", " " + issued, issued + "=", issued + "==",
                issued[:-1], issued + "A", edited, issued.swapcase(),
                _b64("hello"), _b64("user_001"), _b64("123"), _b64("a.b"), _b64("-1.2"),
                *others,
                # The feed still reads its cursors of before the codec (the base64 of `txid.seq`).
                *([] if path == "/api/v1/events" else [_b64("1.2")]),
            ]  # fmt: skip
            for value in bad:
                message = await _refused(admin, url, {name: value}, "invalid_request", name)
                assert message.startswith(f"{name}: not a cursor this service issued"), message


async def test_a_cursor_of_one_users_history_or_holds_is_refused_on_another_users(admin, make_user):
    alice, bob = await make_user(GOLD_COINS=5), await make_user(GOLD_COINS=5)
    for user in (alice, bob):
        for _ in range(2):
            await post(admin, "spend", user_id=user, asset_type="GOLD_COINS", amount=1)
            placed = await admin.post(
                "/api/v1/holds",
                headers={"Idempotency-Key": new_key()},
                json={"user_id": user, "asset_type": "GOLD_COINS", "amount": 1},
            )
            assert placed.status_code == 201, placed.text
    for path, params in (("transactions", {}), ("transactions", {"from": EARLIEST}), ("holds", {})):
        first = (await admin.get(f"/api/v1/wallets/{alice}/{path}", params={"limit": 1, **params})).json()
        cursor = first["next_cursor"]
        mine = await admin.get(f"/api/v1/wallets/{alice}/{path}", params={"cursor": cursor, **params})
        assert mine.status_code == 200 and mine.json()["data"], mine.text
        await _refused(
            admin, f"/api/v1/wallets/{bob}/{path}", {"cursor": cursor, **params}, "invalid_request", "cursor"
        )


async def test_the_users_cursor_is_the_one_the_previous_page_gave(admin, make_user):
    for _ in range(3):
        await make_user()
    first = (await admin.get("/api/v1/users", params={"limit": 2})).json()
    second = await admin.get("/api/v1/users", params={"limit": 2, "cursor": first["next_cursor"]})
    assert second.status_code == 200
    assert second.json()["data"][0]["user_id"] > first["data"][-1]["user_id"]
    # A cursor naming the last user's id the way the service once wrote it, or any other string.
    for forged in (_b64(first["data"][-1]["user_id"]), _b64("zzz"), first["next_cursor"] + "A"):
        await _refused(admin, "/api/v1/users", {"cursor": forged}, "invalid_request", "cursor")


async def test_a_feed_cursor_written_before_the_codec_is_still_read_in_its_canonical_form(
    admin, client, make_user
):
    user = await make_user()
    await post(admin, "topup", user_id=user, asset_type="GOLD_COINS", amount=1)
    newest = (await client.get("/api/v1/events", params={"limit": 200})).json()
    while newest["has_more"]:
        newest = (
            await client.get("/api/v1/events", params={"limit": 200, "after": newest["next_cursor"]})
        ).json()
    from wallet.services.events import Position

    position = Position.decode(newest["next_cursor"])
    assert position is not None
    legacy = _b64(f"{position.txid}.{position.seq}")
    same = await client.get("/api/v1/events", params={"after": legacy})
    assert same.status_code == 200 and same.json()["data"] == []
    assert same.json()["next_cursor"] == newest["next_cursor"]  # written in the codec's form
    for forged in (
        _b64(f"0{position.txid}.{position.seq}"),  # a leading zero
        _b64(f"{position.txid}.{position.seq}") + "=",  # padded
        _b64(f"{position.txid}.{position.seq}.1"),
        _b64(f"{2**63}.1"),  # beyond the range of ids
    ):
        await _refused(client, "/api/v1/events", {"after": forged}, "invalid_request", "after")


async def test_a_user_id_no_user_can_have_is_404_naming_it_on_every_read(admin, make_user):
    for user_id in ("a%00b", "has%20space", "x" * 65, "%C3%A9"):
        for path, params in (
            ("balance", {}),
            ("balance", {"as_of": LATEST}),
            ("transactions", {}),
            ("holds", {}),
        ):
            response = await admin.get(f"/api/v1/wallets/{user_id}/{path}", params=params)
            assert response.status_code == 404, (user_id, path, response.text)
            assert (response.json()["error"]["code"], response.json()["error"]["field"]) == (
                "user_not_found",
                "user_id",
            )


async def test_a_malformed_asset_filter_is_refused_naming_it(admin, make_user):
    user = await make_user()
    for path in ("balance", "transactions"):
        for value in ("gold_coins", "A\x00", "G" * 40, ""):
            await _refused(
                admin,
                f"/api/v1/wallets/{user}/{path}",
                {"asset_type": value},
                "validation_error",
                "asset_type",
            )


async def test_a_time_in_a_body_is_read_by_the_same_parser(admin, make_user, pool):
    """A bonus's `expires_at` is read as the times of queries are: each refusal with its reason."""
    from tests.support import ledger_counts

    user = await make_user()
    before = await ledger_counts(pool)
    for value, reason in BAD_TIMES.items():
        response = await admin.post(
            "/api/v1/transactions/bonus",
            headers={"Idempotency-Key": new_key()},
            json={"user_id": user, "asset_type": "GOLD_COINS", "amount": 1, "expires_at": value},
        )
        assert response.status_code == 422, (value, response.text)
        error = response.json()["error"]
        assert (error["code"], error["field"]) == ("validation_error", "expires_at"), (value, error)
        assert reason in error["message"], (value, error)
    assert await ledger_counts(pool) == before
