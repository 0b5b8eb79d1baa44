"""`wallet verify`: recompute the books from the ledger and compare.

The triggers and constraints should make every check here impossible to fail (credit lots
included: they sum to each balance and to their own movements); this is the
independent audit that proves it on a live database, and catches what someone with enough
privilege could still do by hand (disable triggers, edit a cached balance).

The hash chains (migration 0006) are checked link by link: each stored link is recomputed from
the previous stored link and the transaction and entry as they are stored now. An edit of one
transaction or user entry therefore breaks exactly its own link (the next one still follows from
the stored value), and the report names the first broken link of each account's chain. System
entries are not chained; the checks that every entry is what its transaction implies cover them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg

from wallet.settings import AUDIT_QUERY_TIMEOUT_MS_DEFAULT

MAX_PROBLEMS_PER_CHECK = 100

CHECKS: list[tuple[str, str]] = [
    (
        "cached user balance differs from the sum of its ledger entries",
        """
        SELECT format('account %s (%s %s): cached balance %s, ledger sum %s',
                      a.id, a.user_id, a.asset_code, a.balance_minor, coalesce(s.total, 0))
        FROM accounts a
        LEFT JOIN (SELECT account_id, sum(amount_minor) AS total FROM ledger_entries GROUP BY account_id) s
               ON s.account_id = a.id
        WHERE a.kind = 'user' AND a.balance_minor <> coalesce(s.total, 0)
        ORDER BY a.id LIMIT $1
        """,
    ),
    (
        "available balance (balance - held) below zero without an admin-allowed clawback",
        """
        SELECT format('account %s (%s %s): balance %s, held %s',
                      a.id, a.user_id, a.asset_code, a.balance_minor, a.held_minor)
        FROM accounts a
        WHERE a.kind = 'user'
          AND (a.held_minor < 0
               OR (a.held_minor > a.balance_minor AND NOT EXISTS (
                       SELECT 1 FROM transactions t
                       WHERE t.user_id = a.user_id AND t.asset_code = a.asset_code AND t.allow_negative)))
        ORDER BY a.id LIMIT $1
        """,
    ),
    (
        "cached held amount differs from the sum of the account's open holds",
        """
        SELECT format('account %s (%s %s): cached held %s, open holds %s',
                      a.id, a.user_id, a.asset_code, a.held_minor, coalesce(h.total, 0))
        FROM accounts a
        LEFT JOIN (SELECT account_id, sum(amount_minor) AS total FROM holds WHERE status = 'open'
                   GROUP BY account_id) h ON h.account_id = a.id
        WHERE a.kind = 'user' AND a.held_minor <> coalesce(h.total, 0)
        ORDER BY a.id LIMIT $1
        """,
    ),
    (
        "captured hold without its capture transaction, or with another amount",
        """
        SELECT format('hold %s: captured %s, capture transaction %s', h.id, h.captured_amount_minor,
                      coalesce(t.amount_minor::text, 'missing'))
        FROM holds h LEFT JOIN transactions t ON t.id = h.capture_transaction_id AND t.hold_id = h.id
        WHERE h.status = 'captured' AND (t.id IS NULL OR t.amount_minor <> h.captured_amount_minor)
        ORDER BY h.id LIMIT $1
        """,
    ),
    (
        "reversed total differs from the sum of the reversals, or exceeds the original",
        """
        SELECT format('transaction %s (%s of %s): reversals sum %s, recorded %s', o.id, o.type, o.amount_minor,
                      coalesce(s.total, 0), coalesce(r.reversed_amount_minor, 0))
        FROM transactions o
        LEFT JOIN (SELECT reverses, sum(amount_minor) AS total FROM transactions
                   WHERE reverses IS NOT NULL GROUP BY reverses) s ON s.reverses = o.id
        LEFT JOIN reversal_totals r ON r.transaction_id = o.id
        WHERE (s.total IS NOT NULL OR r.transaction_id IS NOT NULL)
          AND (coalesce(s.total, 0) <> coalesce(r.reversed_amount_minor, 0) OR coalesce(s.total, 0) > o.amount_minor)
        ORDER BY o.id LIMIT $1
        """,
    ),
    (
        "transaction entries do not sum to zero, or fewer than two entries",
        """
        SELECT format('transaction %s: %s entries, sum %s in %s', t.id, count(e.entry_no),
                      coalesce(sum(e.amount_minor), 0), coalesce(e.asset_code, t.asset_code))
        FROM transactions t LEFT JOIN ledger_entries e ON e.transaction_id = t.id
        GROUP BY t.id, t.asset_code, e.asset_code
        HAVING coalesce(sum(e.amount_minor), 0) <> 0
            OR (SELECT count(*) FROM ledger_entries x WHERE x.transaction_id = t.id) < 2
        ORDER BY t.id LIMIT $1
        """,
    ),
    (
        "user's entry does not match the transaction's amount and direction",
        """
        SELECT format('transaction %s (%s %s of %s): user entry sum %s',
                      t.id, t.type, t.amount_minor, t.user_id, coalesce(sum(e.amount_minor), 0))
        FROM transactions t
        LEFT JOIN accounts a ON a.user_id = t.user_id AND a.asset_code = t.asset_code
        LEFT JOIN ledger_entries e ON e.transaction_id = t.id AND e.account_id = a.id
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
        "entry on a system account other than the one its transaction's type uses",
        """
        SELECT format('transaction %s (%s of %s %s): entry %s is on %s %s, expected %s',
                      t.id, t.type, t.amount_minor, t.asset_code, e.entry_no, a.system_code, a.asset_code,
                      coalesce(wallet_rule_system_account(coalesce(o.type, t.type)), 'none'))
        FROM ledger_entries e
        JOIN accounts a ON a.id = e.account_id AND a.kind = 'system'
        JOIN transactions t ON t.id = e.transaction_id
        LEFT JOIN transactions o ON o.id = t.reverses AND t.type = 'clawback'
        WHERE a.system_code IS DISTINCT FROM wallet_rule_system_account(coalesce(o.type, t.type))
           OR a.asset_code <> t.asset_code
        ORDER BY t.id, e.entry_no LIMIT $1
        """,
    ),
    (
        "transfer's receiver entry does not match its amount",
        """
        SELECT format('transfer %s (%s to %s): receiver entry sum %s', t.id, t.amount_minor,
                      t.counterparty_user_id, coalesce(sum(e.amount_minor), 0))
        FROM transactions t
        LEFT JOIN accounts a ON a.user_id = t.counterparty_user_id AND a.asset_code = t.asset_code
        LEFT JOIN ledger_entries e ON e.transaction_id = t.id AND e.account_id = a.id
        WHERE t.counterparty_user_id IS NOT NULL
        GROUP BY t.id
        HAVING coalesce(sum(e.amount_minor), 0) <> t.amount_minor
        ORDER BY t.id LIMIT $1
        """,
    ),
    (
        "hash chain broken (the first broken link of each account's chain)",
        # Every link recomputed set-based from the previous stored link (lag over chain_no) and the
        # transaction and entry as stored now, by the same functions the posting trigger uses.
        """
        WITH links AS (
            SELECT c.account_id, c.chain_no, c.transaction_id, c.entry_no, c.link_sha256,
                   lag(c.chain_no) OVER w AS previous_no, lag(c.link_sha256) OVER w AS previous_link,
                   count(*) OVER (PARTITION BY c.account_id) AS chain_length,
                   e.account_id AS entry_account_id,
                   CASE WHEN t.id IS NOT NULL AND e.transaction_id IS NOT NULL
                        THEN wallet_chain_digest(t, e.entry_no, e.account_id, e.asset_code, e.amount_minor)
                   END AS digest
            FROM ledger_chain c
            LEFT JOIN ledger_entries e ON e.transaction_id = c.transaction_id AND e.entry_no = c.entry_no
            LEFT JOIN transactions t ON t.id = c.transaction_id
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
        ), first_broken AS (
            SELECT DISTINCT ON (b.account_id) b.*, count(*) OVER (PARTITION BY b.account_id) AS broken_links
            FROM broken b WHERE b.reason IS NOT NULL
            ORDER BY b.account_id, b.chain_no
        )
        SELECT format('account %s (%s %s): first broken link %s of %s is transaction %s entry %s: %s'
                      ' (%s broken link(s) in this chain)',
                      f.account_id, coalesce(a.user_id, a.system_code, 'unknown account'), a.asset_code,
                      f.chain_no, f.chain_length, f.transaction_id, f.entry_no, f.reason, f.broken_links)
        FROM first_broken f LEFT JOIN accounts a ON a.id = f.account_id
        ORDER BY f.account_id LIMIT $1
        """,
    ),
    (
        "ledger entry on a user account missing from its account's hash chain, or chained twice",
        """
        SELECT format('transaction %s entry %s (account %s, %s %s): %s', e.transaction_id, e.entry_no,
                      a.id, a.user_id, a.asset_code,
                      CASE WHEN count(c.chain_no) = 0 THEN 'not chained'
                           ELSE format('chained %s times', count(c.chain_no)) END)
        FROM ledger_entries e
        JOIN accounts a ON a.id = e.account_id AND a.kind = 'user'
        LEFT JOIN ledger_chain c ON c.transaction_id = e.transaction_id AND c.entry_no = e.entry_no
        GROUP BY e.transaction_id, e.entry_no, a.id
        HAVING count(c.chain_no) <> 1
        ORDER BY a.id, e.transaction_id, e.entry_no LIMIT $1
        """,
    ),
    (
        "open credit lots do not sum to the user's balance (zero while in debt)",
        """
        SELECT format('account %s (%s %s): balance %s, open lots %s',
                      a.id, a.user_id, a.asset_code, a.balance_minor, coalesce(l.total, 0))
        FROM accounts a
        LEFT JOIN (SELECT account_id, sum(remaining_minor) AS total FROM credit_lots GROUP BY account_id) l
               ON l.account_id = a.id
        WHERE a.kind = 'user' AND coalesce(l.total, 0) <> greatest(a.balance_minor, 0)
        ORDER BY a.id LIMIT $1
        """,
    ),
    (
        "credit lot's remaining amount differs from the sum of its movements",
        """
        SELECT format('lot %s (account %s, %s): remaining %s, movements sum %s',
                      l.id, l.account_id, l.origin, l.remaining_minor, coalesce(m.total, 0))
        FROM credit_lots l
        LEFT JOIN (SELECT lot_id, sum(amount_minor) AS total FROM lot_movements GROUP BY lot_id) m
               ON m.lot_id = l.id
        WHERE l.remaining_minor <> coalesce(m.total, 0)
        ORDER BY l.id LIMIT $1
        """,
    ),
    (
        "cached earliest lot expiry of an account differs from its open lots",
        """
        SELECT format('account %s (%s %s): cached %s, open lots %s', a.id, a.user_id, a.asset_code,
                      a.lots_expire_at, l.next_at)
        FROM accounts a
        LEFT JOIN (SELECT account_id, min(expires_at) AS next_at FROM credit_lots
                   WHERE remaining_minor > 0 GROUP BY account_id) l ON l.account_id = a.id
        WHERE a.kind = 'user' AND a.lots_expire_at IS DISTINCT FROM l.next_at
        ORDER BY a.id LIMIT $1
        """,
    ),
    (
        "a transaction's lot movements do not match its entry on a user account",
        # Since lots exist: a debit draws exactly its amount (an admin clawback into debt: at most
        # it); a credit fills its amount less the debt it repaid.
        """
        SELECT format('transaction %s (%s): entry %s on account %s, lots moved %s',
                      t.id, t.type, e.amount_minor, e.account_id, coalesce(m.moved, 0))
        FROM ledger_entries e
        JOIN accounts a ON a.id = e.account_id AND a.kind = 'user'
        JOIN transactions t ON t.id = e.transaction_id
        LEFT JOIN (SELECT mv.transaction_id, l.account_id, sum(mv.amount_minor) AS moved
                   FROM lot_movements mv JOIN credit_lots l ON l.id = mv.lot_id
                   GROUP BY mv.transaction_id, l.account_id) m
               ON m.transaction_id = e.transaction_id AND m.account_id = e.account_id
        WHERE t.seq >= (SELECT first_seq FROM credit_lots_start)
          AND NOT wallet_lots_moved_as_entry(e.amount_minor, coalesce(m.moved, 0), t.allow_negative,
                  CASE WHEN a.user_id = t.user_id THEN t.balance_after_minor
                       ELSE t.counterparty_balance_after_minor END)
        ORDER BY t.id LIMIT $1
        """,
    ),
    (
        "the whole ledger does not sum to zero for an asset",
        """
        SELECT format('asset %s: all entries sum to %s', asset_code, sum(amount_minor))
        FROM ledger_entries GROUP BY asset_code HAVING sum(amount_minor) <> 0
        ORDER BY asset_code LIMIT $1
        """,
    ),
]

