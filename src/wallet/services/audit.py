"""The live audit: the checks of `wallet verify`, run incrementally so they stay cheap on a large
ledger, with the result recorded (audit_runs) and exported as Prometheus gauges.

An incremental run checks, chunk by chunk (issue 20), every transaction posted since the last
clean run, in ranges of at most WALLET_AUDIT_CHUNK_TRANSACTIONS transactions by seq: each chunk
in one snapshot of its own, its statements index probes along its range whatever the statistics
say (verify.set_plan_stable), and its result committed as an audit_runs row, so the checkpoint
moves with every clean chunk and a run stopped midway (a restart, a timeout) resumes where it
stopped. The periodic run rests after each chunk as long as the chunk took (at least
WALLET_AUDIT_CHUNK_PAUSE_MS), whichever process ran it, so the processes together audit at most
half the time and requests keep the rest of the CPU, and goes on until it has caught up; a request (GET /api/v1/audit) stops starting chunks
after its statement timeout and says how far it got. Processes take turns chunk by chunk.
A chunk checks:
  * its transactions: their entries balance, the user entry and system account are what the type
    implies, balance_after follows from the account's previous posting, the lot movements match
    the user entries, and the hash-chain links of the touched accounts after the last checked
    link (as many as the chunk has entries on the account) recompute;
and the last chunk of a run also:
  * every user account's cached figures, which cost one index probe each: the balance equals the
    balance_after of its newest posting, held equals its open holds, its open lots sum to the
    balance, the cached earliest expiry is right (in ranges of account ids);
  * the lots the run's chunks touched: each holds the sum of its movements.
Together these imply what the full recomputation proves for everything posted since the last
clean run: a posting that is balanced and continues its account's running balance, on an account
whose cache equals its newest running balance. What they cannot see is an edit, made with the
triggers disabled, of history that was already audited: `full=true` (and `wallet verify`)
recompute everything.

`to_seq` stops short of the transactions of the last `audit_settle_ms`: seq is taken when a
posting writes, not when it commits, so a posting still committing may hold a lower seq than one
already visible; waiting longer than any statement may run means none is skipped. A run that
finds a problem does not move the checkpoint: its row covers the run from where it started, and
the next run checks the same range again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import cast

import asyncpg
import orjson
import structlog
from prometheus_client import Counter, Gauge

from wallet.services.verify import (
    ACCOUNT_CHECKS as VERIFY_ACCOUNT_CHECKS,
)
from wallet.services.verify import (
    LOT_CHECK_SQL_FOR,
    LOT_MOVEMENTS,
    MAX_PROBLEMS_PER_CHECK,
    VerifyReport,
    check_transactions,
    set_plan_stable,
    verify_ledger,
)
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
# Everything past the range is reached by LATERAL, never by a join the planner may turn around.
_IN_RANGE = "t.seq > $1 AND t.seq <= $2"

# The checks of one chunk's transactions are `wallet verify`'s (verify.check_transactions: their
# entries balance, the user's entry and the system account are what the type implies, a transfer's
# receiver got its amount, the lot movements match the user entries), and this one of its own.
INCREMENTAL_CHECKS: list[tuple[str, str]] = [
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
]

# Account-level checks, on every user account in the last chunk of a run, in ranges of account ids
# ($2 < id <= $3): the newest posting of each account is one index probe; the others are
# `wallet verify`'s own (one probe of the account's holds or lots each). $1: the problem limit;
# each row is (key, problem).
ACCOUNT_CHECKS: list[tuple[str, str]] = [
    (
        "cached user balance differs from the balance after its newest posting",
        f"""
        SELECT a.id AS key, format('account %s (%s %s): cached balance %s, newest posting leaves %s',
                      a.id, a.user_id, a.asset_code, a.balance_minor, n.after_minor)
        FROM accounts a
        CROSS JOIN LATERAL (
            SELECT {_balance_after_newest_posting("a.user_id", "a.asset_code")} AS after_minor
        ) n
        WHERE a.kind = 'user' AND a.id > $2 AND a.id <= $3 AND a.balance_minor <> n.after_minor
        ORDER BY a.id LIMIT $1
        """,
    ),
    *VERIFY_ACCOUNT_CHECKS,
]
ACCOUNTS_PER_CHUNK = 5_000

# The lots a chunk's transactions moved ($1 < seq <= $2), checked in the run's last chunk.
_TOUCHED_LOTS_SQL = f"""
SELECT DISTINCT mv.lot_id FROM transactions t
 CROSS JOIN LATERAL (SELECT x.lot_id FROM lot_movements x WHERE x.transaction_id = t.id) mv
 WHERE {_IN_RANGE}
