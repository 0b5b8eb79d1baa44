"""`python -m tools.index_plans`: the plans of every query that could use an index migration 0012
or 0013 drops or narrows, before (the index there, the query as it was) and after (head).

Creates a scratch database (`wallet_index_plans`) on the given server, migrates it to head,
posts `--postings` top-ups and spends for `--users` users through the service's own posting
functions (a few users with long histories), and prints EXPLAIN (ANALYZE, COSTS OFF, TIMING
OFF) of each query as the service plans it (generic plans, as the pool's sessions do, except the
history window, which the service plans with its values). "Before" recreates the 0011 index in a
transaction that is rolled back (0011's or 0012's indexes, as the query needs). Used for
docs/PERFORMANCE.md.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import asyncpg
import typer

from tools.scratch_db import (
    SERVER_URL,
    KeepOption,
    ScratchNameOption,
    ServerUrlOption,
    drop_databases,
    ensure_database,
    with_database,
)

SCRATCH_DATABASE = "wallet_index_plans"

# The user's history as read before migration 0012, from (user_id, seq DESC).
HISTORY_SQL_0011 = """
SELECT h.seq, wallet_transaction_json(h.id)::text AS body FROM (
    (SELECT t.seq, t.id FROM transactions t
      WHERE t.user_id = $1
        AND ($2::text IS NULL OR t.asset_code = $2) AND ($3::text IS NULL OR t.type = $3)
        AND ($4::bigint IS NULL OR t.seq < $4)
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

# Both old history windows found the user's seq bounds by time, from (user, asset, created_at, seq).
_HISTORY_BOUNDS_BY_TIME = """WITH mine AS (
    SELECT (SELECT max(x.seq) FROM unnest($2::text[]) AS a(code) CROSS JOIN LATERAL (
                SELECT t.seq FROM transactions t
                 WHERE t.user_id = $1 AND t.asset_code = a.code AND t.created_at < $7
                 ORDER BY t.created_at DESC, t.seq DESC LIMIT 1) AS x) AS hi,
           (SELECT min(x.seq) FROM unnest($2::text[]) AS a(code) CROSS JOIN LATERAL (
                SELECT t.seq FROM transactions t
                 WHERE t.user_id = $1 AND t.asset_code = a.code AND t.created_at >= $6
                 ORDER BY t.created_at, t.seq LIMIT 1) AS x) AS lo
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
"""

# The history window before migration 0012: the page from (user_id, seq DESC) between bounds.
HISTORY_RANGE_SQL_0011 = f"""
{_HISTORY_BOUNDS_BY_TIME}SELECT h.seq, h.id FROM (
    (SELECT t.seq, t.id FROM transactions t, mine
      WHERE t.user_id = $1 AND t.seq BETWEEN mine.lo AND mine.hi
        AND t.asset_code = ANY ($2::text[]) AND ($3::text IS NULL OR t.type = $3)
        AND ($4::bigint IS NULL OR t.seq < $4)
        AND t.created_at >= $6 AND t.created_at < $7
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

# A balance as of an instant before migration 0013: the user's own postings from
# (user_id, asset_code, created_at, seq).
BALANCES_AS_OF_SQL_0012 = """
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
                             WHERE p.user_id = a.user_id AND p.asset_code = a.asset_code AND p.created_at <= $3
                             ORDER BY p.created_at DESC, p.seq DESC LIMIT 1)
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

# The history window before migration 0013: the user's own seq bounds from (user_id, asset_code, created_at, seq).
HISTORY_RANGE_SQL_0012 = f"""
{_HISTORY_BOUNDS_BY_TIME}SELECT h.seq, h.id FROM (
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

TIME_INDEX = (
    "CREATE INDEX transactions_user_asset_time ON transactions (user_id, asset_code, created_at, seq)"
)

# The prune before migration 0013 (every record had its time).
PRUNE_SQL_0012 = "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => $1)"


async def _load(url: str, users: int, postings: int) -> None:
    from wallet.db.migrate import upgrade_to_head_async
    from wallet.services.api_keys import create_api_key
    from wallet.services.seed import seed_reference_data

    await upgrade_to_head_async(url)
    conn = await asyncpg.connect(url)
    try:
        await seed_reference_data(conn)
        await create_api_key(conn, "plans", ["admin"])
        key = await conn.fetchval("SELECT id FROM api_keys WHERE name = 'plans'")
        await conn.execute(
            "SELECT wallet_ensure_user(format('plan_%s', i), 'Plans') FROM generate_series(0, $1 - 1) AS i",
            users,
        )
        await conn.execute(
            "SELECT wallet_post_transaction($1, format('open-%s-%s', i, a), 'topup', format('plan_%s', i), a,"
            " 1000000000, 'opening', '{}') FROM generate_series(0, $2 - 1) AS i,"
            " unnest(ARRAY['GOLD_COINS', 'DIAMONDS']) AS a",
            key,
            users,
        )
        # In batches of 100: half of them on the first tenth of the users (long histories).
        for n in range(0, postings, 100):
            ops: list[dict[str, object]] = [
                {
                    "type": "spend" if (n + i) % 3 == 0 else "topup",
                    "user_id": f"plan_{(n + i) % (users // 10 if i % 2 else users)}",
                    "asset_type": "GOLD_COINS" if (n + i) % 5 else "DIAMONDS",
                    "amount": 1,
                }
                for i in range(100)
            ]
            # (an operation of a batch names each user once: the batch is split where one repeats)
            seen: set[str] = set()
            chunk: list[dict[str, object]] = []
            for op in ops:
                if op["user_id"] in seen:
                    await conn.execute(
                        "SELECT wallet_post_batch($1, $2, $3::jsonb)",
                        key,
                        f"load-{n}-{len(seen)}",
                        json.dumps(chunk),
                    )
                    seen.clear()
                    chunk = []
                seen.add(str(op["user_id"]))
                chunk.append(op)
            await conn.execute(
                "SELECT wallet_post_batch($1, $2, $3::jsonb)", key, f"load-{n}-end", json.dumps(chunk)
            )
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


_statements = 0


async def _explain(conn: asyncpg.Connection, sql: str, args: list[object], *, generic: bool = True) -> str:
    await conn.execute(f"SET plan_cache_mode = {'force_generic_plan' if generic else 'force_custom_plan'}")
    global _statements
    _statements += 1
    name = f"plan_{_statements}"
    await conn.execute(f"PREPARE {name} AS {sql}")
    literals = ", ".join("NULL" if a is None else f"'{a}'" for a in args)
    rows = await conn.fetch(
        f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON) EXECUTE {name}({literals})"
    )
    return "\n".join(r[0] for r in rows)


async def _report(url: str) -> None:
    from wallet.cli import PRUNE_IDEMPOTENCY_SQL
    from wallet.services.audit import _CHUNK_END_SQL, INCREMENTAL_CHECKS
    from wallet.services.wallets import BALANCES_AS_OF_SQL, HISTORY_RANGE_SQL, HISTORY_SQL

    conn = await asyncpg.connect(url, server_settings={"random_page_cost": "1.1", "timezone": "UTC"})
    try:
        heavy = await conn.fetchval(
            "SELECT user_id FROM transactions GROUP BY user_id ORDER BY count(*) DESC LIMIT 1"
        )
        count = await conn.fetchval("SELECT count(*) FROM transactions")
        mine = await conn.fetchval("SELECT count(*) FROM transactions WHERE user_id = $1", heavy)
        middle = await conn.fetchval(
            "SELECT seq FROM transactions WHERE user_id = $1 ORDER BY seq OFFSET $2 LIMIT 1", heavy, mine // 3
        )
        bounds = await conn.fetchrow(
            "SELECT min(created_at)::text, (min(created_at) + (max(created_at) - min(created_at)) / 3)::text"
            " FROM transactions WHERE user_id = $1",
            heavy,
        )
        assert bounds is not None
        first, window_to = bounds
        print(f"{count} transactions; {heavy}: {mine}\n")
        history_args: list[object] = [heavy, None, None, None, 51]
        cursor_args: list[object] = [heavy, "GOLD_COINS", None, middle, 51]
        range_args: list[object] = [
            heavy,
            "{GOLD_COINS,DIAMONDS,LOYALTY_POINTS}",
            None,
            None,
            51,
            first,
            window_to,
        ]
        sections = [
            ("history, first page, every asset (0011: transactions_user_history)", HISTORY_SQL_0011, history_args,
             "transactions_user_history"),
            ("history, first page, every asset (head)", HISTORY_SQL, history_args, None),
            ("history, a page from a cursor, one asset (0011)", HISTORY_SQL_0011, cursor_args,
             "transactions_user_history"),
            ("history, a page from a cursor, one asset (head)", HISTORY_SQL, cursor_args, None),
        ]  # fmt: skip
        for title, sql, args, index in sections:
            await conn.execute("BEGIN")  # rolled back: "before" has the index for this section only
            if index:
                await conn.execute(f"CREATE INDEX {index} ON transactions (user_id, seq DESC)")
                await conn.execute("ANALYZE transactions")
            print(f"== {title}\n{await _explain(conn, sql, args)}\n")
            await conn.execute("ROLLBACK")
        history_index = "CREATE INDEX transactions_user_history ON transactions (user_id, seq DESC)"
        for title, sql, indexes in (
            ("history window (0011)", HISTORY_RANGE_SQL_0011, [history_index, TIME_INDEX]),
            ("history window (0012: time index)", HISTORY_RANGE_SQL_0012, [TIME_INDEX]),
            ("history window (head: bisection over seq)", HISTORY_RANGE_SQL, []),
        ):
            await conn.execute("BEGIN")
            for index in indexes:
                await conn.execute(index)
            await conn.execute("ANALYZE transactions")
            print(f"== {title}\n{await _explain(conn, sql, range_args, generic=False)}\n")
            await conn.execute("ROLLBACK")
        as_of = await conn.fetchval(
            "SELECT min(created_at) + (max(created_at) - min(created_at)) / 3 FROM transactions WHERE user_id = $1",
            heavy,
        )
        for title, sql, indexes in (
            (
                "balance as of a third into the history (0012: time index)",
                BALANCES_AS_OF_SQL_0012,
                [TIME_INDEX],
            ),
            ("balance as of a third into the history (head: bisection over seq)", BALANCES_AS_OF_SQL, []),
        ):
            await conn.execute("BEGIN")
            for index in indexes:
                await conn.execute(index)
            await conn.execute("ANALYZE transactions")
            print(f"== {title}\n{await _explain(conn, sql, [heavy, None, as_of, 'T'])}\n")
            await conn.execute("ROLLBACK")
        check_title, check_sql = INCREMENTAL_CHECKS[0]
        to_seq = await conn.fetchval("SELECT max(seq) FROM transactions")
        print(f"== audit check (kept: transactions_by_seq): {check_title}\n"
              f"{await _explain(conn, check_sql, [to_seq - 2000, to_seq, 10])}\n")  # fmt: skip
        print(
            f"== audit chunk end (kept: transactions_by_seq)\n"
            f"{await _explain(conn, _CHUNK_END_SQL, [to_seq - 2000, 10_000, 0])}\n"
        )
        for title, using in (
            ("prune idempotency keys (0011: B-tree)", "btree"),
            ("prune idempotency keys (0012: BRIN)", "brin"),
            ("prune idempotency keys (head: no index)", None),
        ):
            await conn.execute("BEGIN")
            if using:
                await conn.execute(
                    f"CREATE INDEX idempotency_keys_by_age ON idempotency_keys USING {using} (created_at)"
                )
                await conn.execute("ANALYZE idempotency_keys")
            brin = using == "brin"
            # Records of three days, written in time order as the service writes them; the prune
            # takes those older than two days (the records are rolled back with the rest). At head,
            # the records of the loaded postings have no time of their own: their transaction's.
            await conn.execute(
                "INSERT INTO idempotency_keys (api_key_id, key, request_sha256, outcome, response_body, created_at)"
                " SELECT k.id, 'plan-' || i, sha256(i::text::bytea), 'posted', '{}',"
                "        now() - interval '72 hours' + i * interval '1 second'"
                "   FROM generate_series(1, 259200) AS i, (SELECT min(id) AS id FROM api_keys) AS k"
            )
            if brin:  # what VACUUM (autovacuum) does to the block ranges filled since
                await conn.execute("SELECT brin_summarize_new_values('idempotency_keys_by_age')")
            await conn.execute("ANALYZE idempotency_keys")
            hours = 48
            # `wallet prune-idempotency` plans it with its value (a custom plan)
            sql = PRUNE_SQL_0012 if using else PRUNE_IDEMPOTENCY_SQL
            print(f"== {title}\n{await _explain(conn, sql, [hours], generic=False)}\n")
            await conn.execute("ROLLBACK")
    finally:
        await conn.close()


app = typer.Typer(add_completion=False)


@app.command()
def main(
    database_url: ServerUrlOption = SERVER_URL,
    users: Annotated[int, typer.Option(min=20, max=100_000)] = 1000,
    postings: Annotated[int, typer.Option(min=100, max=10_000_000)] = 100_000,
    keep: KeepOption = False,
    scratch_database: ScratchNameOption = SCRATCH_DATABASE,
) -> None:
    url = with_database(database_url, scratch_database)

    async def run() -> None:
        if await ensure_database(database_url, scratch_database, reuse=keep):
            await _load(url, users, postings)
        await _report(url)
        if not keep:
            await drop_databases(database_url, scratch_database)

    asyncio.run(run())


if __name__ == "__main__":
    app()
