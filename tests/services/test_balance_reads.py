"""Balance reads that share a query: each gets exactly its own user's document, as a read alone
would, and no read sees less than every write acknowledged before it was asked."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import orjson

from tests.services.test_group_commit import _histogram
from wallet.services.balance_reads import READS_PER_QUERY, BalanceReader
from wallet.services.wallets import BALANCES_OF_USERS_SQL, balances_json


async def test_concurrent_reads_share_queries_and_each_gets_its_own_document(pool, make_user):
    users = [await make_user(GOLD_COINS=n + 1, DIAMONDS=2 * n + 1) for n in range(30)]
    reader = BalanceReader(pool, max_size=64, max_in_flight=1)
    queries_before, reads_before = _histogram(READS_PER_QUERY)
    asked = [*users, "nobody-at-all", *reversed(users)]
    answers = await asyncio.gather(*(reader.read(user) for user in asked))
    queries_after, reads_after = _histogram(READS_PER_QUERY)
    assert reads_after - reads_before == len(asked)
    assert queries_after - queries_before < len(asked)  # they shared queries
    for user, answer in zip(asked, answers, strict=True):
        if user == "nobody-at-all":
            assert answer is None
            continue
        assert answer is not None
        alone = await balances_json(pool, user, None)
        document = orjson.loads(answer)
        assert document == orjson.loads(alone)
        assert document["user_id"] == user


async def test_no_read_misses_a_write_acknowledged_before_it(pool, make_user, admin):
    """Reads of other users keep a query in flight most of the time, so reads of `user` often
    queue behind one that started before the top-up was acknowledged; each must still see it."""
    user = await make_user()
    others = [await make_user(GOLD_COINS=1) for _ in range(8)]
    reader = BalanceReader(pool, max_size=64, max_in_flight=1)
    stop = asyncio.Event()

    async def background() -> None:
        while not stop.is_set():
            await asyncio.gather(*(reader.read(o) for o in others))

    async def gold(document: str | None) -> Any:
        assert document is not None
        return next(b for b in orjson.loads(document)["balances"] if b["asset_type"] == "GOLD_COINS")[
            "balance"
        ]

    noise = [asyncio.create_task(background()) for _ in range(3)]
    try:
        for expected in range(1, 31):
            response = await admin.post(
                "/api/v1/transactions/topup",
                json={"user_id": user, "asset_type": "GOLD_COINS", "amount": 1},
                headers={"Idempotency-Key": f"read-your-write-{user}-{expected}"},
            )
            assert response.status_code == 201
            assert await gold(await reader.read(user)) == expected
    finally:
        stop.set()
        await asyncio.gather(*noise)


async def test_a_read_that_fails_the_shared_query_fails_alone(pool: asyncpg.Pool, make_user):
    """A user id PostgreSQL refuses (a NUL byte) fails the statement it shares: the others of that
    statement are read again alone and answered."""
    first, second, third = [await make_user(GOLD_COINS=n) for n in (1, 2, 3)]
    reader = BalanceReader(pool, max_size=64, max_in_flight=1)
    # The first read's query runs alone; the three after it wait and share the next one.
    results = await asyncio.gather(
        reader.read(first), reader.read(second), reader.read("bad\x00id"), reader.read(third),
        return_exceptions=True,
    )  # fmt: skip
    assert isinstance(results[2], asyncpg.PostgresError)
    for user, result in zip((first, second, third), (results[0], results[1], results[3]), strict=True):
        assert isinstance(result, str)
        assert orjson.loads(result)["user_id"] == user


async def test_the_inlined_split_agrees_with_the_lots_function_for_every_account(pool, make_user, admin):
    """The balance query inlines wallet_account_lots_now's answer for accounts whose lots do not
    expire (and for empty and indebted ones); for every account in the database, in whatever
    state the tests before left it, both say the same."""
    await make_user()  # at least one empty account
    await make_user(GOLD_COINS=7)
    users = [r["id"] for r in await pool.fetch("SELECT id FROM users ORDER BY id LIMIT 5000")]
    rows = await pool.fetch(BALANCES_OF_USERS_SQL, users)
    shown = {
        (user, b["asset_type"]): (b["balance"], b["purchased"], b["granted"], b["next_expiry"])
        for user, row in zip(users, rows, strict=True)
        for b in orjson.loads(row["body"])["balances"]
    }
    expected = await pool.fetch(
        """SELECT a.user_id, a.asset_code, f.balance_minor, f.purchased_minor, f.granted_minor, f.next_expiry::text
             FROM accounts a
            CROSS JOIN LATERAL (SELECT CASE WHEN a.held_minor = 0 THEN 0 ELSE a.held_minor - coalesce((
                                    SELECT sum(h.amount_minor) FROM holds h WHERE h.account_id = a.id
                                       AND h.status = 'open' AND h.expires_at <= clock_timestamp()), 0) END AS held) AS h
            CROSS JOIN LATERAL wallet_account_lots_now(a.id, a.balance_minor, h.held::bigint, a.lots_expire_at) AS f
            WHERE a.kind = 'user' AND a.user_id = ANY ($1)""",
        users,
    )
    assert len(expected) == len(shown)
    kinds = set()
    for r in expected:
        next_expiry = orjson.loads(r["next_expiry"]) if r["next_expiry"] else None
        key = (r["user_id"], r["asset_code"])
        assert shown[key] == (r["balance_minor"], r["purchased_minor"], r["granted_minor"], next_expiry), key
        kinds.add("debt" if r["balance_minor"] < 0 else "empty" if r["balance_minor"] == 0 else "funded")
    assert {"empty", "funded"} <= kinds