"""
_LOTS_CHECK_SQL = LOT_CHECK_SQL_FOR.format(lots="l.id = ANY ($2::bigint[])")
LOTS_PER_CHUNK = 5_000

CHAIN_TITLE = "hash chain broken after the last audited link"
# The links of the accounts a chunk ($1 < seq <= $2) touched: from the last link a clean run
# checked (audit_chain_marks), as many as the chunk has entries on the account (per account,
# links follow seq: the account's row lock orders its postings), or all of them up to the chunk
# for the accounts in $3 (their mark lags: a link of the window was checked already). Links of
# later transactions are left to their chunk. Per link: its account, whether it is past the
# mark's window end (lags), and its problem if any; with the number of the chunk's entries on
# the account (n), which as many links of the chunk's transactions must match (an account without
# any: one row, its link NULL). Each window is one index range: an OR in
# its condition had made every chunk read each touched chain to its end (quadratic in a backlog).
_CHAIN_SQL = f"""
WITH touched AS (
    SELECT e.account_id, count(*) AS n
      FROM transactions t
     CROSS JOIN LATERAL (SELECT x.account_id FROM ledger_entries x WHERE x.transaction_id = t.id) e
     CROSS JOIN LATERAL (SELECT 1 FROM accounts x WHERE x.id = e.account_id AND x.kind = 'user' LIMIT 1) a
     WHERE {_IN_RANGE}
     GROUP BY e.account_id
)
SELECT touched.account_id, touched.n, c.chain_no, t.seq, t.seq <= $1 AS lags,
       CASE WHEN c.chain_no IS NULL THEN NULL
            WHEN e.transaction_id IS NULL OR t.id IS NULL THEN 'its transaction or entry is missing'
            WHEN p.chain_no IS NULL AND c.chain_no > 1 THEN 'the link before it is missing'
            WHEN c.link_sha256 <> wallet_chain_link(p.link_sha256, wallet_chain_digest(t, e.entry_no, e.account_id,
                                                                                      e.asset_code, e.amount_minor))
                THEN 'the stored link does not match the transaction and entry as stored now'
       END AS reason, c.transaction_id, c.entry_no
FROM touched
LEFT JOIN LATERAL (SELECT k.chain_no FROM audit_chain_marks k WHERE k.account_id = touched.account_id LIMIT 1) k
  ON true
LEFT JOIN LATERAL (
    (SELECT x.* FROM ledger_chain_links x
      WHERE x.account_id = touched.account_id AND x.chain_no > coalesce(k.chain_no, 0)
        AND x.chain_no <= coalesce(k.chain_no, 0) + touched.n)
    UNION ALL
    (SELECT x.* FROM ledger_chain_links x
      WHERE touched.account_id = ANY ($3::bigint[]) AND x.account_id = touched.account_id
        AND x.chain_no > coalesce(k.chain_no, 0) + touched.n)) c ON true
-- (LATERAL: a join condition does not reach into the view's branches; a parameter does, and each
-- branch is then one probe of its index)
LEFT JOIN LATERAL (SELECT x.chain_no, x.link_sha256 FROM ledger_chain_links x
                    WHERE x.account_id = c.account_id AND x.chain_no = c.chain_no - 1 LIMIT 1) p ON true
LEFT JOIN ledger_entries e ON e.transaction_id = c.transaction_id AND e.entry_no = c.entry_no
                          AND e.account_id = c.account_id
