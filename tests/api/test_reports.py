"""The liability report over HTTP and from the command line: a scripted run of activity on an
asset of its own, against figures worked out by hand, and who may read it."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from typing import Any

import httpx

from tests.support import bearer, db_now, new_key, post, wait_past, wallet_on
from wallet.services.api_keys import create_api_key
from wallet.services.lots import expire_due

REPORT = "/api/v1/reports/liabilities"
TX = "/api/v1/transactions"


def _iso(instant) -> str:
    return instant.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _figures(report: dict[str, Any], asset: str) -> dict[str, int]:
    (mine,) = [a for a in report["assets"] if a["asset_type"] == asset]
    return {k: v for k, v in mine.items() if k != "asset_type"}


async def test_the_report_matches_a_scripted_run_to_the_unit(
    admin, client, pool, settings, make_user, lot_asset
):
    asset = await lot_asset()
    alice, bob = await make_user(), await make_user()
    start = await db_now(pool)
    topup = await post(admin, "topup", user_id=alice, asset_type=asset, amount=1000)
    await post(admin, "bonus", user_id=alice, asset_type=asset, amount=200)
    after_bonus = await db_now(pool)
    spend = await post(
        client, "spend", user_id=alice, asset_type=asset, amount=300
    )  # granted 200, purchased 100
    await post(admin, f"{spend['id']}/reverse", amount=50)  # restores purchased 50 (drawn last)
    # Alice draws purchased 105, Bob gets purchased 100.
    await post(admin, "transfer", from_user_id=alice, to_user_id=bob, asset_type=asset, amount=100, fee=5)
    await post(admin, f"{topup['id']}/reverse", amount=100)
    at = (await db_now(pool)) + timedelta(seconds=1.2)
    await post(admin, "bonus", user_id=bob, asset_type=asset, amount=40, expires_at=at.isoformat())
    await wait_past(pool, at)
    assert (await expire_due(pool, settings)).expired_minor >= 40
    end = await db_now(pool) + timedelta(microseconds=1)

    whole = (
        await admin.get(REPORT, params={"as_of": _iso(end), "from": _iso(start), "to": _iso(end)})
    ).json()
    assert (whole["as_of"], whole["from"], whole["to"]) == (_iso(end), _iso(start), _iso(end))
    figures = _figures(whole, asset)
    assert figures == {
        "outstanding_purchased": 1000 - 100 + 50 - 105 - 100 + 100,  # alice 745, bob 100
        "outstanding_granted": 0,  # alice's 200 spent, bob's 40 expired
        "issued_purchased": 1000,
        "issued_granted": 240,
        "spent": 300,
        "refunded": 50,
        "expired": 40,
        "clawed_back": 100,
        "transfer_fees": 5,
    }
    # The identity of any period: what is held at its end is what was held at its start plus its flows.
    flows = (
        figures["issued_purchased"] + figures["issued_granted"] - figures["spent"] + figures["refunded"]
        - figures["expired"] - figures["clawed_back"] - figures["transfer_fees"]
    )  # fmt: skip
    assert figures["outstanding_purchased"] + figures["outstanding_granted"] == flows
    # It agrees with the balances users see.
    balances = [
        (await client.get(f"/api/v1/wallets/{u}/balance", params={"asset_type": asset})).json()["balances"][0]
        for u in (alice, bob)
    ]
    assert sum(b["purchased"] for b in balances) == figures["outstanding_purchased"]
    assert sum(b["granted"] for b in balances) == figures["outstanding_granted"]

    # As of a moment in the middle: the top-up and the bonus only; a period before anything: nothing.
    middle = _figures((await admin.get(REPORT, params={"as_of": _iso(after_bonus)})).json(), asset)
    assert (middle["outstanding_purchased"], middle["outstanding_granted"]) == (1000, 200)
    early = {"as_of": _iso(start), "from": _iso(start - timedelta(hours=1)), "to": _iso(start)}
    assert set(_figures((await admin.get(REPORT, params=early)).json(), asset).values()) == {0}

    # The command prints the same figures, as JSON and as CSV.
    times = ["--as-of", end.strftime("%Y-%m-%dT%H:%M:%S.%f"), "--from", start.strftime("%Y-%m-%dT%H:%M:%S.%f"),
             "--to", end.strftime("%Y-%m-%dT%H:%M:%S.%f")]  # fmt: skip
    printed = wallet_on(settings.database_url, "report", "liabilities", "--format", "json", *times)
    assert printed.returncode == 0, printed.stderr
    assert _figures(json.loads(printed.stdout), asset) == figures
    printed_csv = wallet_on(settings.database_url, "report", "liabilities", "--format", "csv", *times)
    assert printed_csv.returncode == 0, printed_csv.stderr
    rows = {row["asset_type"]: row for row in csv.DictReader(io.StringIO(printed_csv.stdout))}
    assert {
        k: int(v) for k, v in rows[asset].items() if k not in ("asset_type", "as_of", "from", "to")
    } == figures


async def test_the_report_needs_the_report_or_admin_scope_and_valid_times(app, admin, client, pool):
    async with pool.acquire() as conn:
        token = await create_api_key(conn, "test-report", ["report"])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://wallet.test", headers=bearer(token)
    ) as finance:
        answer = await finance.get(REPORT)
        assert answer.status_code == 200, answer.text
        report = answer.json()
        assert {"as_of", "from", "to", "assets"} <= set(report) and report["from"].endswith(
            "T00:00:00.000000Z"
        )
        refused = await finance.post(
            f"{TX}/topup",
            headers={"Idempotency-Key": new_key()},
            json={"user_id": "user_x", "asset_type": "GOLD_COINS", "amount": 1},
        )
        assert refused.status_code == 403  # a report key writes nothing
    assert (await client.get(REPORT)).status_code == 403  # read, credit, spend: not enough
    for params, field in [
        ({"as_of": "2026-01-01T00:00:00"}, "as_of"),
        ({"from": "yesterday"}, "from"),
        ({"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "from"),
    ]:
        response = await admin.get(REPORT, params=params)
        assert response.status_code == 422, (params, response.text)
        assert response.json()["error"]["field"] == field, (params, response.text)
