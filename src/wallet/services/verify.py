"""`wallet verify`: recompute the books from the ledger and compare.

The triggers and constraints should make every check here impossible to fail (credit lots
included: they sum to each balance and to their own movements); this is the
independent audit that proves it on a live database, and catches what someone with enough
privilege could still do by hand (disable triggers, edit a cached balance).

The hash chains (migration 0006; since 0015 each new link is stored on its own entry, the older
ones stay in ledger_chain, and both are read through the view ledger_chain_links, one numbering
per account across the two) are checked link by link: each stored link is recomputed from
the previous stored link and the transaction and entry as they are stored now. An edit of one
transaction or user entry therefore breaks exactly its own link (the next one still follows from
the stored value), and the report names the first broken link of each account's chain. System
entries are not chained; the checks that every entry is what its transaction implies cover them.

In bounded chunks (issue 20): every check reads one range of a key at a time, never a whole
table in one statement, so its cost per statement stays the same however large the ledger grows
and several connections can share the work:
  * transactions by ranges of `seq` (the per-transaction checks: entries balanced, the user's
    entry, the system account, a transfer's receiver, lot movements against entries);
  * ledger entries by ranges of physical blocks (a TID range scan: every row exactly once, no
    index needed), summed per account: the cached balances, the system balances, each asset's
    total, and how many entries each account has;
  * accounts, credit lots and hash chains by ranges of their primary keys (a chain's accounts
    binned so that a chunk holds a bounded number of links: one account's chain is never split).
All the connections read one snapshot (pg_export_snapshot), so the partial results add up as one
statement over the whole ledger would, and concurrent postings cannot produce false alarms.
Each chunk's statement runs with hash and merge joins and sequential scans off: the plan is index
probes along the range whatever the statistics say (on a bulk-loaded ledger that was never
analysed, a join planned from stale statistics had scanned a whole table once per row).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from wallet.settings import AUDIT_QUERY_TIMEOUT_MS_DEFAULT

MAX_PROBLEMS_PER_CHECK = 100

# Chunk sizes: what one statement reads at most.
TRANSACTIONS_PER_CHUNK = 20_000  # a range of seq
ENTRY_BLOCKS_PER_CHUNK = 1_000  # ledger_entries blocks (8 kB each: about 80,000 entries)
ACCOUNTS_PER_CHUNK = 5_000
LOTS_PER_CHUNK = 5_000
LINKS_PER_CHUNK = 20_000  # hash-chain links (a longer chain is a chunk of its own)

# Index probes along the range, whatever the statistics say (see the module's docstring); JIT off:
# a plan with a disabled node carries a huge cost and would be compiled for nothing.
PLAN_STABLE_SETTINGS = ("enable_hashjoin", "enable_mergejoin", "enable_seqscan")


async def set_plan_stable(conn: asyncpg.Connection) -> None:
    """For the rest of the current transaction: plans that walk the given key range by index."""
    for name in PLAN_STABLE_SETTINGS:
        await conn.execute(f"SET LOCAL {name} = off")
    await conn.execute("SET LOCAL jit = off")


async def reset_plan_settings(conn: asyncpg.Connection) -> None:
    """The defaults again, for a statement that must scan (a problem's details)."""
    for name in (*PLAN_STABLE_SETTINGS, "jit"):
        await conn.execute(f"SET LOCAL {name} = DEFAULT")


# The checks' titles, in the order of the report.
BALANCE_SUM = "cached user balance differs from the sum of its ledger entries"
AVAILABLE = "available balance (balance - held) below zero without an admin-allowed clawback"
HELD = "cached held amount differs from the sum of the account's open holds"
CAPTURED = "captured hold without its capture transaction, or with another amount"
REVERSED = "reversed total differs from the sum of the reversals, or exceeds the original"
ENTRIES_BALANCED = "transaction entries do not sum to zero, or fewer than two entries"
USER_ENTRY = "user's entry does not match the transaction's amount and direction"
SYSTEM_ENTRY = "entry on a system account other than the one its transaction's type uses"
RECEIVER = "transfer's receiver entry does not match its amount"
CHAIN = "hash chain broken (the first broken link of each account's chain)"
NOT_CHAINED = "ledger entry on a user account missing from its account's hash chain, or chained twice"
LOTS_SUM = "open credit lots do not sum to the user's balance (zero while in debt)"
LOT_MOVEMENTS = "credit lot's remaining amount differs from the sum of its movements"
LOTS_EXPIRY = "cached earliest lot expiry of an account differs from its open lots"
LOTS_MOVED = "a transaction's lot movements do not match its entry on a user account"
ASSET_SUM = "the whole ledger does not sum to zero for an asset"
ROLLUP = "a report's per-day total differs from the transactions it rolls up"
TITLES = [
    BALANCE_SUM, AVAILABLE, HELD, CAPTURED, REVERSED, ENTRIES_BALANCED, USER_ENTRY, SYSTEM_ENTRY, RECEIVER,
    CHAIN, NOT_CHAINED, LOTS_SUM, LOT_MOVEMENTS, LOTS_EXPIRY, LOTS_MOVED, ASSET_SUM, ROLLUP,
]  # fmt: skip

# Each check returns (key, problem), ordered by key (what the report is ordered by) and at most
# $1 rows. Per-transaction checks: the transactions that {transactions} names ($2: their ids).
# Everything past the transaction is reached by LATERAL from it: a join written plainly may be
# turned around (seen on a ledger with stale statistics: every ledger entry walked, and each
# probed for its transaction, to find one chunk's 20,000).
TRANSACTION_CHECKS: list[tuple[str, str]] = [
    (
        ENTRIES_BALANCED,
        """
        SELECT t.id::text AS key, format('transaction %s: %s entries, sum %s in %s', t.id, count(e.entry_no),
                      coalesce(sum(e.amount_minor), 0), coalesce(e.asset_code, t.asset_code))
        FROM transactions t
        LEFT JOIN LATERAL (SELECT x.* FROM ledger_entries x WHERE x.transaction_id = t.id) e ON true
        WHERE {transactions}
        GROUP BY t.id, t.asset_code, e.asset_code
        HAVING coalesce(sum(e.amount_minor), 0) <> 0
            OR (SELECT count(*) FROM ledger_entries x WHERE x.transaction_id = t.id) < 2
        ORDER BY t.id LIMIT $1
        """,
    ),
    (
        USER_ENTRY,
        """
        SELECT t.id::text AS key, format('transaction %s (%s %s of %s): user entry sum %s',
                      t.id, t.type, t.amount_minor, t.user_id, coalesce(sum(e.amount_minor), 0))
        FROM transactions t
        LEFT JOIN LATERAL (SELECT x.id FROM accounts x WHERE x.user_id = t.user_id AND x.asset_code = t.asset_code
                            LIMIT 1) a ON true
        LEFT JOIN LATERAL (SELECT x.amount_minor FROM ledger_entries x
                            WHERE x.transaction_id = t.id AND x.account_id = a.id) e ON true
        WHERE {transactions}
        GROUP BY t.id, t.type, t.amount_minor, t.user_id
        HAVING coalesce(sum(e.amount_minor), 0)
               <> wallet_rule_user_sign(t.type) * t.amount_minor - t.fee_minor
        ORDER BY t.id LIMIT $1
        """,
    ),
    (
        # With the two checks around it, every entry of a transaction is what the transaction
        # implies; the hash chains cover the transactions and the users' entries, so this is what
        # makes an edited system-side entry show too.
        SYSTEM_ENTRY,
        """
        SELECT t.id::text || lpad(e.entry_no::text, 5, '0') AS key,
               format('transaction %s (%s of %s %s): entry %s is on %s %s, expected %s',
                      t.id, t.type, t.amount_minor, t.asset_code, e.entry_no, a.system_code, a.asset_code,
                      coalesce(wallet_rule_system_account(coalesce(o.type, t.type)), 'none'))
        FROM transactions t
        CROSS JOIN LATERAL (SELECT x.* FROM ledger_entries x WHERE x.transaction_id = t.id) e
        CROSS JOIN LATERAL (SELECT x.system_code, x.asset_code FROM accounts x
                             WHERE x.id = e.account_id AND x.kind = 'system' LIMIT 1) a
        LEFT JOIN LATERAL (SELECT x.type FROM transactions x WHERE x.id = t.reverses AND t.type = 'clawback'
                            LIMIT 1) o ON true
        WHERE {transactions}
          AND (a.system_code IS DISTINCT FROM wallet_rule_system_account(coalesce(o.type, t.type))
               OR a.asset_code <> t.asset_code)
        ORDER BY t.id, e.entry_no LIMIT $1
        """,
    ),
    (
        RECEIVER,
        """
        SELECT t.id::text AS key, format('transfer %s (%s to %s): receiver entry sum %s', t.id, t.amount_minor,
                      t.counterparty_user_id, coalesce(sum(e.amount_minor), 0))
        FROM transactions t
        LEFT JOIN LATERAL (SELECT x.id FROM accounts x
                            WHERE x.user_id = t.counterparty_user_id AND x.asset_code = t.asset_code LIMIT 1) a ON true
        LEFT JOIN LATERAL (SELECT x.amount_minor FROM ledger_entries x
                            WHERE x.transaction_id = t.id AND x.account_id = a.id) e ON true
        WHERE {transactions} AND t.counterparty_user_id IS NOT NULL
        GROUP BY t.id
        HAVING coalesce(sum(e.amount_minor), 0) <> t.amount_minor
        ORDER BY t.id LIMIT $1
        """,
    ),
    (
        # Since lots exist: a debit draws exactly its amount (an admin clawback into debt: at most
        # it); a credit fills its amount less the debt it repaid.
        LOTS_MOVED,
        """
        SELECT t.id::text AS key, format('transaction %s (%s): entry %s on account %s, lots moved %s',
                      t.id, t.type, e.amount_minor, e.account_id, m.moved)
        FROM transactions t
        CROSS JOIN LATERAL (SELECT x.* FROM ledger_entries x WHERE x.transaction_id = t.id) e
        CROSS JOIN LATERAL (SELECT x.user_id FROM accounts x WHERE x.id = e.account_id AND x.kind = 'user' LIMIT 1) a
        CROSS JOIN LATERAL (
            SELECT coalesce(sum(mv.amount_minor), 0) AS moved
              FROM lot_movements mv
             WHERE mv.transaction_id = t.id
               AND (SELECT l.account_id FROM credit_lots l WHERE l.id = mv.lot_id) = e.account_id) m
        WHERE {transactions} AND t.seq >= (SELECT first_seq FROM credit_lots_start)
          AND NOT wallet_lots_moved_as_entry(e.amount_minor, m.moved, t.allow_negative,
                  CASE WHEN a.user_id = t.user_id THEN t.balance_after_minor
                       ELSE t.counterparty_balance_after_minor END)
        ORDER BY t.id LIMIT $1
        """,
    ),
]

# The transactions of $1 < seq <= $2 that one of TRANSACTION_CHECKS would name, found in one pass:
# each transaction's entries read once (by its key), with their accounts and lot movements. The
# checks themselves then run on those alone, for their reports.
SUSPECT_TRANSACTIONS_SQL = """
SELECT t.id
  FROM transactions t
  LEFT JOIN LATERAL (SELECT o.type FROM transactions o WHERE o.id = t.reverses AND t.type = 'clawback' LIMIT 1) o
    ON true
 CROSS JOIN LATERAL (
    SELECT count(*) AS n, coalesce(sum(e.amount_minor), 0) AS total,
           coalesce(bool_or(e.asset_code <> t.asset_code), false) AS other_asset,
           coalesce(sum(e.amount_minor) FILTER (WHERE a.user_id = t.user_id AND a.asset_code = t.asset_code), 0)
               AS user_sum,
           coalesce(sum(e.amount_minor) FILTER (WHERE a.user_id = t.counterparty_user_id
                                                  AND a.asset_code = t.asset_code), 0) AS receiver_sum,
           coalesce(bool_or(a.kind = 'system'
                            AND (a.system_code IS DISTINCT FROM wallet_rule_system_account(coalesce(o.type, t.type))
                                 OR a.asset_code <> t.asset_code)), false) AS bad_system,
           coalesce(bool_or(a.kind = 'user' AND t.seq >= (SELECT first_seq FROM credit_lots_start)
                            AND NOT wallet_lots_moved_as_entry(e.amount_minor,
                                    (SELECT coalesce(sum(mv.amount_minor), 0) FROM lot_movements mv
                                      WHERE mv.transaction_id = t.id
                                        AND (SELECT l.account_id FROM credit_lots l WHERE l.id = mv.lot_id)
                                            = e.account_id),
                                    t.allow_negative,
                                    CASE WHEN a.user_id = t.user_id THEN t.balance_after_minor
                                         ELSE t.counterparty_balance_after_minor END)), false) AS bad_lots
      FROM ledger_entries e
      LEFT JOIN LATERAL (SELECT x.kind, x.user_id, x.system_code, x.asset_code FROM accounts x
                          WHERE x.id = e.account_id LIMIT 1) a ON true
     WHERE e.transaction_id = t.id) x
 WHERE t.seq > $1 AND t.seq <= $2
   AND (x.n < 2 OR x.total <> 0 OR x.other_asset OR x.bad_system OR x.bad_lots
        OR x.user_sum <> wallet_rule_user_sign(t.type) * t.amount_minor - t.fee_minor
        OR (t.counterparty_user_id IS NOT NULL AND x.receiver_sum <> t.amount_minor))
"""


async def check_transactions(
    conn: asyncpg.Connection, low: int, high: int, timeout_s: float
) -> dict[str, list[tuple[Any, str]]]:
    """TRANSACTION_CHECKS on the transactions of low < seq <= high: one pass to find those a check
    would name, then the checks on those alone. Per title, (key, problem) in key order."""
    suspects = [row["id"] for row in await conn.fetch(SUSPECT_TRANSACTIONS_SQL, low, high, timeout=timeout_s)]
    found: dict[str, list[tuple[Any, str]]] = {}
    if suspects:
        for title, sql in TRANSACTION_CHECKS:
            rows = await conn.fetch(
                sql.format(transactions="t.id = ANY ($2::uuid[])"),
                MAX_PROBLEMS_PER_CHECK,
                suspects,
                timeout=timeout_s,
            )
            if rows:
                found[title] = [(row[0], row[1]) for row in rows]
    return found


# Per-account checks of cached figures: $2 < a.id <= $3, each figure from its account's own index
# range (open holds, lots), so they are what the live audit runs on every user account too.
ACCOUNT_CHECKS: list[tuple[str, str]] = [
    (
        AVAILABLE,
        """
        SELECT a.id AS key, format('account %s (%s %s): balance %s, held %s',
                      a.id, a.user_id, a.asset_code, a.balance_minor, a.held_minor)
        FROM accounts a
        WHERE a.kind = 'user' AND a.id > $2 AND a.id <= $3
          AND (a.held_minor < 0
               OR (a.held_minor > a.balance_minor AND NOT EXISTS (
                       SELECT 1 FROM transactions t
                       WHERE t.user_id = a.user_id AND t.asset_code = a.asset_code AND t.allow_negative)))
        ORDER BY a.id LIMIT $1
        """,
    ),
    (
        HELD,
        """
        SELECT a.id AS key, format('account %s (%s %s): cached held %s, open holds %s',
                      a.id, a.user_id, a.asset_code, a.held_minor, h.total)
        FROM accounts a
        CROSS JOIN LATERAL (SELECT coalesce(sum(x.amount_minor), 0) AS total FROM holds x
                             WHERE x.account_id = a.id AND x.status = 'open') h
        WHERE a.kind = 'user' AND a.id > $2 AND a.id <= $3 AND a.held_minor <> h.total
        ORDER BY a.id LIMIT $1
        """,
    ),
    (
        LOTS_SUM,
        """
        SELECT a.id AS key, format('account %s (%s %s): balance %s, open lots %s',
                      a.id, a.user_id, a.asset_code, a.balance_minor, l.total)
        FROM accounts a
        CROSS JOIN LATERAL (SELECT coalesce(sum(x.remaining_minor), 0) AS total FROM credit_lots x
                             WHERE x.account_id = a.id) l
        WHERE a.kind = 'user' AND a.id > $2 AND a.id <= $3 AND l.total <> greatest(a.balance_minor, 0)
        ORDER BY a.id LIMIT $1
        """,
    ),
    (
        LOTS_EXPIRY,
        """
        SELECT a.id AS key, format('account %s (%s %s): cached %s, open lots %s', a.id, a.user_id, a.asset_code,
                      a.lots_expire_at, l.next_at)
        FROM accounts a
        CROSS JOIN LATERAL (SELECT min(x.expires_at) AS next_at FROM credit_lots x
                             WHERE x.account_id = a.id AND x.remaining_minor > 0) l
        WHERE a.kind = 'user' AND a.id > $2 AND a.id <= $3 AND a.lots_expire_at IS DISTINCT FROM l.next_at
        ORDER BY a.id LIMIT $1
        """,
    ),
]

# Per lot ({lots}: which; here $2 < l.id <= $3), each lot's movements from the (lot_id) index.
LOT_CHECK_SQL_FOR = """
SELECT l.id AS key, format('lot %s (account %s, %s): remaining %s, movements sum %s',
              l.id, l.account_id, l.origin, l.remaining_minor, m.total)
FROM credit_lots l
CROSS JOIN LATERAL (SELECT coalesce(sum(x.amount_minor), 0) AS total FROM lot_movements x
                     WHERE x.lot_id = l.id) m
WHERE {lots} AND l.remaining_minor <> m.total
ORDER BY l.id LIMIT $1
"""
LOT_CHECK_SQL = LOT_CHECK_SQL_FOR.format(lots="l.id > $2 AND l.id <= $3")

# Holds and reversals: few rows, each check one statement from its own index.
WHOLE_CHECKS: list[tuple[str, str]] = [
    (
        CAPTURED,
        """
        SELECT h.id::text AS key, format('hold %s: captured %s, capture transaction %s', h.id,
                      h.captured_amount_minor, coalesce(t.amount_minor::text, 'missing'))
        FROM holds h LEFT JOIN transactions t ON t.id = h.capture_transaction_id AND t.hold_id = h.id
        WHERE h.status = 'captured' AND (t.id IS NULL OR t.amount_minor <> h.captured_amount_minor)
        ORDER BY h.id LIMIT $1
        """,
    ),
    (
        # The reversed originals, from the reversals' partial index and the totals table.
        REVERSED,
        """
        SELECT o.id::text AS key, format('transaction %s (%s of %s): reversals sum %s, recorded %s', o.id,
                      o.type, o.amount_minor, coalesce(s.total, 0), coalesce(r.reversed_amount_minor, 0))
        FROM (SELECT DISTINCT x.reverses AS id FROM transactions x WHERE x.reverses IS NOT NULL
              UNION SELECT y.transaction_id FROM reversal_totals y) k
        CROSS JOIN LATERAL (SELECT x.* FROM transactions x WHERE x.id = k.id LIMIT 1) o
        CROSS JOIN LATERAL (SELECT sum(x.amount_minor) AS total FROM transactions x WHERE x.reverses = o.id) s
        LEFT JOIN reversal_totals r ON r.transaction_id = o.id
        WHERE coalesce(s.total, 0) <> coalesce(r.reversed_amount_minor, 0) OR coalesce(s.total, 0) > o.amount_minor
        ORDER BY o.id LIMIT $1
        """,
    ),
    (
        # The reports' per-day totals (wallet.services.rollup), recomputed from every transaction
        # up to the roll-up's checkpoint with the functions that give the roll-up each chunk's totals.
        ROLLUP,
        """
        WITH r AS (SELECT c.through_seq FROM rollup_checkpoint c)
        SELECT format('%s days', coalesce(e.day, f.day)) AS key,
               format('day %s: seq %s-%s at %s-%s, rolled-up transactions %s-%s at %s-%s',
                      coalesce(e.day, f.day), f.first_seq, f.last_seq, f.first_at, f.last_at,
                      e.first_seq, e.last_seq, e.first_at, e.last_at)
          FROM (SELECT x.* FROM r, wallet_rollup_days_of(0, r.through_seq) x) e
          FULL JOIN rollup_days f ON f.day = e.day
         WHERE (e.first_seq, e.last_seq, e.first_at, e.last_at)
               IS DISTINCT FROM (f.first_seq, f.last_seq, f.first_at, f.last_at)
        UNION ALL
        SELECT format('%s flows %s %s %s', coalesce(e.day, f.day), coalesce(e.asset_code, f.asset_code),
                      coalesce(e.origin, f.origin), coalesce(e.type, f.type)),
               format('day %s, %s %s %s: total %s, lot movements %s', coalesce(e.day, f.day),
                      coalesce(e.asset_code, f.asset_code), coalesce(e.origin, f.origin), coalesce(e.type, f.type),
                      f.amount_minor, e.amount_minor)
          FROM (SELECT x.* FROM r, wallet_lot_flow_totals_of(0, r.through_seq) x) e
          FULL JOIN lot_flow_totals f ON (f.day, f.asset_code, f.origin, f.type) = (e.day, e.asset_code, e.origin, e.type)
         WHERE e.amount_minor IS DISTINCT FROM f.amount_minor
        UNION ALL
        SELECT format('%s volume %s', coalesce(e.day, f.day), coalesce(e.asset_code, f.asset_code)),
               format('day %s, %s: volume %s/%s in %s transactions, entries %s/%s in %s', coalesce(e.day, f.day),
                      coalesce(e.asset_code, f.asset_code), f.credited_minor, f.debited_minor, f.transactions,
                      e.credited_minor, e.debited_minor, e.transactions)
          FROM (SELECT x.* FROM r, wallet_volume_totals_of(0, r.through_seq) x) e
          FULL JOIN volume_totals f ON (f.day, f.asset_code) = (e.day, e.asset_code)
         WHERE (e.credited_minor, e.debited_minor, e.transactions)
               IS DISTINCT FROM (f.credited_minor, f.debited_minor, f.transactions)
        ORDER BY 1 LIMIT $1
        """,
    ),
]

# Per block range of ledger_entries ($1 <= block < $2): each account's entries summed and counted,
# by the asset an entry names (NULL, as the posting core writes them since migration 0013: its
# transaction's, which the entries' check holds to be its account's; resolved from the accounts).
ENTRY_SUMS_SQL = """
SELECT e.account_id, e.asset_code, sum(e.amount_minor) AS total, count(*) AS entries
  FROM ledger_entries e
 WHERE e.ctid >= $1::text::tid AND e.ctid < $2::text::tid
 GROUP BY e.account_id, e.asset_code
"""

TRANSACTION_COUNT_SQL = "SELECT count(*) FROM transactions t WHERE t.seq > $1 AND t.seq <= $2"

ACCOUNTS_SQL = """
SELECT a.id, a.kind, a.user_id, a.system_code, a.asset_code, a.balance_minor
  FROM accounts a WHERE a.id > $1 AND a.id <= $2 ORDER BY a.id
"""

# Every link recomputed set-based from the previous stored link (lag over chain_no) and the
# transaction and entry as stored now, by the same functions the posting core uses; the
# accounts of one chunk ($1 < account_id <= $2) whole. One row per account: its chain's length,
# how many of its links do not follow the one before in posting order (seq, entry), which no
# honest chain has: a link repeated or out of place; its last link up to seq $3 (the live
# audit's mark after a full run; NULL: none asked); and its first broken link, if any.
CHAIN_SQL = """
WITH links AS (
    SELECT c.account_id, c.chain_no, c.transaction_id, c.entry_no, c.link_sha256, t.seq,
           lag(c.chain_no) OVER w AS previous_no, lag(c.link_sha256) OVER w AS previous_link,
           lag(ROW(t.seq, c.entry_no)) OVER w >= ROW(t.seq, c.entry_no) AS out_of_order,
           e.account_id AS entry_account_id,
           CASE WHEN t.id IS NOT NULL AND e.transaction_id IS NOT NULL
                THEN wallet_chain_digest(t, e.entry_no, e.account_id, e.asset_code, e.amount_minor)
           END AS digest
    FROM ledger_chain_links c
    LEFT JOIN ledger_entries e ON e.transaction_id = c.transaction_id AND e.entry_no = c.entry_no
    LEFT JOIN transactions t ON t.id = c.transaction_id
    WHERE c.account_id > $1 AND c.account_id <= $2
    WINDOW w AS (PARTITION BY c.account_id ORDER BY c.chain_no)
), broken AS (
    SELECT l.*, CASE
               WHEN l.digest IS NULL THEN 'its transaction or entry is missing'
               WHEN l.entry_account_id <> l.account_id THEN 'its entry is on another account'
               WHEN l.chain_no <> coalesce(l.previous_no, 0) + 1
                   THEN format('the link before it is %s: links are missing', coalesce(l.previous_no, 0))
               WHEN l.link_sha256 <> wallet_chain_link(l.previous_link, l.digest)
                   THEN 'the stored link does not match the transaction and entry as stored now'
           END AS reason
    FROM links l
), per_account AS (
    SELECT DISTINCT ON (b.account_id) b.*,
           count(*) OVER p AS chain_length,
           count(*) FILTER (WHERE b.reason IS NOT NULL) OVER p AS broken_links,
           count(*) FILTER (WHERE b.out_of_order) OVER p AS out_of_order_links,
           max(b.chain_no) FILTER (WHERE b.seq <= $3) OVER p AS mark
    FROM broken b
    WINDOW p AS (PARTITION BY b.account_id)
    ORDER BY b.account_id, b.reason IS NULL, b.chain_no
)
SELECT f.account_id, f.chain_length, f.out_of_order_links, f.mark,
       CASE WHEN f.reason IS NOT NULL THEN
           format('account %s (%s %s): first broken link %s of %s is transaction %s entry %s: %s'
                  ' (%s broken link(s) in this chain)',
                  f.account_id, coalesce(a.user_id, a.system_code, 'unknown account'), a.asset_code,
                  f.chain_no, f.chain_length, f.transaction_id, f.entry_no, f.reason, f.broken_links)
       END AS problem
FROM per_account f LEFT JOIN LATERAL (SELECT x.* FROM accounts x WHERE x.id = f.account_id LIMIT 1) a ON true
ORDER BY f.account_id
"""

# Only when the counts show a user entry unchained or chained twice (a problem's details): every
# user entry against the links that name it, as one scan.
NOT_CHAINED_SQL = """
SELECT format('transaction %s entry %s (account %s, %s %s): %s', e.transaction_id, e.entry_no,
              a.id, a.user_id, a.asset_code,
              CASE WHEN count(c.chain_no) = 0 THEN 'not chained'
                   ELSE format('chained %s times', count(c.chain_no)) END)
FROM ledger_entries e
JOIN accounts a ON a.id = e.account_id AND a.kind = 'user'
LEFT JOIN ledger_chain_links c ON c.transaction_id = e.transaction_id AND c.entry_no = e.entry_no
GROUP BY e.transaction_id, e.entry_no, a.id
HAVING count(c.chain_no) <> 1
ORDER BY a.id, e.transaction_id, e.entry_no LIMIT $1
"""

# (The chained accounts' highest id from each store apart: each max is one probe of its index's
# end, where a max over ledger_chain_links would sort the entries' branch whole.)
BOUNDS_SQL = """
SELECT (SELECT coalesce(min(seq), 1) - 1 FROM transactions) AS seq_low,
       (SELECT coalesce(max(seq), 0) FROM transactions) AS seq_high,
       greatest((SELECT coalesce(max(id), 0) FROM accounts),
                (SELECT coalesce(max(account_id), 0) FROM ledger_chain),
                (SELECT coalesce(max(account_id), 0) FROM ledger_entries WHERE chain_no IS NOT NULL)) AS account_high,
       (SELECT coalesce(max(id), 0) FROM credit_lots) AS lot_high,
       pg_relation_size('ledger_entries') / current_setting('block_size')::bigint AS entry_blocks
"""


@dataclass
class VerifyReport:
    problems: dict[str, list[str]] = field(default_factory=dict)
    user_accounts: int = 0
    transactions: int = 0
    ledger_entries: int = 0
    chain_links: int = 0
    system_balances: list[tuple[str, str, int]] = field(default_factory=list)
    chunks: int = 0  # chunks checked (each a few statements of bounded size)
    connections: int = 1
    # Each user account's last hash-chain link up to `marks_up_to_seq` (when asked; see audit).
    chain_marks: dict[int, int] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not self.problems

    def render(self) -> str:
        lines = [
            f"checked {self.user_accounts} user accounts, {self.transactions} transactions, "
            f"{self.ledger_entries} ledger entries, {self.chain_links} hash-chain links"
        ]
        lines.append("system account balances (derived from the ledger):")
        for system_code, asset_code, balance in self.system_balances:
            lines.append(f"  {asset_code:<16} {system_code:<20} {balance:>20}")
        if self.clean:
            lines.append("OK: the books balance and every hash chain is intact")
            return "\n".join(lines)
        for title, items in self.problems.items():
            lines.append(f"FAIL: {title} ({len(items)} shown, at most {MAX_PROBLEMS_PER_CHECK})")
            lines.extend(f"  - {item}" for item in items)
        return "\n".join(lines)


def _ranges(low: int, high: int, size: int) -> list[tuple[int, int]]:
    """(low, high] in consecutive half-open-below ranges of `size` keys."""
    return [(start, min(start + size, high)) for start in range(low, high, size)]


class _Findings:
    """Problems of one check from many chunks, kept ordered by key, at most the limit."""

    def __init__(self) -> None:
        self.by_title: dict[str, list[tuple[Any, str]]] = defaultdict(list)

    def add(self, title: str, rows: list[asyncpg.Record] | list[tuple[Any, str]]) -> None:
        if rows:
            found = self.by_title[title]
            found.extend((row[0], row[1]) for row in rows)
            found.sort(key=lambda item: item[0])
            del found[MAX_PROBLEMS_PER_CHECK:]


async def verify_ledger(
    conn: asyncpg.Connection,
    *,
    query_timeout_ms: int = AUDIT_QUERY_TIMEOUT_MS_DEFAULT,
    connect: Callable[[], Awaitable[asyncpg.Connection]] | None = None,
    jobs: int = 1,
    marks_up_to_seq: int | None = None,
) -> VerifyReport:
    """Every check in one snapshot, in bounded chunks; with `connect` and `jobs` > 1, on that many
    connections at once (`conn` and jobs - 1 from `connect`, all importing `conn`'s snapshot; as
    many as the server gives).
    Each statement may run `query_timeout_ms` (WALLET_AUDIT_QUERY_TIMEOUT_MS), in the database and
    on the client, whatever the connection's own limits (a pool's are a request's)."""
    timeout_ms = query_timeout_ms
    timeout_s = timeout_ms / 1000 + 1
    report = VerifyReport()
    findings = _Findings()
    extra: list[asyncpg.Connection] = []
    extra_transactions: list[Any] = []
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            await conn.execute(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
            await set_plan_stable(conn)
            workers = [conn]
            if connect is not None and jobs > 1:
                snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
                for _ in range(jobs - 1):
                    try:
                        other = await connect()
                    except (asyncpg.PostgresError, OSError):
                        break  # no more connections to be had (too many clients): on fewer
                    extra.append(other)
                    transaction = other.transaction(isolation="repeatable_read", readonly=True)
                    await transaction.start()
                    extra_transactions.append(transaction)
                    await other.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
                    await other.execute(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
                    await set_plan_stable(other)
                    workers.append(other)
            report.connections = len(workers)
            bounds = await conn.fetchrow(BOUNDS_SQL, timeout=timeout_s)
            assert bounds is not None

            entry_sums: dict[tuple[int, str | None], list[int]] = defaultdict(lambda: [0, 0])
            accounts: dict[int, asyncpg.Record] = {}
            transaction_count = [0]
            chain_counts: dict[int, tuple[int, int]] = {}

            async def entry_chunk(c: asyncpg.Connection, first: int, last: int) -> None:
                for row in await c.fetch(ENTRY_SUMS_SQL, f"({first},0)", f"({last},0)", timeout=timeout_s):
                    sums = entry_sums[(row["account_id"], row["asset_code"])]
                    sums[0] += row["total"]
                    sums[1] += row["entries"]

            async def transaction_chunk(c: asyncpg.Connection, low: int, high: int) -> None:
                for title, rows in (await check_transactions(c, low, high, timeout_s)).items():
                    findings.add(title, rows)
                transaction_count[0] += await c.fetchval(TRANSACTION_COUNT_SQL, low, high, timeout=timeout_s)

            async def account_chunk(c: asyncpg.Connection, low: int, high: int) -> None:
                for title, sql in ACCOUNT_CHECKS:
                    findings.add(
                        title, await c.fetch(sql, MAX_PROBLEMS_PER_CHECK, low, high, timeout=timeout_s)
                    )
                for row in await c.fetch(ACCOUNTS_SQL, low, high, timeout=timeout_s):
                    accounts[row["id"]] = row

            async def lot_chunk(c: asyncpg.Connection, low: int, high: int) -> None:
                findings.add(LOT_MOVEMENTS, await c.fetch(LOT_CHECK_SQL, MAX_PROBLEMS_PER_CHECK, low, high,
                                                          timeout=timeout_s))  # fmt: skip

            async def whole_checks(c: asyncpg.Connection) -> None:
                for title, sql in WHOLE_CHECKS:
                    findings.add(title, await c.fetch(sql, MAX_PROBLEMS_PER_CHECK, timeout=timeout_s))

            async def chain_chunk(c: asyncpg.Connection, low: int, high: int) -> None:
                rows = await c.fetch(CHAIN_SQL, low, high, marks_up_to_seq, timeout=timeout_s)
                findings.add(CHAIN, [(row["account_id"], row["problem"]) for row in rows if row["problem"]])
                for row in rows:
                    chain_counts[row["account_id"]] = (row["chain_length"], row["out_of_order_links"])
                    if row["mark"] is not None:
                        report.chain_marks[row["account_id"]] = row["mark"]

            Job = Callable[[asyncpg.Connection], Awaitable[None]]

            async def run_all(queue: list[Job]) -> None:
                async def worker(c: asyncpg.Connection) -> None:
                    while queue:
                        await queue.pop(0)(c)
                        report.chunks += 1

                async with asyncio.TaskGroup() as group:  # one failing: the others are cancelled
                    for c in workers:
                        group.create_task(worker(c))

            def job(function: Callable[..., Awaitable[None]], *args: int) -> Job:
                return lambda c: function(c, *args)

            first_pass: list[Job] = [
                *(job(entry_chunk, a, b) for a, b in _ranges(0, bounds["entry_blocks"] + 1, ENTRY_BLOCKS_PER_CHUNK)),
                *(job(transaction_chunk, a, b)
                  for a, b in _ranges(bounds["seq_low"], bounds["seq_high"], TRANSACTIONS_PER_CHUNK)),
                *(job(account_chunk, a, b) for a, b in _ranges(0, bounds["account_high"], ACCOUNTS_PER_CHUNK)),
                *(job(lot_chunk, a, b) for a, b in _ranges(0, bounds["lot_high"], LOTS_PER_CHUNK)),
                lambda c: whole_checks(c),
            ]  # fmt: skip
            await run_all(first_pass)

            # The chains, accounts binned by how many user entries each has (as many links).
            per_account: dict[int, int] = defaultdict(int)
            for (account_id, _), (_, entries) in entry_sums.items():
                per_account[account_id] += entries
            bins: list[tuple[int, int]] = []
            low, links = 0, 0
            for account_id in sorted(a for a, row in accounts.items() if row["kind"] == "user"):
                links += per_account.get(account_id, 0)
                if links >= LINKS_PER_CHUNK:
                    bins.append((low, account_id))
                    low, links = account_id, 0
            if low < bounds["account_high"]:
                bins.append((low, bounds["account_high"]))
            await run_all([job(chain_chunk, a, b) for a, b in bins])

            # Cached balances, system balances and each asset's total, from the entries' sums.
            asset_totals: dict[str, int] = defaultdict(int)
            balance_rows: list[tuple[Any, str]] = []
            system_balances: dict[tuple[str, str], int] = {}
            sum_of: dict[int, int] = defaultdict(int)
            for (account_id, asset_code), (total, _) in entry_sums.items():
                if asset_code is None:
                    account = accounts.get(account_id)
                    asset_code = account["asset_code"] if account is not None else "(unknown account)"
                asset_totals[asset_code] += total
                sum_of[account_id] += total
            unchained = False
            for account_id, row in sorted(accounts.items()):
                if row["kind"] == "system":
                    system_balances[(row["system_code"], row["asset_code"])] = sum_of.get(account_id, 0)
                    continue
                report.user_accounts += 1
                if row["balance_minor"] != sum_of.get(account_id, 0):
                    balance_rows.append(
                        (
                            account_id,
                            f"account {account_id} ({row['user_id']} {row['asset_code']}): cached balance "
                            f"{row['balance_minor']}, ledger sum {sum_of.get(account_id, 0)}",
                        )
                    )
                links, out_of_order = chain_counts.get(account_id, (0, 0))
                unchained = unchained or links != per_account.get(account_id, 0) or out_of_order > 0
            if balance_rows:
                findings.by_title[BALANCE_SUM] = balance_rows[:MAX_PROBLEMS_PER_CHECK]
            asset_rows = [
                (code, f"asset {code}: all entries sum to {total}")
                for code, total in sorted(asset_totals.items())
                if total != 0
            ]
            if asset_rows:
                findings.by_title[ASSET_SUM] = asset_rows[:MAX_PROBLEMS_PER_CHECK]
            if unchained or CHAIN in findings.by_title:
                # A problem's details: every user entry against the links naming it (a scan).
                await reset_plan_settings(conn)
                rows = await conn.fetch(NOT_CHAINED_SQL, MAX_PROBLEMS_PER_CHECK, timeout=timeout_s)
                if rows:
                    findings.by_title[NOT_CHAINED] = [(n, row[0]) for n, row in enumerate(rows)]

            report.transactions = transaction_count[0]
            report.ledger_entries = sum(count for _, count in entry_sums.values())
            report.chain_links = sum(links for links, _ in chain_counts.values())
            report.system_balances = [
                (system_code, asset_code, balance)
                for (system_code, asset_code), balance in sorted(
                    system_balances.items(), key=lambda item: (item[0][1], item[0][0])
                )
            ]
            for title in TITLES:
                if findings.by_title.get(title):
                    report.problems[title] = [problem for _, problem in findings.by_title[title]]
    finally:
        for transaction in extra_transactions:
            with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError):
                await transaction.rollback()
        for other in extra:
            await other.close()
    return report