LEFT JOIN transactions t ON t.id = c.transaction_id
ORDER BY touched.account_id, c.chain_no
"""


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
    chunks: int = 0  # incremental: chunks checked (each its own snapshot and audit_runs row)
    caught_up: bool = True  # incremental: every settled transaction is checked


async def run_audit(
    pool: asyncpg.Pool,
    settings: Settings,
    *,
    full: bool = False,
    query_timeout_ms: int | None = None,
    max_run_ms: int | None = None,
    pause_ms: int = 0,
) -> AuditResult:
    """One audit run (incremental unless `full`), recorded in audit_runs and in the gauges. Each
    query, and the wait for a run in progress elsewhere, may take `query_timeout_ms`: by default
    WALLET_AUDIT_QUERY_TIMEOUT_MS (the periodic run), a request's statement timeout when a
    request asked for it (a TimeoutError past it). An incremental run goes on chunk after chunk
    (`pause_ms` between them) until it has caught up, or until `max_run_ms` have passed, the
    chunk under way finishing."""
    timeout_ms = query_timeout_ms or settings.audit_query_timeout_ms
    kind = "full" if full else "incremental"
    try:
        async with pool.acquire() as conn:
            if full:
                result = await _run_full(cast(asyncpg.Connection, conn), settings, timeout_ms)
            else:
                result = await _run_incremental(
                    cast(asyncpg.Connection, conn), settings, timeout_ms, max_run_ms, pause_ms
                )
    except Exception:
        AUDIT_RUNS.labels(kind, "failed").inc()
        raise
    AUDIT_RUNS.labels(kind, "consistent" if result.consistent else "inconsistent").inc()
    return result


# Where the next incremental run starts: the end of the newest clean run (incremental or full),
# or where the newest incremental run started if it found a problem.
_CHECKPOINT_SQL = """
SELECT coalesce((SELECT CASE WHEN r.consistent THEN r.to_seq ELSE r.from_seq END FROM audit_runs r
                  WHERE r.kind = 'incremental' OR r.consistent ORDER BY r.id DESC LIMIT 1), 0)
"""

# The end of the next chunk: the last of the next $2 transactions after $1 older than $3 seconds,
# how many there were, and whether they all were (if so and $2 of them, more may follow).
_CHUNK_END_SQL = """
SELECT coalesce(max(x.seq) FILTER (WHERE x.settled), $1) AS to_seq, count(*) AS transactions,
       coalesce(bool_and(x.settled), true) AS settled
  FROM (SELECT t.seq, t.created_at < clock_timestamp() - make_interval(secs => $3) AS settled
          FROM transactions t WHERE t.seq > $1 ORDER BY t.seq LIMIT $2) x
"""


# How long the audit still rests (seconds; <= 0: not at all): after the newest chunk, whichever
# process or request ran it, as long as that chunk took and at least $1 seconds.
_REST_LEFT_SQL = """
SELECT coalesce((SELECT extract(epoch FROM r.finished_at + greatest(r.finished_at - r.started_at,
                                                                   make_interval(secs => $1))
                                   - clock_timestamp())::float8
                   FROM audit_runs r WHERE r.kind = 'incremental' ORDER BY r.id DESC LIMIT 1), 0)
