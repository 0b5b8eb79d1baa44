"""Loads N transactions fast into a prepared bench database (tools.bench's users and opening
balances), through the one posting core: each chunk is one call of `wallet_post(wallet_posting[])`
in a database transaction of its own, built set-based in SQL, so every row is what the service
would write (transactions, ledger entries, balances, the hash chain, events, credit lots and their
movements, all by the core and its triggers) and the ledger passes `wallet verify`.

The mix, by a transaction's number g (0, 1, ... N-1): top-ups 40%, spends 35%, bonuses 15% (one
in three expiring in 30 days, each in a lot of its own, as a bonus with `expires_in_seconds`
would), transfers 10% (a fee on one in two). Consecutive numbers fall on consecutive accounts
(user-major, GOLD_COINS and DIAMONDS), so a chunk of at most half as many postings as there are
accounts moves each account once: the lots trigger then takes its set-based path for all of them,
as it does for a batch of distinct users. A transfer's receiver is the user half the population
away. Amounts are small against the opening balances (10^12), so nothing is refused.

Like a batch request, a chunk's transactions share one idempotency key (scale-RUN-CHUNK); no
stored answer is written for it (answers are pruned after a day and are not part of the ledger).
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass

import asyncpg

DEFAULT_CHUNK = 500  # measured: 2,000 per call is slower (the core's per-posting search of its accounts)

# $1 api key, $2 first g (inclusive), $3 last g (exclusive), $4 users, $5 chunk's idempotency key.
# Accounts are read once into the `scale_accounts` temporary table (n = user number * 2 + asset).
_CHUNK_SQL = """
SELECT count(p.transaction_id)
  FROM wallet_post(ARRAY(
    SELECT ROW(NULL, k.type, $1::bigint, $5::text, NULL, s.user_id, s.asset_code, k.amount,
               'scale load', jsonb_build_object('g', g.g), NULL,
               CASE WHEN k.type = 'transfer' THEN r.user_id END, k.fee, NULL, false,
               NULL, CASE WHEN g.g % 20 = 15 THEN 30 * 86400 END,
               CASE WHEN k.type = 'transfer' AND k.fee > 0 THEN ARRAY[s.account_id, r.account_id, f.id]
                    WHEN k.type = 'transfer' THEN ARRAY[s.account_id, r.account_id]
                    ELSE ARRAY[s.account_id, x.id] END,
               CASE WHEN k.type = 'transfer' AND k.fee > 0 THEN ARRAY[-(k.amount + k.fee), k.amount, k.fee]
                    WHEN k.type = 'transfer' THEN ARRAY[-k.amount, k.amount]
                    ELSE ARRAY[wallet_rule_user_sign(k.type) * k.amount, -wallet_rule_user_sign(k.type) * k.amount] END,
               0, 'available')::wallet_posting
      FROM generate_series($2::bigint, $3::bigint - 1) AS g(g)
     CROSS JOIN LATERAL (
        SELECT CASE WHEN g.g % 20 < 8 THEN 'topup' WHEN g.g % 20 < 15 THEN 'spend'
                    WHEN g.g % 20 < 18 THEN 'bonus' ELSE 'transfer' END AS type,
               1 + (hashint8(g.g) & 1023)::bigint AS amount,
               CASE WHEN g.g % 40 = 19 THEN 1 + (g.g % 7) ELSE 0 END::bigint AS fee) AS k
     CROSS JOIN LATERAL (SELECT a.* FROM scale_accounts a WHERE a.n = g.g % ($4::bigint * 2) LIMIT 1) AS s
      LEFT JOIN LATERAL (SELECT a.* FROM scale_accounts a
                          WHERE a.n = (g.g + $4::bigint) % ($4::bigint * 2) LIMIT 1) AS r ON k.type = 'transfer'
      LEFT JOIN LATERAL (SELECT y.id FROM accounts y
                          WHERE y.system_code = wallet_rule_system_account(k.type) AND y.asset_code = s.asset_code
                          LIMIT 1) AS x ON true
      LEFT JOIN LATERAL (SELECT y.id FROM accounts y
                          WHERE y.system_code = 'SYSTEM_REVENUE' AND y.asset_code = s.asset_code LIMIT 1) AS f ON true
     ORDER BY g.g), true, true, false) AS p
