"""Reads of a user's wallet: balances (now or as of a time) and transaction history.

Both documents are rendered to JSON by PostgreSQL and passed through as text: the history reuses
`wallet_transaction_json`, so an item in a page is the same document a write returned.

Balances as of a time come from the ledger, not from the cached balance: the balance after the
account's newest posting stamped at or before that instant (postings are stamped under the
account's row lock, so their times follow the order they were applied): found by a search over
the (user, asset, seq) index (wallet_account_seq_at: a few descents, at most twice log2 of the
seq span, whatever the length of the history), and for transfers received by one descent of the
counterparty's (user, asset, created_at, seq) index.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg
import orjson

from wallet.domain import errors
from wallet.domain.rules import TransactionType
from wallet.domain.times import EARLIEST, LATEST, api_time, check_period
from wallet.services.pagination import CursorList, decode_int_cursor, encode_int_cursor


# Now: the cached balance less what of it has expired (as if the expiry had run this instant,
# see wallet_account_lots_now), split by origin, and held without the open holds already past
# their expiry (the cached held_minor may include them until the database releases them; the
# probe runs only for accounts that hold something).
def _balances_sql(user: str, asset: str) -> str:
    """The balances document of the user `user` (an SQL expression), of asset `asset` or all (NULL)."""
    return f"""
