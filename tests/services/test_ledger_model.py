"""Property test: any sequence of top-ups, bonuses, spends and retries leaves the ledger exactly
where a trivial in-memory model says it should be."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

OPERATION = st.tuples(
    st.sampled_from(["topup", "bonus", "spend"]),
    st.integers(min_value=0, max_value=2),  # which user
    st.sampled_from(["GOLD_COINS", "DIAMONDS"]),
    st.integers(min_value=1, max_value=1_000),
    st.booleans(),  # retry an earlier key instead
)


async def _run(database_url: str, operations: list[tuple[str, int, str, int, bool]]) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        api_key_id = await conn.fetchval("SELECT id FROM api_keys WHERE name = 'test-all'")
        users = [f"prop_{uuid.uuid4().hex[:10]}" for _ in range(3)]
        for user in users:
            await conn.execute("SELECT wallet_ensure_user($1, 'Prop')", user)
        model: dict[tuple[str, str], int] = {}
        sent: list[tuple[str, tuple, str, str]] = []  # key, args, outcome, body
        for type_, user_index, asset, amount, retry in operations:
            if retry and sent:
                key, args, status, body = sent[len(sent) // 2]
                row = await conn.fetchrow(
                    "SELECT * FROM wallet_post_transaction($1, $2, $3, $4, $5, $6, NULL, '{}')",
                    api_key_id,
                    key,
                    *args,
                )
                assert row["replayed"]
                assert row["outcome"] == status
                assert row["body"] == body
                continue
            user = users[user_index]
            key = uuid.uuid4().hex
            args = (type_, user, asset, amount)
            row = await conn.fetchrow(
                "SELECT * FROM wallet_post_transaction($1, $2, $3, $4, $5, $6, NULL, '{}')",
                api_key_id,
                key,
                *args,
            )
            balance = model.get((user, asset), 0)
            if type_ == "spend" and amount > balance:
                assert row["outcome"] == "insufficient_funds"
            else:
                assert row["outcome"] == "posted"
                balance += -amount if type_ == "spend" else amount
                model[(user, asset)] = balance
                assert json.loads(row["body"])["balance_after"] == balance
            sent.append((key, args, row["outcome"], row["body"]))
        rows = await conn.fetch(
            "SELECT a.user_id, a.asset_code, a.balance_minor, coalesce(sum(e.amount_minor), 0) AS ledger"
            " FROM accounts a LEFT JOIN ledger_entries e ON e.account_id = a.id"
            " WHERE a.user_id = ANY($1) GROUP BY a.id",
            users,
        )
        for row in rows:
            expected = model.get((row["user_id"], row["asset_code"]), 0)
            assert row["balance_minor"] == row["ledger"] == expected
    finally:
        await conn.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=st.lists(OPERATION, min_size=1, max_size=25))
def test_ledger_matches_a_simple_model(database_url, keys, operations):
    asyncio.run(_run(database_url, operations))
