"""Demo and reference data: the three assets, the system accounts, Alice and Bob.

Initial balances are posted as bonus transactions through the same database function as any
HTTP write, under fixed idempotency keys, so running the seed twice changes nothing and the books
balance from the first row. `seed.sql` at the repository root does the same through psql; a test
checks that both give identical balances.
"""

from __future__ import annotations

import asyncpg

from wallet.domain import errors
from wallet.domain.rules import TransactionType

ASSET_TYPES: list[tuple[str, str, int]] = [
    ("GOLD_COINS", "Gold Coins", 0),
    ("DIAMONDS", "Diamonds", 0),
    ("LOYALTY_POINTS", "Loyalty Points", 0),
]

DEMO_USERS: list[tuple[str, str, dict[str, int]]] = [
    ("user_001", "Alice", {"GOLD_COINS": 1000, "DIAMONDS": 50, "LOYALTY_POINTS": 200}),
    ("user_002", "Bob", {"GOLD_COINS": 500, "DIAMONDS": 20, "LOYALTY_POINTS": 100}),
]

# The caller that owns seed transactions. It is revoked from birth and its hash matches no
# `wk_` token, so nobody can authenticate as it.
SEED_API_KEY_NAME = "wallet-seed"
SEED_API_KEY_HASH_INPUT = "wallet-seed (internal, cannot authenticate)"
SEED_DESCRIPTION = "Initial balance (seed)"


async def seed_reference_data(conn: asyncpg.Connection) -> None:
    """Asset types and system accounts only: what every deployment needs."""
    for code, name, scale in ASSET_TYPES:
        await conn.execute("SELECT wallet_ensure_asset($1, $2, $3::smallint)", code, name, scale)


async def seed_demo_data(conn: asyncpg.Connection) -> None:
    """Reference data, Alice and Bob, and their initial balances (each must post or replay)."""
    async with conn.transaction():
        await seed_reference_data(conn)
        seed_key_id = await conn.fetchval(
            """
            WITH inserted AS (
                INSERT INTO api_keys (name, key_prefix, key_sha256, scopes, revoked_at)
                VALUES ($1, 'internal', sha256(convert_to($2, 'UTF8')), '{admin}', now())
                ON CONFLICT (key_sha256) DO NOTHING RETURNING id)
            SELECT id FROM inserted
            UNION ALL SELECT id FROM api_keys WHERE key_sha256 = sha256(convert_to($2, 'UTF8'))
            """,
            SEED_API_KEY_NAME,
            SEED_API_KEY_HASH_INPUT,
        )
        for user_id, name, _ in DEMO_USERS:
            await conn.execute("SELECT wallet_ensure_user($1, $2)", user_id, name)
    for user_id, _, balances in DEMO_USERS:
        for asset_code, amount_minor in balances.items():
            key = f"seed:{user_id}:{asset_code}"
            outcome = await conn.fetchval(
                "SELECT outcome FROM wallet_post_transaction($1, $2, $3, $4, $5, $6, $7, '{}'::jsonb)",
                seed_key_id,
                key,
                TransactionType.BONUS.value,
                user_id,
                asset_code,
                amount_minor,
                SEED_DESCRIPTION,
            )
            assert outcome == errors.POSTED.code, (key, outcome)