SUMMARY_SQL = """
SELECT (SELECT count(*) FROM accounts WHERE kind = 'user') AS user_accounts,
       (SELECT count(*) FROM transactions) AS transactions,
       (SELECT count(*) FROM ledger_entries) AS ledger_entries,
       (SELECT count(*) FROM ledger_chain) AS chain_links
"""

SYSTEM_BALANCES_SQL = """
SELECT a.system_code, a.asset_code, coalesce(sum(e.amount_minor), 0) AS balance_minor
FROM accounts a LEFT JOIN ledger_entries e ON e.account_id = a.id
WHERE a.kind = 'system'
GROUP BY a.system_code, a.asset_code
ORDER BY a.asset_code, a.system_code
"""


@dataclass
class VerifyReport:
    problems: dict[str, list[str]] = field(default_factory=dict)
    user_accounts: int = 0
    transactions: int = 0
    ledger_entries: int = 0
    chain_links: int = 0
    system_balances: list[tuple[str, str, int]] = field(default_factory=list)

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


async def verify_ledger(
    conn: asyncpg.Connection, *, query_timeout_ms: int = AUDIT_QUERY_TIMEOUT_MS_DEFAULT
) -> VerifyReport:
    """Every check in one snapshot. Each query may run `query_timeout_ms`
    (WALLET_AUDIT_QUERY_TIMEOUT_MS), in the database and on the client, whatever the
    connection's own limits (a pool's are a request's)."""
    timeout_ms = query_timeout_ms
    timeout_s = timeout_ms / 1000 + 1
    report = VerifyReport()
    # One snapshot for every check, so concurrent postings cannot produce false alarms.
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        await conn.execute(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
        for title, sql in CHECKS:
            rows = await conn.fetch(sql, MAX_PROBLEMS_PER_CHECK, timeout=timeout_s)
            if rows:
                report.problems[title] = [row[0] for row in rows]
        summary = await conn.fetchrow(SUMMARY_SQL, timeout=timeout_s)
        assert summary is not None
        report.user_accounts = summary["user_accounts"]
        report.transactions = summary["transactions"]
        report.ledger_entries = summary["ledger_entries"]
        report.chain_links = summary["chain_links"]
        report.system_balances = [
            tuple(row) for row in await conn.fetch(SYSTEM_BALANCES_SQL, timeout=timeout_s)
        ]
    return report