"""


async def _rest(conn: asyncpg.Connection, pause_ms: int, timeout_s: float) -> None:
    """Waits out the audit's rest after the newest chunk (outside the turn: a request's run, which
    does not rest, gets the turn meanwhile)."""
    left = await conn.fetchval(_REST_LEFT_SQL, pause_ms / 1000, timeout=timeout_s)
    if left > 0:
        await asyncio.sleep(left)


@asynccontextmanager
async def _audit_turn(conn: asyncpg.Connection, timeout_ms: int) -> AsyncIterator[None]:
    """Waits for a chunk in progress elsewhere (they take turns), then holds the turn for a
    chunk: a session-level advisory lock, taken before the chunk's snapshot so that the snapshot
    sees what the previous chunk recorded. (Taken inside the snapshot's own transaction, the
    snapshot would begin with the statement that waited, before the previous chunk committed.)"""
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


async def _check_chain(
    conn: asyncpg.Connection, from_seq: int, to_seq: int, problems: dict[str, list[str]], timeout_s: float
) -> dict[int, int]:
    """The chunk's hash-chain links (_CHAIN_SQL); returns each touched account's new mark."""
    rows = await conn.fetch(_CHAIN_SQL, from_seq, to_seq, [], timeout=timeout_s)
    lagging = sorted({row["account_id"] for row in rows if row["lags"]})
    if lagging:  # marks behind the chunk (set before issue 20): those chains up to the chunk, whole
        rows = [row for row in rows if row["account_id"] not in lagging] + [
            row
            for row in await conn.fetch(_CHAIN_SQL, from_seq, to_seq, lagging, timeout=timeout_s)
            if row["account_id"] in lagging
        ]
    marks: dict[int, int] = {}
    found: list[str] = []
    entries: dict[int, int] = {}  # per touched account: the chunk's entries on it
    links: dict[int, int] = defaultdict(int)  # per touched account: its links of the chunk's transactions
    for row in rows:
        entries[row["account_id"]] = row["n"]
        if row["chain_no"] is None:
            continue  # no link in the window
        if row["seq"] is not None and row["seq"] > to_seq:
            continue  # a later chunk's link
        if row["seq"] is not None and row["seq"] > from_seq:
            links[row["account_id"]] += 1
        if row["reason"] is not None:
            found.append(
                f"account {row['account_id']}: link {row['chain_no']} (transaction {row['transaction_id']}"
                f" entry {row['entry_no']}): {row['reason']}"
            )
        marks[row["account_id"]] = max(marks.get(row["account_id"], 0), row["chain_no"])
    # Every entry of the chunk on a user account is chained, once (the posting core writes the
    # link with the entry; the entries' check refuses one without): an entry written behind the
    # triggers without its link, a link removed, or one stored twice shows here.
    for account_id, count in sorted(entries.items()):
        if links[account_id] != count:
            found.append(
                f"account {account_id}: {links[account_id]} link(s) for the {count} entries of the checked"
                " transactions on it (an entry not chained, or chained twice)"
            )
    if found:
        problems[CHAIN_TITLE] = found[:MAX_PROBLEMS_PER_CHECK]
    return marks


async def _check_accounts_and_lots(
    conn: asyncpg.Connection, lots: set[int], problems: dict[str, list[str]], timeout_s: float
) -> None:
    """A run's last step: every user account's cached figures, in ranges of ids, and the lots the
    run's chunks moved."""
    high = await conn.fetchval("SELECT coalesce(max(id), 0) FROM accounts", timeout=timeout_s)
    for low in range(0, high, ACCOUNTS_PER_CHUNK):
        for title, sql in ACCOUNT_CHECKS:
            rows = await conn.fetch(
                sql, MAX_PROBLEMS_PER_CHECK, low, min(low + ACCOUNTS_PER_CHUNK, high), timeout=timeout_s
            )
            if rows:
                found = problems.setdefault(title, [])
                found.extend(row[1] for row in rows[: MAX_PROBLEMS_PER_CHECK - len(found)])
    touched = sorted(lots)
    for first in range(0, len(touched), LOTS_PER_CHUNK):
        rows = await conn.fetch(
            _LOTS_CHECK_SQL,
            MAX_PROBLEMS_PER_CHECK,
            touched[first : first + LOTS_PER_CHUNK],
            timeout=timeout_s,
        )
        if rows:
            found = problems.setdefault(LOT_MOVEMENTS, [])
            found.extend(row[1] for row in rows[: MAX_PROBLEMS_PER_CHECK - len(found)])


