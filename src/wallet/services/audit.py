"""The live audit: the checks of `wallet verify`, run incrementally so they stay cheap on a large
ledger, with the result recorded (audit_runs) and exported as Prometheus gauges.

An incremental run checks, in one snapshot:
  * every transaction posted since the last clean run (seq in (from_seq, to_seq]): its entries
    balance, its user entry and system account are what its type implies, its balance_after
    follows from the account's previous posting, its lot movements match its user entries, and
    the hash-chain links of the touched accounts after the last checked link recompute;
  * every user account's cached figures, which cost one index probe each: the balance equals the
    balance_after of its newest posting, held equals its open holds, its open lots sum to the
    balance, the cached earliest expiry is right, and the lots touched since hold the sum of their
    movements.
Together these imply what the full recomputation proves for everything posted since the last
clean run: a posting that is balanced and continues its account's running balance, on an account
whose cache equals its newest running balance. What they cannot see is an edit, made with the
triggers disabled, of history that was already audited: `full=true` (and `wallet verify`)
recompute everything.

`to_seq` stops short of the transactions of the last `audit_settle_ms`: seq is taken when a
posting writes, not when it commits, so a posting still committing may hold a lower seq than one
already visible; waiting longer than any statement may run means none is skipped. A run that
finds a problem does not move the checkpoint: the next run checks the same range again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import cast

import asyncpg
import orjson
import structlog
from prometheus_client import Counter, Gauge

from wallet.services.verify import CHECKS, MAX_PROBLEMS_PER_CHECK, VerifyReport, verify_ledger
from wallet.settings import Settings

log = structlog.get_logger("wallet.audit")

LEDGER_CONSISTENT = Gauge(
    "wallet_ledger_consistent",
    "1 if the newest audit run (GET /api/v1/audit, or the periodic one) found the books consistent, 0 if not",
)
LAST_CLEAN_AUDIT = Gauge(
    "wallet_ledger_last_clean_audit_timestamp_seconds",
    "Unix time at which the newest audit run that found the books consistent finished (runs that"
    ' failed are counted in wallet_audit_runs_total{result="failed"})',
)
AUDIT_RUNS = Counter(
    "wallet_audit_runs_total",
    "Audit runs of this process by kind (incremental, full) and result: consistent, inconsistent,"
    " or failed (an error ended the run before it recorded anything: a timeout, the database"
    " unreachable; its checks read a read-only snapshot, so concurrent writes cannot fail it)."
    " Failed runs leave the gauges as they were.",
    ["kind", "result"],
)
for _kind in ("incremental", "full"):
    for _result in ("consistent", "inconsistent", "failed"):
        AUDIT_RUNS.labels(_kind, _result)  # each at 0 from the start, so a rate can be taken
LEDGER_CONSISTENT.set(float("nan"))
LAST_CLEAN_AUDIT.set(float("nan"))

# Serialises audit runs across processes: each starts from the checkpoint the previous one left.
_AUDIT_LOCK_KEY = 0x57A11E7A


def _balance_after_newest_posting(owner: str, asset_code: str, condition: str = "true") -> str:
    """The SQL expression for an account's balance after its newest posting (among those meeting
    `condition` on `p`), as its user or as the receiver of a transfer; 0 without one. Two probes
    of the (user, asset, seq) and (counterparty, seq) indexes."""
    return f"""coalesce((SELECT x.after_minor FROM (
                       (SELECT p.seq, p.balance_after_minor AS after_minor FROM transactions p
                         WHERE p.user_id = {owner} AND p.asset_code = {asset_code} AND {condition}
                         ORDER BY p.user_id, p.asset_code, p.seq DESC LIMIT 1)
                       UNION ALL
                       (SELECT p.seq, p.counterparty_balance_after_minor FROM transactions p
                         WHERE p.counterparty_user_id = {owner} AND p.asset_code = {asset_code} AND {condition}
                         ORDER BY p.counterparty_user_id, p.seq DESC LIMIT 1)) x
                     ORDER BY x.seq DESC LIMIT 1), 0)"""


# $1: from_seq (exclusive), $2: to_seq (inclusive), $3: at most this many problems per check.
# Each check starts from the range (the seq index) and probes by key from there: ordered by id,
# three of them had walked the whole transactions table in key order, and one every credit lot,
# so a run's cost grew with the ledger instead of with what it checks (docs/PERFORMANCE.md).
_IN_RANGE = "t.seq > $1 AND t.seq <= $2"

INCREMENTAL_CHECKS: list[tuple[str, str]] = [
    (
        "transaction entries do not sum to zero, or fewer than two entries",
        f"""
        SELECT format('transaction %s: %s entries, sum %s', t.id, count(e.entry_no), coalesce(sum(e.amount_minor), 0))
        FROM transactions t LEFT JOIN ledger_entries e ON e.transaction_id = t.id
        WHERE {_IN_RANGE}
        GROUP BY t.seq, t.id
        HAVING coalesce(sum(e.amount_minor), 0) <> 0 OR count(e.entry_no) < 2
        ORDER BY t.seq LIMIT $3
        """,
    ),
    (
        "user's entry does not match the transaction's amount and direction",
        f"""
        SELECT format('transaction %s (%s %s of %s): user entry sum %s',
                      t.id, t.type, t.amount_minor, t.user_id, coalesce(sum(e.amount_minor), 0))
        FROM transactions t
        LEFT JOIN accounts a ON a.user_id = t.user_id AND a.asset_code = t.asset_code
        LEFT JOIN ledger_entries e ON e.transaction_id = t.id AND e.account_id = a.id
        WHERE {_IN_RANGE}
        GROUP BY t.seq, t.id, t.type, t.amount_minor, t.user_id
        HAVING coalesce(sum(e.amount_minor), 0) <> wallet_rule_user_sign(t.type) * t.amount_minor - t.fee_minor
        ORDER BY t.seq LIMIT $3
        """,
    ),
    (
        "entry on a system account other than the one its transaction's type uses",
        f"""
        SELECT format('transaction %s (%s): entry %s is on %s %s', t.id, t.type, e.entry_no, a.system_code, a.asset_code)
        FROM transactions t
        JOIN ledger_entries e ON e.transaction_id = t.id
        JOIN accounts a ON a.id = e.account_id AND a.kind = 'system'
        LEFT JOIN transactions o ON o.id = t.reverses AND t.type = 'clawback'
        WHERE {_IN_RANGE}
          AND (a.system_code IS DISTINCT FROM wallet_rule_system_account(coalesce(o.type, t.type))
               OR a.asset_code <> t.asset_code)
        ORDER BY t.id, e.entry_no LIMIT $3
        """,
    ),
    (
        "transfer's receiver entry does not match its amount",
        f"""
        SELECT format('transfer %s (%s to %s): receiver entry sum %s', t.id, t.amount_minor,
                      t.counterparty_user_id, coalesce(sum(e.amount_minor), 0))
        FROM transactions t
        LEFT JOIN accounts a ON a.user_id = t.counterparty_user_id AND a.asset_code = t.asset_code
        LEFT JOIN ledger_entries e ON e.transaction_id = t.id AND e.account_id = a.id
        WHERE {_IN_RANGE} AND t.counterparty_user_id IS NOT NULL
        GROUP BY t.id
        HAVING coalesce(sum(e.amount_minor), 0) <> t.amount_minor
        ORDER BY t.id LIMIT $3
        """,
    ),
    (
        "balance_after does not follow from the account's previous posting",
        f"""
        WITH sides AS (
            SELECT t.seq, t.id, t.user_id AS owner, t.asset_code, t.balance_after_minor AS after_minor,
                   wallet_rule_user_sign(t.type) * t.amount_minor - t.fee_minor AS delta_minor
              FROM transactions t WHERE {_IN_RANGE}
            UNION ALL
            SELECT t.seq, t.id, t.counterparty_user_id, t.asset_code, t.counterparty_balance_after_minor,
                   t.amount_minor
              FROM transactions t WHERE {_IN_RANGE} AND t.counterparty_user_id IS NOT NULL
        )
        SELECT format('transaction %s (%s %s): balance before %s, change %s, balance_after %s',
                      s.id, s.owner, s.asset_code, b.before_minor, s.delta_minor, s.after_minor)
        FROM sides s
        CROSS JOIN LATERAL (
            SELECT {_balance_after_newest_posting("s.owner", "s.asset_code", "p.seq < s.seq")} AS before_minor
        ) b
        WHERE b.before_minor + s.delta_minor <> s.after_minor
        ORDER BY s.seq LIMIT $3
        """,
    ),
    (
        "a transaction's lot movements do not match its entry on a user account",
        f"""
        SELECT format('transaction %s (%s): entry %s on account %s, lots moved %s',
                      t.id, t.type, e.amount_minor, e.account_id, m.moved)
        FROM transactions t
        JOIN ledger_entries e ON e.transaction_id = t.id
        JOIN accounts a ON a.id = e.account_id AND a.kind = 'user'
        CROSS JOIN LATERAL (
            SELECT coalesce(sum(mv.amount_minor), 0) AS moved
              FROM lot_movements mv JOIN credit_lots l ON l.id = mv.lot_id
             WHERE mv.transaction_id = t.id AND l.account_id = e.account_id) m
        WHERE {_IN_RANGE} AND t.seq >= (SELECT first_seq FROM credit_lots_start)
          AND NOT wallet_lots_moved_as_entry(e.amount_minor, m.moved, t.allow_negative,
                  CASE WHEN a.user_id = t.user_id THEN t.balance_after_minor
                       ELSE t.counterparty_balance_after_minor END)
        ORDER BY t.seq LIMIT $3
        """,
    ),
    (
        "credit lot's remaining amount differs from the sum of its movements",
        f"""
        SELECT format('lot %s (account %s, %s): remaining %s, movements sum %s',
                      l.id, l.account_id, l.origin, l.remaining_minor, m.total)
        FROM (SELECT DISTINCT mv.lot_id FROM transactions t JOIN lot_movements mv ON mv.transaction_id = t.id
               WHERE {_IN_RANGE}) AS touched
        CROSS JOIN LATERAL (SELECT x.* FROM credit_lots x WHERE x.id = touched.lot_id LIMIT 1) AS l
        CROSS JOIN LATERAL (SELECT coalesce(sum(x.amount_minor), 0) AS total FROM lot_movements x
                             WHERE x.lot_id = l.id) m
        WHERE l.remaining_minor <> m.total
        ORDER BY l.id LIMIT $3
        """,
    ),
    (
        "hash chain broken after the last audited link",
        # The links of the accounts touched in the range, from the last link a clean run checked.
        f"""
        WITH touched AS (
            SELECT DISTINCT e.account_id
              FROM transactions t JOIN ledger_entries e ON e.transaction_id = t.id
              JOIN accounts a ON a.id = e.account_id AND a.kind = 'user'
             WHERE {_IN_RANGE}
        )
        SELECT format('account %s: link %s (transaction %s entry %s): %s', c.account_id, c.chain_no,
                      c.transaction_id, c.entry_no,
                      CASE WHEN e.transaction_id IS NULL THEN 'its transaction or entry is missing'
                           WHEN p.chain_no IS NULL AND c.chain_no > 1 THEN 'the link before it is missing'
                           ELSE 'the stored link does not match the transaction and entry as stored now' END)
        FROM touched
        LEFT JOIN audit_chain_marks k ON k.account_id = touched.account_id
        JOIN ledger_chain c ON c.account_id = touched.account_id AND c.chain_no > coalesce(k.chain_no, 0)
        LEFT JOIN ledger_chain p ON p.account_id = c.account_id AND p.chain_no = c.chain_no - 1
        LEFT JOIN ledger_entries e ON e.transaction_id = c.transaction_id AND e.entry_no = c.entry_no
                                  AND e.account_id = c.account_id
        LEFT JOIN transactions t ON t.id = c.transaction_id
        WHERE e.transaction_id IS NULL OR t.id IS NULL
           OR (p.chain_no IS NULL AND c.chain_no > 1)
           OR c.link_sha256 <> wallet_chain_link(p.link_sha256,
                                                 wallet_chain_digest(t, e.entry_no, e.account_id, e.asset_code, e.amount_minor))
        ORDER BY c.account_id, c.chain_no LIMIT $3
        """,
    ),
]

# Account-level checks, whole on every incremental run: the newest posting of each account is one
# index probe; the others are `wallet verify`'s own (one probe per account, or a scan of the small
# lots table). Each takes the problem limit as $1.
ACCOUNT_CHECKS: list[tuple[str, str]] = [
    (
        "cached user balance differs from the balance after its newest posting",
        f"""
        SELECT format('account %s (%s %s): cached balance %s, newest posting leaves %s',
                      a.id, a.user_id, a.asset_code, a.balance_minor, n.after_minor)
        FROM accounts a
        CROSS JOIN LATERAL (
            SELECT {_balance_after_newest_posting("a.user_id", "a.asset_code")} AS after_minor
        ) n
        WHERE a.kind = 'user' AND a.balance_minor <> n.after_minor
        ORDER BY a.id LIMIT $1
        """,
    ),
    *(
        (title, sql)
        for title, sql in CHECKS
        if title
        in (
            "available balance (balance - held) below zero without an admin-allowed clawback",
            "cached held amount differs from the sum of the account's open holds",
            "open credit lots do not sum to the user's balance (zero while in debt)",
            "cached earliest lot expiry of an account differs from its open lots",
        )
    ),
]


@dataclass
class AuditResult:
    kind: str  # "incremental" or "full"
    consistent: bool
    from_seq: int  # transactions with seq in (from_seq, to_seq] were checked
    to_seq: int
    started_at: datetime
    finished_at: datetime
    last_clean_at: datetime | None
    problems: dict[str, list[str]] = field(default_factory=dict)
    verify_report: VerifyReport | None = None  # full runs: `wallet verify`'s own report


async def run_audit(
    pool: asyncpg.Pool, settings: Settings, *, full: bool = False, query_timeout_ms: int | None = None
) -> AuditResult:
    """One audit run (incremental unless `full`), recorded in audit_runs and in the gauges. Each
    query, and the wait for a run in progress elsewhere, may take `query_timeout_ms`: by default
    WALLET_AUDIT_QUERY_TIMEOUT_MS (the periodic run), a request's statement timeout when a
    request asked for it (a TimeoutError past it)."""
    timeout_ms = query_timeout_ms or settings.audit_query_timeout_ms
    kind = "full" if full else "incremental"
    try:
        async with pool.acquire() as conn:
            run = _run_full if full else _run_incremental
            result = await run(cast(asyncpg.Connection, conn), settings, timeout_ms)
    except Exception:
        AUDIT_RUNS.labels(kind, "failed").inc()
        raise
    AUDIT_RUNS.labels(kind, "consistent" if result.consistent else "inconsistent").inc()
    return result


_SETTLED_SEQ_SQL = (
    "SELECT coalesce(max(seq), $1) FROM transactions"
    " WHERE seq > $1 AND created_at < clock_timestamp() - make_interval(secs => $2)"
)


@asynccontextmanager
async def _audit_turn(conn: asyncpg.Connection, timeout_ms: int) -> AsyncIterator[None]:
    """Waits for a run in progress elsewhere (they take turns), then holds the turn for the whole
    run: a session-level advisory lock, taken before the run's snapshot so that the snapshot sees
    what the previous run recorded. (Taken inside the snapshot's own transaction, as before, the
    snapshot began with the statement that waited, before the previous run committed.)"""
    async with conn.transaction():
        await conn.execute(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
        await conn.execute(f"SET LOCAL lock_timeout = {int(timeout_ms)}")
        await conn.execute("SELECT pg_advisory_lock($1)", _AUDIT_LOCK_KEY, timeout=timeout_ms / 1000 + 1)
    try:
        yield
    finally:
        # On a broken connection the lock went with the session; the pool's reset of a connection
        # it takes back releases every advisory lock in any case.
        with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            await conn.execute("SELECT pg_advisory_unlock($1)", _AUDIT_LOCK_KEY)


_CHAIN_MARKS_SQL = """
SELECT c.account_id, max(c.chain_no) AS chain_no FROM ledger_chain c
 WHERE c.account_id IN (SELECT DISTINCT e.account_id FROM transactions t
                          JOIN ledger_entries e ON e.transaction_id = t.id
                         WHERE t.seq > $1 AND t.seq <= $2)
 GROUP BY c.account_id
