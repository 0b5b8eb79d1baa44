"""`wallet verify`: recompute the books from the ledger and compare.

The triggers and constraints should make every check here impossible to fail; this is the
independent audit that proves it on a live database, and catches what someone with enough
privilege could still do by hand (disable triggers, edit a cached balance).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg

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
       (SELECT count(*) FROM ledger_entries) AS ledger_entries
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
    system_balances: list[tuple[str, str, int]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems

    def render(self) -> str:
        lines = [
            f"checked {self.user_accounts} user accounts, {self.transactions} transactions, "
            f"{self.ledger_entries} ledger entries"
        ]
        lines.append("system account balances (derived from the ledger):")
        for system_code, asset_code, balance in self.system_balances:
            lines.append(f"  {asset_code:<16} {system_code:<20} {balance:>20}")
        if self.clean:
            lines.append("OK: the books balance")
            return "\n".join(lines)
        for title, items in self.problems.items():
            lines.append(f"FAIL: {title} ({len(items)} shown, at most {MAX_PROBLEMS_PER_CHECK})")
            lines.extend(f"  - {item}" for item in items)
        return "\n".join(lines)


async def verify_ledger(conn: asyncpg.Connection) -> VerifyReport:
    report = VerifyReport()
    # One snapshot for every check, so concurrent postings cannot produce false alarms.
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        await conn.execute("SET LOCAL statement_timeout = 0")
        for title, sql in CHECKS:
            rows = await conn.fetch(sql, MAX_PROBLEMS_PER_CHECK)
            if rows:
                report.problems[title] = [row[0] for row in rows]
        summary = await conn.fetchrow(SUMMARY_SQL)
        assert summary is not None
        report.user_accounts = summary["user_accounts"]
        report.transactions = summary["transactions"]
        report.ledger_entries = summary["ledger_entries"]
        report.system_balances = [tuple(row) for row in await conn.fetch(SYSTEM_BALANCES_SQL)]
    return report
