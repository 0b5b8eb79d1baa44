"""The ledger operations under real concurrency: many HTTP requests at once through the ASGI app,
each on its own pooled PostgreSQL connection (the app's pool of 24), nothing mocked.

Each test states what a caller would notice if a race went wrong: a hold both captured and
voided, refunds adding up to more than was spent, credits spent twice (once by a spend, once by
a hold), a deadlock or lost credits when transfers cross, a statement that does not add up, and
books that do not balance afterwards (`wallet verify`).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import asyncpg
import httpx

from tests.support import new_key
from wallet.services.verify import verify_ledger

HOLDS = "/api/v1/holds"
TX = "/api/v1/transactions"
GOLD = "GOLD_COINS"


# --- helpers ----------------------------------------------------------------------------------


def _code(response: httpx.Response) -> str | None:
    if response.status_code < 400:
        return None
    return response.json()["error"]["code"]


async def _gold(client: httpx.AsyncClient, user: str, **params: str) -> dict[str, Any]:
    response = await client.get(f"/api/v1/wallets/{user}/balance", params=params)
    assert response.status_code == 200, response.text
    return next(b for b in response.json()["balances"] if b["asset_type"] == GOLD)


async def _post(client: httpx.AsyncClient, path: str, body: dict | None = None, key: str | None = None):
    return await client.post(path, headers={"Idempotency-Key": key or new_key()}, json=body)


async def _ok(client: httpx.AsyncClient, path: str, body: dict | None = None) -> dict[str, Any]:
    response = await _post(client, path, body)
    assert response.status_code in (200, 201), response.text
    return response.json()


async def _history(client: httpx.AsyncClient, user: str) -> list[dict[str, Any]]:
    """The user's whole history, oldest first."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 200}
        if cursor:
            params["cursor"] = cursor
        response = await client.get(f"/api/v1/wallets/{user}/transactions", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        items.extend(page["data"])
        cursor = page["next_cursor"]
        if not cursor:
            return list(reversed(items))


async def _assert_books_balance(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        report = await verify_ledger(conn)
    assert report.clean, report.render()


def _no_server_errors(responses: list[httpx.Response]) -> None:
    broken = [(r.request.url.path, r.status_code, r.text[:200]) for r in responses if r.status_code >= 500]
    assert not broken, broken


# --- a. capture against void ------------------------------------------------------------------


async def test_capture_and_void_raced_on_each_hold_exactly_one_wins(client, make_user, pool):
    """5 users with 4 holds each (so races also queue on the same account); for every hold a
    capture (half of them partial) and a void fire at once. Exactly one wins per hold, the loser
    names the winner, and balance/held/available are what the winners imply."""
    users = [await make_user(GOLD_COINS=1000) for _ in range(5)]
    holds: list[tuple[str, dict[str, Any], int | None]] = []  # user, hold, capture amount (None: all)
    for user in users:
        for n, amount in enumerate((100, 150, 200, 250)):
            hold = await _ok(
                client,
                HOLDS,
                {"user_id": user, "asset_type": GOLD, "amount": amount, "expires_in_seconds": 3600},
            )
            assert hold["status"] == "open" and hold["amount"] == amount
            holds.append((user, hold, amount - 37 if n % 2 else None))
    for user in users:
        gold = await _gold(client, user)
        assert (gold["balance"], gold["held"], gold["available"]) == (1000, 700, 300)

    capture_keys = [new_key() for _ in holds]
    void_keys = [new_key() for _ in holds]
    calls = []
    for (_, hold, amount), capture_key, void_key in zip(holds, capture_keys, void_keys, strict=True):
        capture_body = {"amount": amount} if amount is not None else None
        calls.append(_post(client, f"{HOLDS}/{hold['id']}/capture", capture_body, capture_key))
        calls.append(_post(client, f"{HOLDS}/{hold['id']}/void", None, void_key))
    responses = await asyncio.gather(*calls)
    _no_server_errors(responses)

    spent: Counter[str] = Counter()
    for (user, hold, amount), capture, void in zip(holds, responses[0::2], responses[1::2], strict=True):
        outcome = (capture.status_code, void.status_code)
        assert outcome in ((201, 409), (409, 200)), (capture.text, void.text)
        shown = (await client.get(f"{HOLDS}/{hold['id']}")).json()
        if capture.status_code == 201:
            transaction = capture.json()
            assert _code(void) == "hold_already_captured", void.text
            assert transaction["type"] == "capture" and transaction["hold_id"] == hold["id"]
            assert transaction["user_id"] == user
            assert transaction["amount"] == (amount if amount is not None else hold["amount"])
            assert shown["status"] == "captured"
            assert shown["captured_amount"] == transaction["amount"]
            assert shown["capture_transaction_id"] == transaction["id"]
            spent[user] += transaction["amount"]
        else:
            assert _code(capture) == "hold_already_voided", capture.text
            assert void.json()["status"] == "voided" and void.json()["id"] == hold["id"]
            assert shown["status"] == "voided" and shown["captured_amount"] is None

    for user in users:
        gold = await _gold(client, user)
        assert (gold["balance"], gold["held"], gold["available"]) == (
            1000 - spent[user],
            0,
            1000 - spent[user],
        )
        open_holds = (await client.get(f"/api/v1/wallets/{user}/holds")).json()["data"]
        assert open_holds == []
        captures = [t for t in await _history(client, user) if t["type"] == "capture"]
        assert sum(t["amount"] for t in captures) == spent[user]

    # Retrying either request with its key answers what it answered the first time, verbatim.
    retries = await asyncio.gather(
        *[
            _post(
                client,
                f"{HOLDS}/{hold['id']}/capture",
                {"amount": amount} if amount is not None else None,
                ck,
            )
            for (_, hold, amount), ck in zip(holds, capture_keys, strict=True)
        ],
        *[
            _post(client, f"{HOLDS}/{hold['id']}/void", None, vk)
            for (_, hold, _), vk in zip(holds, void_keys, strict=True)
        ],
    )
    for i, (first_capture, first_void) in enumerate(zip(responses[0::2], responses[1::2], strict=True)):
        for first, again in ((first_capture, retries[i]), (first_void, retries[len(holds) + i])):
            assert again.status_code == first.status_code
            assert again.json() == first.json()
            assert again.headers.get("Idempotent-Replayed") == "true"
    await _assert_books_balance(pool)


# --- b. partial reversals racing on one original ----------------------------------------------


async def test_racing_partial_refunds_and_clawbacks_never_exceed_their_originals(
    client, admin, make_user, pool
):
    """A spend of 100 and a bonus of 100, each hit by 30 concurrent reversals of 7 at once (60
    requests): exactly 14 of each succeed (98), the rest are refused with
    amount_exceeds_reversible, the originals show reversed_amount 98, and the balance moved by
    +98 -98."""
    user = await make_user(GOLD_COINS=200)
    spend = await _ok(client, f"{TX}/spend", {"user_id": user, "asset_type": GOLD, "amount": 100})
    bonus = await _ok(admin, f"{TX}/bonus", {"user_id": user, "asset_type": GOLD, "amount": 100})
    assert (await _gold(client, user))["balance"] == 200

    calls = []
    for i in range(60):
        original = spend if i % 2 == 0 else bonus
        calls.append(_post(admin, f"{TX}/{original['id']}/reverse", {"amount": 7, "reason": f"race {i}"}))
    responses = await asyncio.gather(*calls)
    _no_server_errors(responses)

    for original, kind in ((spend, "refund"), (bonus, "clawback")):
        mine = responses[0::2] if kind == "refund" else responses[1::2]
        done = [r.json() for r in mine if r.status_code == 201]
        refused = [r for r in mine if r.status_code != 201]
        assert len(done) == 14, [r.text for r in mine]
        assert {(r.status_code, _code(r)) for r in refused} == {(409, "amount_exceeds_reversible")}
        assert all(t["type"] == kind and t["reverses"] == original["id"] and t["amount"] == 7 for t in done)
        assert len({t["id"] for t in done}) == 14
        shown = (await client.get(f"{TX}/{original['id']}")).json()
        assert shown["reversed_amount"] == sum(t["amount"] for t in done) == 98
    gold = await _gold(client, user)
    assert (gold["balance"], gold["held"], gold["available"], gold["debt"]) == (200, 0, 200, 0)

    # What is left (2 of each) can still be reversed, exactly once.
    last = await asyncio.gather(*[_post(admin, f"{TX}/{spend['id']}/reverse", {}) for _ in range(5)])
    assert sorted(r.status_code for r in last) == [201, 409, 409, 409, 409]
    assert next(r.json() for r in last if r.status_code == 201)["amount"] == 2
    assert (await client.get(f"{TX}/{spend['id']}")).json()["reversed_amount"] == 100
    await _assert_books_balance(pool)


async def test_a_full_reversal_racing_partial_ones_reverses_exactly_the_original(
    admin, client, make_user, pool
):
    """One "reverse whatever is left" (no amount) among 20 partial refunds of 9 of a spend of 100:
    whatever the interleaving, the refunds add up to exactly 100 and the full one took the rest."""
    for _ in range(3):
        user = await make_user(GOLD_COINS=100)
        spend = await _ok(client, f"{TX}/spend", {"user_id": user, "asset_type": GOLD, "amount": 100})
        calls = [_post(admin, f"{TX}/{spend['id']}/reverse", {"amount": 9}) for _ in range(20)]
        calls.insert(10, _post(admin, f"{TX}/{spend['id']}/reverse", {"reason": "the rest"}))
        responses = await asyncio.gather(*calls)
        _no_server_errors(responses)
        full = responses[10]
        partial = responses[:10] + responses[11:]
        assert full.status_code == 201, full.text
        partial_done = [r.json()["amount"] for r in partial if r.status_code == 201]
        assert all(a == 9 for a in partial_done)
        assert full.json()["amount"] == 100 - sum(partial_done)
        assert {_code(r) for r in partial if r.status_code != 201} <= {"amount_exceeds_reversible"}
        assert (await client.get(f"{TX}/{spend['id']}")).json()["reversed_amount"] == 100
        assert (await _gold(client, user))["balance"] == 100
    await _assert_books_balance(pool)


# --- c. a spend, a hold and a transfer racing for the last credits ----------------------------


async def test_a_spend_a_hold_and_a_transfer_racing_for_the_last_credits(client, admin, make_user, pool):
    """12 users with 10 credits each; for each, a spend of 10, a hold of 10 and a transfer of 10
    fire at once, while the balance is read over and over. Exactly one of the three gets the
    credits, the others are refused insufficient_funds, and no read ever shows negative
    available or more held than the balance."""
    sink = await make_user()
    users = [await make_user(GOLD_COINS=10) for _ in range(12)]
    calls = []
    for user in users:
        body = {"user_id": user, "asset_type": GOLD, "amount": 10}
        calls.append(_post(client, f"{TX}/spend", body))
        calls.append(_post(client, HOLDS, {**body, "expires_in_seconds": 3600}))
        calls.append(
            _post(
                admin,
                f"{TX}/transfer",
                {"from_user_id": user, "to_user_id": sink, "asset_type": GOLD, "amount": 10},
            )
        )

    observed: list[dict[str, Any]] = []

    async def watch(user: str) -> None:
        for _ in range(8):
            observed.append(await _gold(client, user))
            await asyncio.sleep(0)

    responses = await asyncio.gather(*calls, *[watch(u) for u in users])
    responses = responses[: len(calls)]
    _no_server_errors(responses)
    for gold in observed:
        assert gold["available"] >= 0 and 0 <= gold["held"] <= gold["balance"], gold

    winners = Counter()
    for i, user in enumerate(users):
        spend, hold, transfer = responses[3 * i : 3 * i + 3]
        statuses = [spend.status_code, hold.status_code, transfer.status_code]
        assert sorted(statuses) == [201, 409, 409], [spend.text, hold.text, transfer.text]
        assert {_code(r) for r in (spend, hold, transfer) if r.status_code == 409} == {"insufficient_funds"}
        gold = await _gold(client, user)
        assert gold["available"] == 0
        if hold.status_code == 201:
            winners["hold"] += 1
            assert (gold["balance"], gold["held"]) == (10, 10)
        else:
            winners["spend" if spend.status_code == 201 else "transfer"] += 1
            assert (gold["balance"], gold["held"]) == (0, 0)
    assert sum(winners.values()) == len(users)
    assert (await _gold(client, sink))["balance"] == 10 * winners["transfer"]
    await _assert_books_balance(pool)


# --- d. transfers crossing in both directions -------------------------------------------------


async def test_crossing_transfers_with_fees_neither_deadlock_nor_lose_credits(admin, client, make_user, pool):
    """4 users with 1000 each; 300 transfers between random pairs (both directions of every pair),
    with fees of 0-3, all at once. Every request is answered 201 or 409 insufficient_funds (no
    503 from a lock timeout, no 500 from a deadlock); the credits of the four plus the fees
    collected are still 4000; no balance is negative; every transfer is in both users' history;
    and each user's history is a statement that adds up, in order, to the balance shown, with
    balances as of any of its instants matching it."""
    users = [await make_user(GOLD_COINS=1000) for _ in range(4)]
    rng = random.Random(20240607)
    bodies = []
    for i in range(300):
        sender, receiver = rng.sample(users, 2)
        if i % 2:  # every pair also crosses the other way, right next to it
            sender, receiver = bodies[-1]["to_user_id"], bodies[-1]["from_user_id"]
        bodies.append(
            {
                "from_user_id": sender,
                "to_user_id": receiver,
                "asset_type": GOLD,
                "amount": rng.randint(1, 250),
                "fee": rng.randint(0, 3),
            }
        )
    responses = await asyncio.gather(*[_post(admin, f"{TX}/transfer", body) for body in bodies])
    _no_server_errors(responses)
    statuses = Counter((r.status_code, _code(r)) for r in responses)
    assert set(statuses) <= {(201, None), (409, "insufficient_funds")}, statuses
    assert statuses[(201, None)] > 150, statuses

    done = [(body, r.json()) for body, r in zip(bodies, responses, strict=True) if r.status_code == 201]
    for body, transfer in done:
        assert transfer["type"] == "transfer"
        assert transfer["user_id"] == body["from_user_id"]
        assert transfer["counterparty_user_id"] == body["to_user_id"]
        assert (transfer["amount"], transfer["fee"]) == (body["amount"], body["fee"])
    fees = sum(body["fee"] for body, _ in done)
    revenue = await pool.fetchval(
        "SELECT coalesce(sum(e.amount_minor), 0) FROM ledger_entries e JOIN accounts a ON a.id = e.account_id"
        " WHERE a.system_code = 'SYSTEM_REVENUE' AND e.transaction_id = ANY($1::uuid[])",
        [transfer["id"] for _, transfer in done],
    )
    assert revenue == fees

    balances = {u: await _gold(client, u) for u in users}
    assert all(b["balance"] >= 0 and b["held"] == 0 for b in balances.values()), balances
    assert sum(b["balance"] for b in balances.values()) + fees == 4 * 1000

    for user in users:
        history = await _history(client, user)
        ids = {t["id"] for t in history}
        mine = {t["id"] for body, t in done if user in (body["from_user_id"], body["to_user_id"])}
        assert mine <= ids
        # The statement adds up, in the order the history lists it.
        running, times = 0, []
        for t in history:
            if t["type"] == "topup":
                delta, after = t["amount"], t["balance_after"]
            elif t["user_id"] == user:
                delta, after = -(t["amount"] + t["fee"]), t["balance_after"]
            else:
                assert t["counterparty_user_id"] == user
                delta, after = t["amount"], t["counterparty_balance_after"]
            running += delta
            assert after == running, (user, t)
            times.append((t["created_at"], after))
        assert running == balances[user]["balance"]
        # Stamps follow the order postings were applied, so "as of" any of them is that balance.
        assert [s for s, _ in times] == sorted(s for s, _ in times)
        for stamp, _ in [*rng.sample(times, 5), times[-1]]:
            expected = [a for s, a in times if s <= stamp][-1]
            as_of = await _gold(client, user, as_of=stamp.replace("Z", "+00:00"))
            assert as_of["balance"] == expected, (user, stamp)
    await _assert_books_balance(pool)


# --- e. everything at once, then the audit ----------------------------------------------------


async def test_every_operation_at_once_leaves_books_that_verify_clean(admin, client, make_user, pool):
    """Spends, top-ups, holds, captures, voids, refunds, clawbacks and transfers of the same few
    users all in one burst; then `wallet verify` finds nothing, and every balance the API shows
    is the sum of that user's ledger entries, with held the sum of their open holds."""
    users = [await make_user(GOLD_COINS=500) for _ in range(4)]
    rng = random.Random(99)
    holds = [
        await _ok(client, HOLDS, {"user_id": u, "asset_type": GOLD, "amount": 40, "expires_in_seconds": 3600})
        for u in users
        for _ in range(3)
    ]
    spends = [
        await _ok(client, f"{TX}/spend", {"user_id": u, "asset_type": GOLD, "amount": 30}) for u in users
    ]
    topups = [
        await _ok(admin, f"{TX}/topup", {"user_id": u, "asset_type": GOLD, "amount": 50}) for u in users
    ]
    calls = []
    for hold in holds:
        calls.append(_post(client, f"{HOLDS}/{hold['id']}/{rng.choice(['capture', 'void'])}"))
        calls.append(_post(client, f"{HOLDS}/{hold['id']}/{rng.choice(['capture', 'void'])}"))
    for original in spends + topups:
        calls.extend(_post(admin, f"{TX}/{original['id']}/reverse", {"amount": 11}) for _ in range(4))
    for _ in range(80):
        a, b = rng.sample(users, 2)
        kind = rng.choice(["spend", "topup", "transfer", "hold"])
        if kind == "transfer":
            body = {
                "from_user_id": a,
                "to_user_id": b,
                "asset_type": GOLD,
                "amount": rng.randint(1, 60),
                "fee": 1,
            }
            calls.append(_post(admin, f"{TX}/transfer", body))
        elif kind == "hold":
            calls.append(
                _post(client, HOLDS, {"user_id": a, "asset_type": GOLD, "amount": rng.randint(1, 60)})
            )
        else:
            calls.append(
                _post(admin, f"{TX}/{kind}", {"user_id": a, "asset_type": GOLD, "amount": rng.randint(1, 60)})
            )
    rng.shuffle(calls)
    responses = await asyncio.gather(*calls)
    _no_server_errors(responses)
    allowed = {
        None,
        "insufficient_funds",
        "hold_already_captured",
        "hold_already_voided",
        "amount_exceeds_reversible",
        "amount_exceeds_clawable",  # a clawback once the top-up's credits were spent
    }
    assert {_code(r) for r in responses} <= allowed, Counter(_code(r) for r in responses)

    await _assert_books_balance(pool)
    for user in users:
        gold = await _gold(client, user)
        row = await pool.fetchrow(
            "SELECT (SELECT coalesce(sum(e.amount_minor), 0) FROM ledger_entries e WHERE e.account_id = a.id),"
            "       (SELECT coalesce(sum(h.amount_minor), 0) FROM holds h"
            "         WHERE h.account_id = a.id AND h.status = 'open')"
            " FROM accounts a WHERE a.user_id = $1 AND a.asset_code = $2",
            user,
            GOLD,
        )
        assert (gold["balance"], gold["held"]) == (row[0], row[1])
        assert gold["available"] == gold["balance"] - gold["held"] >= 0