"""


async def _run_incremental(conn: asyncpg.Connection, settings: Settings, timeout_ms: int) -> AuditResult:
    # Each query may take up to the run's own limit (the pool's may be shorter).
    timeout_s = timeout_ms / 1000 + 1
    async with _audit_turn(conn, timeout_ms):
        # One snapshot for every check, so concurrent postings cannot produce false alarms. It is
        # read-only: a repeatable-read transaction fails with SerializationError only when it
        # writes a row changed since its snapshot, so one that writes nothing cannot fail however
        # busy the ledger is. What the run records is written after, in a transaction of its own.
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            await conn.execute(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
            started_at = await conn.fetchval("SELECT clock_timestamp()")
            from_seq = await conn.fetchval(
                "SELECT coalesce((SELECT to_seq FROM audit_runs WHERE consistent ORDER BY id DESC LIMIT 1), 0)"
            )
            to_seq = await conn.fetchval(
                _SETTLED_SEQ_SQL, from_seq, settings.audit_settle_ms / 1000, timeout=timeout_s
            )
            problems: dict[str, list[str]] = {}
            for title, sql in ACCOUNT_CHECKS:
                rows = await conn.fetch(sql, MAX_PROBLEMS_PER_CHECK, timeout=timeout_s)
                if rows:
                    problems[title] = [row[0] for row in rows]
            for title, sql in INCREMENTAL_CHECKS:
                rows = await conn.fetch(sql, from_seq, to_seq, MAX_PROBLEMS_PER_CHECK, timeout=timeout_s)
                if rows:
                    problems.setdefault(title, []).extend(row[0] for row in rows)
            # The touched accounts' chains are checked up to their newest link in this snapshot
            # (read here: links appended since are not checked).
            marks = (
                [] if problems else await conn.fetch(_CHAIN_MARKS_SQL, from_seq, to_seq, timeout=timeout_s)
            )
        async with conn.transaction():
            await conn.execute(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
            await conn.execute(
                """
                INSERT INTO audit_chain_marks AS k (account_id, chain_no)
                SELECT * FROM unnest($1::bigint[], $2::bigint[])
                ON CONFLICT (account_id) DO UPDATE SET chain_no = greatest(k.chain_no, EXCLUDED.chain_no)
                """,
                [m["account_id"] for m in marks],
                [m["chain_no"] for m in marks],
                timeout=timeout_s,
            )
            return await _record(conn, "incremental", from_seq, to_seq, started_at, problems, None)


async def _run_full(conn: asyncpg.Connection, settings: Settings, timeout_ms: int) -> AuditResult:
    """`wallet verify` in full. Every transaction up to `to_seq` (taken before its snapshot, so
    all visible in it) is then checked; the hash-chain marks stay where they are (links posted
    meanwhile are not in the snapshot), so the next incremental run re-checks those chains."""
    timeout_s = timeout_ms / 1000 + 1
    started_at = await conn.fetchval("SELECT clock_timestamp()")
    to_seq = await conn.fetchval(_SETTLED_SEQ_SQL, 0, settings.audit_settle_ms / 1000, timeout=timeout_s)
    report = await verify_ledger(conn, query_timeout_ms=timeout_ms)
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = {int(timeout_ms)}")
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _AUDIT_LOCK_KEY, timeout=timeout_s)
        return await _record(conn, "full", 0, to_seq, started_at, report.problems, report)


async def _record(
    conn: asyncpg.Connection,
    kind: str,
    from_seq: int,
    to_seq: int,
    started_at: datetime,
    problems: dict[str, list[str]],
    report: VerifyReport | None,
) -> AuditResult:
    consistent = not problems
    finished_at = await conn.fetchval(
        "INSERT INTO audit_runs (kind, from_seq, to_seq, consistent, problems, started_at)"
        " VALUES ($1, $2, $3, $4, $5::jsonb, $6) RETURNING finished_at",
        kind,
        from_seq,
        to_seq,
        consistent,
        orjson.dumps(problems).decode(),
        started_at,
    )
    last_clean_at = await conn.fetchval("SELECT max(finished_at) FROM audit_runs WHERE consistent")
    _set_gauges(consistent, last_clean_at)
    if not consistent:
        log.error("ledger_inconsistent", kind=kind, checks=list(problems), from_seq=from_seq, to_seq=to_seq)
    return AuditResult(
        kind, consistent, from_seq, to_seq, started_at, finished_at, last_clean_at, problems, report
    )


def _set_gauges(consistent: bool | None, last_clean_at: datetime | None) -> None:
    LEDGER_CONSISTENT.set(float("nan") if consistent is None else float(consistent))
    LAST_CLEAN_AUDIT.set(last_clean_at.timestamp() if last_clean_at else float("nan"))


async def refresh_gauges(pool: asyncpg.Pool) -> None:
    """The gauges from the newest recorded run (whichever process ran it)."""
    row = await pool.fetchrow(
        "SELECT (SELECT consistent FROM audit_runs ORDER BY id DESC LIMIT 1) AS consistent,"
        " (SELECT max(finished_at) FROM audit_runs WHERE consistent) AS last_clean_at"
    )
    assert row is not None
    _set_gauges(row["consistent"], row["last_clean_at"])


async def run_auditor(pool: asyncpg.Pool, settings: Settings) -> None:
    """Background task of each worker: an incremental audit every `audit_interval_ms` (the
    processes take turns through the advisory lock; each run picks up where the last ended)."""
    interval_s = settings.audit_interval_ms / 1000
    while True:
        await asyncio.sleep(interval_s)
        try:
            await run_audit(pool, settings)
        except Exception as exc:  # a run that fails is retried by the next one
            log.warning("audit_failed", error=type(exc).__name__)