"""

_ACCOUNTS_SQL = """
CREATE TEMPORARY TABLE IF NOT EXISTS scale_accounts (n bigint PRIMARY KEY, user_id text, asset_code text,
                                                     account_id bigint);
TRUNCATE scale_accounts;
INSERT INTO scale_accounts
SELECT (u.i * 2 + a.k - 1), format('bench_%s', lpad(u.i::text, 4, '0')), a.code, x.id
  FROM generate_series(0, {users} - 1) AS u(i)
 CROSS JOIN unnest(ARRAY['GOLD_COINS', 'DIAMONDS']) WITH ORDINALITY AS a(code, k)
  JOIN accounts x ON x.user_id = format('bench_%s', lpad(u.i::text, 4, '0')) AND x.asset_code = a.code;
ANALYZE scale_accounts;
"""


@dataclass
class LoadResult:
    transactions: int
    seconds: float
    chunks: int
    connections: int

    @property
    def per_second(self) -> float:
        return self.transactions / self.seconds if self.seconds else 0.0


async def _load_part(
    url: str, api_key_id: int, users: int, ranges: list[tuple[int, int]], run: str, progress: list[int]
) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(_ACCOUNTS_SQL.format(users=int(users)))
        found = await conn.fetchval("SELECT count(*) FROM scale_accounts")
        if found != users * 2:
            raise RuntimeError(f"expected {users * 2} bench accounts, found {found}")
        for first, last in ranges:
            posted = await conn.fetchval(_CHUNK_SQL, api_key_id, first, last, users, f"scale-{run}-{first}")
            if posted != last - first:
                raise RuntimeError(f"chunk [{first}, {last}): {posted} of {last - first} posted")
            progress[0] += posted
    finally:
        await conn.close()


async def load_transactions(
    url: str,
    transactions: int,
    *,
    users: int,
    chunk: int = DEFAULT_CHUNK,
    connections: int = 2,
    run: str = "load",
    report_every_s: float = 15.0,
) -> LoadResult:
    """Posts `transactions` transactions, `chunk` per database transaction, on `connections`
    connections at once (connection i takes the chunks i, i + connections, ...). Chunks under way
    at once may share an account (a transfer's receiver, or more connections than the accounts
    allow): the core locks each chunk's accounts in ascending id in one statement, so one waits
    for the other, never deadlocks."""
    if users < 2:
        raise ValueError("the load needs two users or more (a transfer's receiver is another user)")
    chunk = max(1, min(chunk, users))  # each account at most once per chunk (a transfer's receiver aside)
    conn = await asyncpg.connect(url)
    try:
        api_key_id = await conn.fetchval("SELECT id FROM api_keys WHERE name = 'bench'")
    finally:
        await conn.close()
    if api_key_id is None:
        raise RuntimeError("not a bench database: no api key named 'bench'")
    ranges = [(first, min(first + chunk, transactions)) for first in range(0, transactions, chunk)]
    parts = [ranges[i::connections] for i in range(connections)]
    progress = [0]
    started = time.monotonic()

    async def report() -> None:
        while True:
            await asyncio.sleep(report_every_s)
            elapsed = time.monotonic() - started
            print(
                f"  loaded {progress[0]:,} of {transactions:,} in {elapsed:.0f} s ({progress[0] / elapsed:,.0f}/s)",
                file=sys.stderr,
                flush=True,
            )

    reporter = asyncio.create_task(report())
    try:
        await asyncio.gather(
            *(_load_part(url, api_key_id, users, part, run, progress) for part in parts if part)
        )
    finally:
        reporter.cancel()
    return LoadResult(progress[0], time.monotonic() - started, len(ranges), connections)