SELECT jsonb_build_object(
    'user_id', u.id,
    'as_of', NULL,
    'balances', coalesce((
        SELECT jsonb_agg(jsonb_build_object(
                   'asset_type', a.asset_code,
                   'name', t.name,
                   'scale', t.scale,
                   'balance', l.balance_minor,
                   'held', a.held,
                   'available', l.balance_minor - a.held,
                   'debt', greatest(-l.balance_minor, 0),
                   'purchased', l.purchased_minor,
                   'granted', l.granted_minor,
                   'next_expiry', l.next_expiry) ORDER BY a.asset_code)
        FROM (SELECT x.id, x.asset_code, x.balance_minor, x.lots_expire_at,
                     CASE WHEN x.held_minor = 0 THEN 0
                          ELSE x.held_minor - coalesce((
                              SELECT sum(h.amount_minor) FROM holds h
                               WHERE h.account_id = x.id AND h.status = 'open'
                                 AND h.expires_at <= clock_timestamp()), 0)
                     END AS held
                FROM accounts x
               WHERE x.user_id = u.id AND ({asset} IS NULL OR x.asset_code = {asset})) AS a
        CROSS JOIN LATERAL (
            -- Inlined for the usual account (nothing expires, or nothing held: in debt or empty),
            -- what wallet_account_lots_now answers there; that function only for an account with
            -- expiring lots. The call per account had been most of a balance read's database CPU.
            SELECT a.balance_minor,
                   CASE WHEN a.balance_minor <= 0 THEN a.balance_minor ELSE s.purchased_minor END,
                   CASE WHEN a.balance_minor <= 0 THEN 0 ELSE s.granted_minor END,
                   NULL::jsonb
              FROM (SELECT coalesce(sum(cl.remaining_minor) FILTER (WHERE cl.origin = 'purchased'), 0) AS purchased_minor,
                           coalesce(sum(cl.remaining_minor) FILTER (WHERE cl.origin = 'granted'), 0) AS granted_minor
                      FROM credit_lots cl
                     WHERE cl.account_id = a.id AND cl.remaining_minor > 0 AND a.balance_minor > 0) AS s
             WHERE a.lots_expire_at IS NULL OR a.balance_minor <= 0
            UNION ALL
            SELECT f.balance_minor, f.purchased_minor, f.granted_minor, f.next_expiry
              FROM wallet_account_lots_now(a.id, a.balance_minor, a.held::bigint, a.lots_expire_at) AS f
             WHERE a.lots_expire_at IS NOT NULL AND a.balance_minor > 0
        ) AS l(balance_minor, purchased_minor, granted_minor, next_expiry)
        JOIN asset_types t ON t.code = a.asset_code), '[]'::jsonb)
)::text
FROM users u WHERE u.id = {user}
"""


BALANCES_SQL = _balances_sql("$1", "$2::text")
# Several users at once, in the order given (NULL for an unknown user): see balance_reads.
BALANCES_OF_USERS_SQL = (
    "SELECT w.n::integer AS n, b.body FROM unnest($1::text[]) WITH ORDINALITY AS w(user_id, n)"
    " LEFT JOIN LATERAL (" + _balances_sql("w.user_id", "NULL::text") + " LIMIT 1) AS b(body) ON true"
)

# As of an instant: each account's balance after its newest posting stamped at or before it (as
# its user, or as the receiver of a transfer), the holds open at that instant, and its lots' split
# by origin from their movements up to it (expiries as posted by then; no next_expiry).
BALANCES_AS_OF_SQL = """
SELECT jsonb_build_object(
    'user_id', u.id,
    'as_of', $4::text,
    'balances', coalesce((
        SELECT jsonb_agg(jsonb_build_object(
                   'asset_type', a.asset_code,
                   'name', t.name,
                   'scale', t.scale,
                   'balance', b.balance,
                   'held', b.held,
                   'available', b.balance - b.held,
                   'debt', greatest(-b.balance, 0),
                   'purchased', CASE WHEN b.balance < 0 THEN b.balance ELSE lots.purchased END,
                   'granted', CASE WHEN b.balance < 0 THEN 0 ELSE lots.granted END,
                   'next_expiry', NULL) ORDER BY a.asset_code)
        FROM accounts a
        JOIN asset_types t ON t.code = a.asset_code
        CROSS JOIN LATERAL (
            SELECT coalesce((
                       SELECT x.balance FROM (
                           (SELECT p.created_at, p.seq, p.balance_after_minor AS balance FROM transactions p
                             WHERE p.user_id = a.user_id AND p.asset_code = a.asset_code
                               AND p.seq = (wallet_account_seq_at(a.user_id, a.asset_code, $3, true)).before_seq
                             LIMIT 1)
                           UNION ALL
                           (SELECT p.created_at, p.seq, p.counterparty_balance_after_minor FROM transactions p
                             WHERE p.counterparty_user_id = a.user_id AND p.asset_code = a.asset_code
                               AND p.created_at <= $3
                             ORDER BY p.created_at DESC, p.seq DESC LIMIT 1)
                       ) x ORDER BY x.created_at DESC, x.seq DESC LIMIT 1), 0) AS balance,
                   coalesce((
                       SELECT sum(h.amount_minor) FROM holds h
                        WHERE h.user_id = a.user_id AND h.asset_code = a.asset_code AND h.created_at <= $3
                          AND h.expires_at > $3 AND (h.closed_at IS NULL OR h.closed_at > $3)), 0)::bigint AS held
            OFFSET 0  -- once per account (pulled up, each use of b.balance would search again)
        ) b
        CROSS JOIN LATERAL (
            SELECT coalesce(sum(m.amount_minor) FILTER (WHERE l.origin = 'purchased'), 0)::bigint AS purchased,
                   coalesce(sum(m.amount_minor) FILTER (WHERE l.origin = 'granted'), 0)::bigint AS granted
              FROM credit_lots l
              JOIN lot_movements m ON m.lot_id = l.id
              LEFT JOIN transactions p ON p.id = m.transaction_id
             WHERE l.account_id = a.id AND coalesce(p.created_at, m.created_at) <= $3
        ) lots
        WHERE a.user_id = u.id AND ($2::text IS NULL OR a.asset_code = $2)), '[]'::jsonb)
)::text
FROM users u WHERE u.id = $1
"""

# Newest first; a transfer appears in the history of both users. Each branch is an ordered index
# scan with its own LIMIT, so a page costs the same whatever the length of the history: the
# user's own postings one scan per asset account on (user, asset, seq), the page taken from their
# merge (the index on (user, seq) alone went in migration 0012: one index less to write per
# posting; docs/PERFORMANCE.md has both plans).
HISTORY_SQL = """
SELECT h.seq, wallet_transaction_json(h.id)::text AS body FROM (
    (SELECT t.seq, t.id FROM accounts a CROSS JOIN LATERAL (
        SELECT t.seq, t.id FROM transactions t
         WHERE t.user_id = $1 AND t.asset_code = a.asset_code AND ($3::text IS NULL OR t.type = $3)
           AND ($4::bigint IS NULL OR t.seq < $4)
         ORDER BY t.seq DESC LIMIT $5) AS t
      WHERE a.user_id = $1 AND ($2::text IS NULL OR a.asset_code = $2)
      ORDER BY t.seq DESC LIMIT $5)
    UNION ALL
    (SELECT t.seq, t.id FROM transactions t
      WHERE t.counterparty_user_id = $1
        AND ($2::text IS NULL OR t.asset_code = $2) AND ($3::text IS NULL OR t.type = $3)
        AND ($4::bigint IS NULL OR t.seq < $4)
      ORDER BY t.seq DESC LIMIT $5)
) h
ORDER BY h.seq DESC LIMIT $5
"""

# The same, within [from, to). The time bounds are first turned into bounds on seq, per asset
# account: postings of one account are stamped under its row lock, so their times follow their
# seq. The user's own are found by a search over (user, asset, seq) (wallet_account_seq_at: the
# postings either side of each bound, a few index descents each), transfers received by one
# descent of the counterparty's (user, asset, created_at, seq). The page is then read from the
# (user, asset, seq) index between those bounds, one scan per asset (the created_at filter only
# drops rows of other accounts stamped out of order by microseconds). A window anywhere in a long
# history costs about the same.
# It is planned with the parameters' values (a generic plan, not knowing the bounds, would read
# the counterparty's time index and sort); the documents are then rendered by a second statement under the
# session's generic plans, as a custom plan there would re-plan wallet_transaction_json per row.
HISTORY_RANGE_SQL = """
WITH mine AS (
    SELECT (SELECT max(x.before_seq) FROM unnest($2::text[]) AS a(code),
                   wallet_account_seq_at($1, a.code, $7, false) AS x) AS hi,
           (SELECT min(x.after_seq) FROM unnest($2::text[]) AS a(code),
                   wallet_account_seq_at($1, a.code, $6, false) AS x) AS lo
), received AS (
    SELECT (SELECT max(x.seq) FROM unnest($2::text[]) AS a(code) CROSS JOIN LATERAL (
                SELECT t.seq FROM transactions t
                 WHERE t.counterparty_user_id = $1 AND t.asset_code = a.code AND t.created_at < $7
                 ORDER BY t.created_at DESC, t.seq DESC LIMIT 1) AS x) AS hi,
           (SELECT min(x.seq) FROM unnest($2::text[]) AS a(code) CROSS JOIN LATERAL (
                SELECT t.seq FROM transactions t
                 WHERE t.counterparty_user_id = $1 AND t.asset_code = a.code AND t.created_at >= $6
                 ORDER BY t.created_at, t.seq LIMIT 1) AS x) AS lo
)
SELECT h.seq, h.id FROM (
    (SELECT t.seq, t.id FROM mine, unnest($2::text[]) AS a(code) CROSS JOIN LATERAL (
        SELECT t.seq, t.id FROM transactions t
         WHERE t.user_id = $1 AND t.asset_code = a.code AND t.seq BETWEEN mine.lo AND mine.hi
           AND ($3::text IS NULL OR t.type = $3) AND ($4::bigint IS NULL OR t.seq < $4)
           AND t.created_at >= $6 AND t.created_at < $7
         ORDER BY t.seq DESC LIMIT $5) AS t
      ORDER BY t.seq DESC LIMIT $5)
    UNION ALL
    (SELECT t.seq, t.id FROM transactions t, received
      WHERE t.counterparty_user_id = $1 AND t.seq BETWEEN received.lo AND received.hi
        AND t.asset_code = ANY ($2::text[]) AND ($3::text IS NULL OR t.type = $3)
        AND ($4::bigint IS NULL OR t.seq < $4)
        AND t.created_at >= $6 AND t.created_at < $7
      ORDER BY t.seq DESC LIMIT $5)
) h
ORDER BY h.seq DESC LIMIT $5
"""


async def _require_user(pool: asyncpg.Pool, user_id: str, asset_code: str | None = None) -> None:
    """Why a read found nothing: an unknown user, or an unknown asset in the filter."""
    if await pool.fetchval("SELECT 1 FROM users WHERE id = $1", user_id) is None:
        raise errors.WalletError(errors.USER_NOT_FOUND, f"no user with id {user_id}")
    if (
        asset_code is not None
        and await pool.fetchval("SELECT 1 FROM asset_types WHERE code = $1", asset_code) is None
    ):
        raise errors.WalletError(errors.ASSET_TYPE_NOT_FOUND, f"no asset type with code {asset_code}")


async def balances_json(
    pool: asyncpg.Pool, user_id: str, asset_code: str | None, as_of: datetime | None = None
) -> str:
    if as_of is None:
        body = await pool.fetchval(BALANCES_SQL, user_id, asset_code)
    else:
        # as_of is echoed as written here: the driver sends the earliest and latest instants as
        # -infinity and infinity, which compare as those instants with every stamp but print as NULL.
        body = await pool.fetchval(BALANCES_AS_OF_SQL, user_id, asset_code, as_of, api_time(as_of))
    if body is None:
        raise errors.WalletError(errors.USER_NOT_FOUND, f"no user with id {user_id}")
    assert isinstance(body, str)
    if asset_code is not None and not orjson.loads(body)["balances"]:
        await _require_user(pool, user_id, asset_code)
    return body


async def history_json(
    pool: asyncpg.Pool,
    user_id: str,
    *,
    limit: int,
    cursor: str | None,
    asset_code: str | None,
    type: TransactionType | None,
    from_time: datetime | None = None,
    to_time: datetime | None = None,
) -> str:
    before_seq = decode_int_cursor(CursorList.HISTORY, cursor, scope=user_id)
    check_period(from_time, to_time)
    type_value = type.value if type else None
    if from_time is not None or to_time is not None:
        return await _history_range_json(
            pool,
            user_id,
            limit,
            before_seq,
            asset_code,
            type_value,
            from_time or EARLIEST,  # the bound not given: every instant the API can name
            to_time or LATEST,
        )
    rows = await pool.fetch(HISTORY_SQL, user_id, asset_code, type_value, before_seq, limit + 1)
    if not rows:
        await _require_user(pool, user_id, asset_code)
    page = rows[:limit]
    next_cursor = (
        encode_int_cursor(CursorList.HISTORY, page[-1]["seq"], scope=user_id) if len(rows) > limit else None
    )
    return (
        '{"data":['
        + ",".join(row["body"] for row in page)
        + '],"next_cursor":'
        + orjson.dumps(next_cursor).decode()
        + "}"
    )


async def _history_range_json(
    pool: asyncpg.Pool,
    user_id: str,
    limit: int,
    before_seq: int | None,
    asset_code: str | None,
    type_value: str | None,
    from_time: datetime,
    to_time: datetime,
) -> str:
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        assets = (
            [asset_code] if asset_code else [r[0] for r in await conn.fetch("SELECT code FROM asset_types")]
        )
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        found = await conn.fetch(
            HISTORY_RANGE_SQL, user_id, assets, type_value, before_seq, limit + 1, from_time, to_time
        )
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        documents = await conn.fetchval(
            "SELECT wallet_transactions_json($1::uuid[])::text", [r["id"] for r in found[:limit]]
        )
    assert isinstance(documents, str)
    if not found:
        await _require_user(pool, user_id, asset_code)
    next_cursor = (
        encode_int_cursor(CursorList.HISTORY, found[limit - 1]["seq"], scope=user_id)
        if len(found) > limit
        else None
    )
    return '{"data":' + documents + ',"next_cursor":' + orjson.dumps(next_cursor).decode() + "}"