async def _run_incremental(
    conn: asyncpg.Connection, settings: Settings, timeout_ms: int, max_run_ms: int | None, pause_ms: int
) -> AuditResult:
    # Each query may take up to the run's own limit (the pool's may be shorter).
    timeout_s = timeout_ms / 1000 + 1
    started = time.monotonic()
    run_from: int | None = None  # where this run started
    touched_lots: set[int] = set()
    chunks = 0
    while True:
        if pause_ms:
            await _rest(conn, pause_ms, timeout_s)
        async with _audit_turn(conn, timeout_ms):
            if pause_ms and await conn.fetchval(_REST_LEFT_SQL, pause_ms / 1000, timeout=timeout_s) > 0:
                continue  # another process's chunk came first: rest after it too
            # One snapshot for the chunk, so concurrent postings cannot produce false alarms. It is
            # read-only: a repeatable-read transaction fails with SerializationError only when it
            # writes a row changed since its snapshot, so one that writes nothing cannot fail however
            # busy the ledger is. What the chunk records is written after, in a transaction of its own.
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                await conn.execute(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
                await set_plan_stable(conn)
                started_at = await conn.fetchval("SELECT clock_timestamp()")
                from_seq = await conn.fetchval(_CHECKPOINT_SQL, timeout=timeout_s)
                run_from = from_seq if run_from is None else min(run_from, from_seq)
                end = await conn.fetchrow(
                    _CHUNK_END_SQL,
                    from_seq,
                    settings.audit_chunk_transactions,
                    settings.audit_settle_ms / 1000,
                    timeout=timeout_s,
                )
                assert end is not None
                to_seq = end["to_seq"]
                more = end["settled"] and end["transactions"] == settings.audit_chunk_transactions
                out_of_time = max_run_ms is not None and (time.monotonic() - started) * 1000 >= max_run_ms
                problems: dict[str, list[str]] = {
                    title: [problem for _, problem in rows]
                    for title, rows in (await check_transactions(conn, from_seq, to_seq, timeout_s)).items()
                }
                for title, sql in INCREMENTAL_CHECKS:
                    rows = await conn.fetch(sql, from_seq, to_seq, MAX_PROBLEMS_PER_CHECK, timeout=timeout_s)
                    if rows:
                        problems.setdefault(title, []).extend(row[0] for row in rows)
                marks = await _check_chain(conn, from_seq, to_seq, problems, timeout_s)
                touched_lots.update(
                    row[0] for row in await conn.fetch(_TOUCHED_LOTS_SQL, from_seq, to_seq, timeout=timeout_s)
                )
                last = problems or not more or out_of_time
                if last:
                    await _check_accounts_and_lots(conn, touched_lots, problems, timeout_s)
            async with conn.transaction():
                await conn.execute(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
                if not problems:
                    await conn.execute(
                        """
                        INSERT INTO audit_chain_marks AS k (account_id, chain_no)
                        SELECT * FROM unnest($1::bigint[], $2::bigint[])
                        ON CONFLICT (account_id) DO UPDATE SET chain_no = greatest(k.chain_no, EXCLUDED.chain_no)
                        """,
                        list(marks),
                        list(marks.values()),
                        timeout=timeout_s,
                    )
                # A chunk that found a problem covers the run from its start: the next run checks
                # all of it again (the lots it touched are checked at the end of a run only).
                result = await _record(
                    conn,
                    "incremental",
                    run_from if problems else from_seq,
                    to_seq,
                    started_at,
                    problems,
                    None,
                )
            chunks += 1
            if last:
                result.from_seq = run_from
                result.chunks = chunks
                result.caught_up = not more
                return result


async def _run_full(conn: asyncpg.Connection, settings: Settings, timeout_ms: int) -> AuditResult:
    """`wallet verify` in full. Every transaction up to `to_seq` (taken before its snapshot, so
    all visible in it) is then checked; the hash-chain marks move to each account's last link up
    to `to_seq`, so the next incremental run checks the chains from there."""
    timeout_s = timeout_ms / 1000 + 1
    started_at = await conn.fetchval("SELECT clock_timestamp()")
    to_seq = await conn.fetchval(
        "SELECT coalesce(max(seq), 0) FROM transactions"
        " WHERE created_at < clock_timestamp() - make_interval(secs => $1)",
        settings.audit_settle_ms / 1000,
        timeout=timeout_s,
    )
    report = await verify_ledger(conn, query_timeout_ms=timeout_ms, marks_up_to_seq=to_seq)
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = {int(timeout_ms)}")
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _AUDIT_LOCK_KEY, timeout=timeout_s)
        if report.clean and report.chain_marks:
            await conn.execute(
                """
                INSERT INTO audit_chain_marks AS k (account_id, chain_no)
                SELECT * FROM unnest($1::bigint[], $2::bigint[])
                ON CONFLICT (account_id) DO UPDATE SET chain_no = greatest(k.chain_no, EXCLUDED.chain_no)
                """,
                list(report.chain_marks),
                list(report.chain_marks.values()),
                timeout=timeout_s,
            )
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
    processes take turns chunk by chunk through the advisory lock; each chunk picks up where the
    last ended), going on until it has caught up, with a pause between chunks."""
    interval_s = settings.audit_interval_ms / 1000
    while True:
        await asyncio.sleep(interval_s)
        try:
            await run_audit(pool, settings, pause_ms=settings.audit_chunk_pause_ms)
        except Exception as exc:  # a run that fails is retried by the next one (from its last chunk)
            log.warning("audit_failed", error=type(exc).__name__)
