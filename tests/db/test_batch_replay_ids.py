"""Migration 0016: a posted batch's idempotency record keeps its transactions' ids, not a copy of
its answer, and a replay renders the answer again from the stored rows: the same bytes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from tests.support import new_key

BATCH = "/api/v1/transactions/batch"


async def _record(pool: asyncpg.Pool, key: str) -> asyncpg.Record:
    record = await pool.fetchrow(
        "SELECT outcome, response_body, transaction_id, transaction_ids, created_at FROM idempotency_keys"
        " WHERE key = $1",
        key,
    )
    assert record is not None
    return record


async def test_a_posted_batch_keeps_its_ids_and_replays_the_same_bytes(admin, pool, make_user):
    alice, bob = await make_user(GOLD_COINS=10), await make_user()
    request = {
        "operations": [
            {
                "type": "spend",
                "user_id": alice,
                "asset_type": "GOLD_COINS",
                "amount": 4,
                "metadata": {"b": 1.10},
            },
            {
                "type": "transfer",
                "user_id": alice,
                "to_user_id": bob,
                "asset_type": "GOLD_COINS",
                "amount": 3,
                "fee": 1,
            },
            {"type": "topup", "user_id": bob, "asset_type": "GOLD_COINS", "amount": 7, "description": "pack"},
        ]
    }
    key = new_key()
    posted = await admin.post(BATCH, json=request, headers={"Idempotency-Key": key})
    assert posted.status_code == 201, posted.text
    ids = [t["id"] for t in posted.json()["transactions"]]
    record = await _record(pool, key)
    assert record["outcome"] == "posted"
    assert [str(i) for i in record["transaction_ids"]] == ids
    assert record["response_body"] is None and record["transaction_id"] is None
    assert record["created_at"] is not None  # a batch record keeps its own time, for the prune

    # Later postings and a refund of the spend change what GET shows, never the replay.
    refund = await admin.post(
        f"/api/v1/transactions/{ids[0]}/reverse", json={"amount": 2}, headers={"Idempotency-Key": new_key()}
    )
    assert refund.status_code == 201, refund.text
    replay = await admin.post(BATCH, json=request, headers={"Idempotency-Key": key})
    assert replay.status_code == 201
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.content == posted.content
    assert (await admin.get(f"/api/v1/transactions/{ids[0]}")).json()["reversed_amount"] == 2


async def test_a_batch_record_stored_with_its_body_replays_it_verbatim(admin, pool, make_user):
    """Records written before 0016 (and batches whose lots name an expiry) keep their body."""
    user = await make_user()
    request = {"operations": [{"type": "topup", "user_id": user, "asset_type": "GOLD_COINS", "amount": 5}]}
    key = new_key()
    posted = await admin.post(BATCH, json=request, headers={"Idempotency-Key": key})
    assert posted.status_code == 201
    # As an earlier revision stored it: the answer as a body, no ids.
    await pool.execute(
        "UPDATE idempotency_keys SET response_body = jsonb_build_object('transactions',"
        " wallet_transactions_document(transaction_ids, true)), transaction_ids = NULL WHERE key = $1",
        key,
    )
    replay = await admin.post(BATCH, json=request, headers={"Idempotency-Key": key})
    assert replay.status_code == 201 and replay.content == posted.content


async def test_a_batch_whose_lots_name_an_expiry_keeps_its_answer(admin, pool, make_user):
    user = await make_user()
    expires_at = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    request = {
        "operations": [
            {
                "type": "bonus",
                "user_id": user,
                "asset_type": "GOLD_COINS",
                "amount": 5,
                "expires_at": expires_at,
            },
        ]
    }
    key = new_key()
    posted = await admin.post(BATCH, json=request, headers={"Idempotency-Key": key})
    assert posted.status_code == 201, posted.text
    record = await _record(pool, key)
    assert record["transaction_ids"] is None
    assert (
        json.loads(record["response_body"])["transactions"][0]["id"] == posted.json()["transactions"][0]["id"]
    )
    replay = await admin.post(BATCH, json=request, headers={"Idempotency-Key": key})
    assert replay.content == posted.content


async def test_a_refused_batch_keeps_its_error(admin, pool, make_user):
    user = await make_user(GOLD_COINS=1)
    request = {"operations": [{"type": "spend", "user_id": user, "asset_type": "GOLD_COINS", "amount": 2}]}
    key = new_key()
    refused = await admin.post(BATCH, json=request, headers={"Idempotency-Key": key})
    assert refused.status_code == 409
    record = await _record(pool, key)
    assert record["outcome"] == "insufficient_funds" and record["transaction_ids"] is None
    replay = await admin.post(BATCH, json=request, headers={"Idempotency-Key": key})
    assert replay.status_code == 409 and replay.content == refused.content


async def test_the_database_refuses_a_malformed_batch_record(pool):
    api_key_id = await pool.fetchval("SELECT id FROM api_keys WHERE name = 'test-all'")
    some_id = (
        await pool.fetchval("SELECT id FROM transactions LIMIT 1") or "00000000-0000-7000-8000-000000000000"
    )
    for outcome, body, ids in (
        ("insufficient_funds", None, [some_id]),  # only a posted answer
        ("posted", '{"transactions": []}', [some_id]),  # ids or a body, not both
        ("posted", None, []),  # at least one
        ("posted", None, [some_id, None]),  # no hole
    ):
        with pytest.raises(asyncpg.CheckViolationError) as refused:
            await pool.execute(
                "INSERT INTO idempotency_keys (api_key_id, key, request_sha256, outcome, response_body,"
                " transaction_ids, created_at) VALUES ($1, $2, sha256('a'), $3, $4::jsonb, $5::uuid[], now())",
                api_key_id,
                new_key(),
                outcome,
                body,
                ids,
            )
        assert refused.value.constraint_name == "idempotency_keys_batch_ids", (outcome, body, ids)
