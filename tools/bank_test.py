"""`make bank-test` (`python -m tools.bank_test`): a Jepsen-style check that no acknowledged write is lost or applied twice.

Many clients post random top-ups, bonuses (some expiring within seconds), spends and transfers,
and chains of dependent steps (a hold then its capture or void; a spend then a partial refund),
while the service expires lots every half second and every spend expires what is due first, over
HTTP with short client
timeouts, retrying each step with its idempotency key until they get an answer, while the
service is killed with SIGKILL and restarted, and PostgreSQL is crash-stopped
(`pg_ctl stop -m immediate`) and restarted. Then the books are compared with what the clients
were told:

* every acknowledged step that writes a transaction or a hold exists exactly once, with the type,
  amount and user it was sent; a captured or voided hold is in that state;
* every step refused with 409 insufficient_funds wrote nothing;
* no transaction or hold exists that no client was told about;
* every balance equals the sum of that user's acknowledged effects less what expired, none is
  negative, and nothing is left held;
* no more of an asset expired than was given in expiring bonuses, and after a last expiry run no
  due credit is left;
* `wallet verify` is clean (credit lots included: they sum to every balance and to their movements).

It runs on its own embedded PostgreSQL in a temporary folder, so it can crash it freely.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import httpx
import typer

from tools.service_process import ServiceProcess

ASSETS = ("GOLD_COINS", "DIAMONDS")
GIVE_UP_AFTER_S = 180  # one operation that gets no answer for this long fails the run
RETRY_PAUSE_S = 0.05


@dataclass(frozen=True)
class Operation:
    key: str
    type: str  # topup, bonus, bonus_expiring, spend, transfer, hold_capture, hold_void, spend_refund
    user_id: str
    asset: str
    amount: int
    second_amount: int = 0  # the capture (hold_capture) or refund (spend_refund), <= amount
    to_user_id: str | None = None  # transfer
    expires_in_seconds: int | None = None  # bonus_expiring


# Each step that writes: its key suffix, and what it posts.
TRANSACTION_STEPS = {"topup", "bonus", "spend", "transfer", "capture", "refund"}


@dataclass
class BankReport:
    operations: int = 0
    acknowledged: int = 0
    refused_insufficient: int = 0
    acknowledged_by_step: Counter[str] = field(default_factory=Counter)
    attempts: int = 0
    replayed_answers: int = 0  # final answers that were replays: an earlier attempt had committed
    retries_by_reason: Counter[str] = field(default_factory=Counter)
    server_kills: int = 0
    postgres_restarts: int = 0
    elapsed_s: float = 0.0
    expired: int = 0  # minor units moved to breakage by expiries (the service's runs, spends, the last run)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        lines = [
            f"operations {self.operations}: {self.acknowledged} steps acknowledged, "
            f"{self.refused_insufficient} refused (insufficient funds), in {self.elapsed_s:.1f} s",
            "acknowledged by step: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.acknowledged_by_step.items())),
            f"attempts {self.attempts}, of which {self.replayed_answers} final answers were replays; retries by reason: "
            + (", ".join(f"{k} {v}" for k, v in sorted(self.retries_by_reason.items())) or "none"),
            f"faults injected: {self.server_kills} service SIGKILLs, {self.postgres_restarts} PostgreSQL crash-restarts",
            f"expired to breakage: {self.expired} minor units",
        ]
        if self.ok:
            lines.append(
                "OK: every acknowledged operation exists exactly once; balances match; verify is clean"
            )
        else:
            lines.append(f"FAIL: {len(self.problems)} problems")
            lines.extend(f"  - {p}" for p in self.problems[:50])
        return "\n".join(lines)


def _crash_restart_postgres(pgdata: Path) -> None:
    """An immediate stop is a crash: no checkpoint, recovery from WAL on the next start."""
    import pgserver
    from pgserver._commands import pg_ctl  # type: ignore[attr-defined]

    user = pgserver.get_server(pgdata, cleanup_mode=None).system_user  # type: ignore[attr-defined]
    pg_ctl(["-w", "-m", "immediate", "restart"], pgdata=pgdata, user=user)


async def _prepare(database_url: str, users: list[str]) -> str:
    from wallet.db.migrate import upgrade_to_head_async
    from wallet.services.api_keys import create_api_key
    from wallet.services.seed import seed_reference_data

    await upgrade_to_head_async(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        await seed_reference_data(conn)
        for user_id in users:
            await conn.execute("SELECT wallet_ensure_user($1, 'Bank')", user_id)
        return await create_api_key(conn, "bank-test", ["read", "credit", "spend", "transfer", "reverse"])
    finally:
        await conn.close()


def _operations(count: int, users: list[str], seed: int) -> list[Operation]:
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:8]
    kinds = (
        ["topup"] * 4
        + ["bonus"] * 2
        + ["bonus_expiring"] * 2
        + ["spend"] * 3
        + ["transfer", "hold_capture", "hold_void", "spend_refund"]
    )
    operations = []
    for i in range(count):
        kind, user, amount = rng.choice(kinds), rng.choice(users), rng.randint(1, 100)
        receiver = (
            rng.choice([u for u in users if u != user]) if kind == "transfer" and len(users) > 1 else None
        )
        operations.append(
            Operation(
                f"bank-{run}-{i}",
                "spend" if kind == "transfer" and receiver is None else kind,
                user,
                rng.choice(ASSETS),
                amount,
                rng.randint(1, amount),
                receiver,
                rng.randint(1, 3) if kind == "bonus_expiring" else None,
            )
        )
    return operations


async def _run_clients(
    base_url: str,
    token: str,
    operations: list[Operation],
    clients: int,
    timeout_s: float,
    report: BankReport,
    answers: dict[str, tuple[int, dict[str, Any]]],
    progress: list[int],
    stop: asyncio.Event | None = None,
    max_retry_pause_s: float = RETRY_PAUSE_S,
) -> None:
    """Runs `operations` on `clients` concurrent clients; with `stop`, the clients take no new
    operation once it is set (the failover test stops when its faults are done)."""
    queue: asyncio.Queue[Operation] = asyncio.Queue()
    for operation in operations:
        queue.put_nowait(operation)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def step(
        http: httpx.AsyncClient, key: str, path: str, body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]] | None:
        """Posts one step until it gets a final answer (201/200, or 409 insufficient_funds)."""
        started = time.monotonic()
        pause = RETRY_PAUSE_S
        while True:
            report.attempts += 1
            try:
                response = await http.post(path, json=body, headers={"Idempotency-Key": key})
            except httpx.TimeoutException:
                reason = "client timeout"
            except httpx.TransportError:
                reason = "connection error"
            else:
                try:
                    answer = response.json()
                except ValueError:  # a proxy's own page (haproxy's 502/503 while an instance is down)
                    answer = {"error": {"code": "not JSON"}}
                code = answer.get("error", {}).get("code") if response.status_code >= 400 else None
                if response.status_code in (200, 201) or code == "insufficient_funds":
                    answers[key] = (response.status_code, answer)
                    report.replayed_answers += response.headers.get("Idempotent-Replayed") == "true"
                    return response.status_code, answer
                reason = f"{response.status_code} {code}"
            report.retries_by_reason[reason] += 1
            if time.monotonic() - started > GIVE_UP_AFTER_S:
                report.problems.append(f"{key}: no answer after {GIVE_UP_AFTER_S} s ({reason})")
                return None
            await asyncio.sleep(pause)
            pause = min(pause * 2, max_retry_pause_s)  # doubling up to the cap: none by default

    async def perform(http: httpx.AsyncClient, op: Operation) -> None:
        target = {"user_id": op.user_id, "asset_type": op.asset, "amount": op.amount}
        if op.type in ("topup", "bonus", "spend"):
            await step(http, f"{op.key}:{op.type}", f"/api/v1/transactions/{op.type}", target)
        elif op.type == "bonus_expiring":
            await step(
                http,
                f"{op.key}:bonus",
                "/api/v1/transactions/bonus",
                target | {"expires_in_seconds": op.expires_in_seconds},
            )
        elif op.type == "transfer":
            await step(
                http,
                f"{op.key}:transfer",
                "/api/v1/transactions/transfer",
                {
                    "from_user_id": op.user_id,
                    "to_user_id": op.to_user_id,
                    "asset_type": op.asset,
                    "amount": op.amount,
                },
            )
        elif op.type in ("hold_capture", "hold_void"):
            hold = await step(http, f"{op.key}:hold", "/api/v1/holds", target)
            if hold is not None and hold[0] == 201:
                if op.type == "hold_capture":
                    await step(
                        http,
                        f"{op.key}:capture",
                        f"/api/v1/holds/{hold[1]['id']}/capture",
                        {"amount": op.second_amount},
                    )
                else:
                    await step(http, f"{op.key}:void", f"/api/v1/holds/{hold[1]['id']}/void", {})
        else:  # spend_refund
            spend = await step(http, f"{op.key}:spend", "/api/v1/transactions/spend", target)
            if spend is not None and spend[0] == 201:
                await step(
                    http,
                    f"{op.key}:refund",
                    f"/api/v1/transactions/{spend[1]['id']}/reverse",
                    {"amount": op.second_amount, "reason": "bank test"},
                )

    async def client(http: httpx.AsyncClient) -> None:
        while stop is None or not stop.is_set():
            try:
                operation = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await perform(http, operation)
            progress[0] += 1

    async with httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s, limits=limits
    ) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))


async def _chaos(
    service: ServiceProcess,
    pgdata: Path,
    total: int,
    server_kills: int,
    postgres_restarts: int,
    progress: list[int],
    report: BankReport,
    done: asyncio.Event,
) -> None:
    """Spreads the faults over the run: each at a fixed fraction of the operations answered."""
    faults = ["service"] * server_kills + ["postgres"] * postgres_restarts
    random.Random(7).shuffle(faults)
    for index, fault in enumerate(faults, start=1):
        threshold = total * index // (len(faults) + 1)
        while progress[0] < threshold and not done.is_set():
            await asyncio.sleep(0.02)
        if done.is_set():
            return
        if fault == "service":
            await asyncio.to_thread(service.kill)
            report.server_kills += 1
            # The database may be recovering from a crash just now: a 503 from /health is up.
            await asyncio.to_thread(service.start, healthy_statuses=(200, 503))
        else:
            await asyncio.to_thread(_crash_restart_postgres, pgdata)
            report.postgres_restarts += 1


async def _check(
    database_url: str,
    operations: list[Operation],
    answers: dict[str, tuple[int, dict[str, Any]]],
    report: BankReport,
) -> None:
    from wallet.services.verify import verify_ledger

    conn = await asyncpg.connect(database_url)
    try:
        # A last expiry run, as `wallet expire` does it: after it no credit due when it started may
        # be left (bonuses of the last seconds keep expiring while the checks below run).
        swept_at = await conn.fetchval("SELECT clock_timestamp()")
        while await conn.fetchval("SELECT accounts_swept FROM wallet_sweep_expired_lots(1000)"):
            pass
        api_key_id = await conn.fetchval("SELECT id FROM api_keys WHERE name = 'bank-test'")
        rows = await conn.fetch(
            "SELECT id::text, idempotency_key, type, user_id, asset_code, amount_minor, counterparty_user_id"
            " FROM transactions WHERE api_key_id = $1",
            api_key_id,
        )
        by_key: dict[str, list[asyncpg.Record]] = defaultdict(list)
        for row in rows:
            by_key[row["idempotency_key"]].append(row)
        holds = await conn.fetch(
            "SELECT id::text, idempotency_key, user_id, asset_code, amount_minor, status, captured_amount_minor"
            " FROM holds WHERE api_key_id = $1",
            api_key_id,
        )
        holds_by_key: dict[str, list[asyncpg.Record]] = defaultdict(list)
        for hold in holds:
            holds_by_key[hold["idempotency_key"]].append(hold)
        expected: Counter[tuple[str, str]] = Counter()
        hold_states: dict[str, str] = {}  # hold id -> the state its capture/void step was told
        for operation in operations:
            for step in ("topup", "bonus", "spend", "transfer", "hold", "capture", "void", "refund"):
                key = f"{operation.key}:{step}"
                answer = answers.get(key)
                found = by_key.pop(key, []) if step in TRANSACTION_STEPS else []
                found_holds = holds_by_key.pop(key, []) if step == "hold" else []
                if answer is None:
                    if found or found_holds:
                        report.problems.append(f"{key}: never answered, but it wrote something")
                    continue
                status, body = answer
                if status not in (200, 201):
                    report.refused_insufficient += 1
                    if found or found_holds:
                        report.problems.append(f"{key}: refused, but it wrote something")
                    continue
                report.acknowledged += 1
                report.acknowledged_by_step[step] += 1
                if step == "hold":
                    if len(found_holds) != 1 or found_holds[0]["id"] != body["id"]:
                        report.problems.append(f"{key}: acknowledged, but {len(found_holds)} holds exist")
                    continue
                if step == "void":
                    hold_states[body["id"]] = "voided"
                    continue
                if len(found) != 1:
                    report.problems.append(f"{key}: acknowledged, but {len(found)} transactions exist")
                    continue
                row = found[0]
                amount = operation.second_amount if step in ("capture", "refund") else operation.amount
                if (row["id"], row["type"], row["user_id"], row["asset_code"], row["amount_minor"]) != (
                    body["id"],
                    step,
                    operation.user_id,
                    operation.asset,
                    amount,
                ):
                    report.problems.append(f"{key}: stored transaction differs from the acknowledged one")
                sign = 1 if step in ("topup", "bonus", "refund") else -1
                expected[(operation.user_id, operation.asset)] += sign * amount
                if step == "transfer":
                    expected[(row["counterparty_user_id"], operation.asset)] += amount
                if step == "capture":
                    hold_states[body["hold_id"]] = "captured"
        for key, leftovers in by_key.items():
            report.problems.append(f"{key}: {len(leftovers)} transactions no client was told about")
        for key, leftovers in holds_by_key.items():
            report.problems.append(f"{key}: {len(leftovers)} holds no client was told about")
        for hold in holds:
            want_status = hold_states.get(hold["id"], "open")
            if hold["status"] != want_status:
                report.problems.append(
                    f"hold {hold['id']}: status {hold['status']}, clients were told {want_status}"
                )
        expired = {
            (r["user_id"], r["asset_code"]): r["expired"]
            for r in await conn.fetch(
                "SELECT user_id, asset_code, sum(amount_minor) AS expired FROM transactions"
                " WHERE type = 'expiry' AND user_id LIKE 'bank_%' GROUP BY 1, 2"
            )
        }
        # Expiring credits enter only through expiring bonuses (transfers pass them on, refunds give
        # back what was drawn from them): per asset, no more can expire than was given to expire.
        given_expiring: Counter[str] = Counter()
        for operation in operations:
            answer = answers.get(f"{operation.key}:bonus")
            if operation.type == "bonus_expiring" and answer is not None and answer[0] == 201:
                given_expiring[operation.asset] += operation.amount
        report.expired = sum(expired.values())
        for asset in ASSETS:
            lost = sum(amount for (_, code), amount in expired.items() if code == asset)
            if lost > given_expiring[asset]:
                report.problems.append(
                    f"{asset}: {lost} expired, only {given_expiring[asset]} given to expire"
                )
        due = await conn.fetchval(
            "SELECT count(*) FROM credit_lots l JOIN accounts a ON a.id = l.account_id"
            " WHERE a.user_id LIKE 'bank_%' AND l.remaining_minor > 0 AND l.expires_at <= $1",
            swept_at,
        )
        if due:
            report.problems.append(f"{due} lots still hold due credits after the last expiry run")
        balances = await conn.fetch(
            "SELECT user_id, asset_code, balance_minor, held_minor FROM accounts"
            " WHERE kind = 'user' AND user_id LIKE 'bank_%'"
        )
        for row in balances:
            want = expected[(row["user_id"], row["asset_code"])] - expired.get(
                (row["user_id"], row["asset_code"]), 0
            )
            if row["balance_minor"] != want:
                report.problems.append(
                    f"{row['user_id']} {row['asset_code']}: balance {row['balance_minor']}, acknowledged sum {want}"
                )
            if row["balance_minor"] < 0:
                report.problems.append(f"{row['user_id']} {row['asset_code']}: negative balance")
            open_holds = sum(
                h["amount_minor"]
                for h in holds
                if h["status"] == "open"
                and (h["user_id"], h["asset_code"]) == (row["user_id"], row["asset_code"])
            )
            if row["held_minor"] != open_holds:
                report.problems.append(
                    f"{row['user_id']} {row['asset_code']}: held {row['held_minor']}, open holds {open_holds}"
                )
        audit = await verify_ledger(conn)
        if not audit.clean:
            report.problems.append("wallet verify: " + audit.render().replace("\n", " | "))
    finally:
        await conn.close()


async def _run(
    database_url: str,
    pgdata: Path,
    workdir: Path,
    *,
    clients: int,
    operations: int,
    users: int,
    server_kills: int,
    postgres_restarts: int,
    timeout_s: float,
    seed: int,
) -> BankReport:
    user_ids = [f"bank_{i:03d}" for i in range(users)]
    token = await _prepare(database_url, user_ids)
    planned = _operations(operations, user_ids, seed)
    report = BankReport(operations=len(planned))
    answers: dict[str, tuple[int, dict[str, Any]]] = {}
    progress = [0]
    service = ServiceProcess(
        {
            "WALLET_DATABASE_URL": database_url,
            "WALLET_LOG_LEVEL": "WARNING",
            "WALLET_DB_POOL_MAX_SIZE": "24",
            "WALLET_LOT_EXPIRY_INTERVAL_MS": "500",
        },
        log_path=workdir / "service.log",
    )
    await asyncio.to_thread(service.start)
    done = asyncio.Event()
    started = time.monotonic()
    try:
        chaos = asyncio.create_task(
            _chaos(service, pgdata, len(planned), server_kills, postgres_restarts, progress, report, done)
        )
        await _run_clients(
            f"http://127.0.0.1:{service.port}", token, planned, clients, timeout_s, report, answers, progress
        )
        done.set()
        await chaos
    finally:
        report.elapsed_s = time.monotonic() - started
        service.stop()
    await _check(database_url, planned, answers, report)
    if report.server_kills < server_kills or report.postgres_restarts < postgres_restarts:
        report.problems.append("not every planned fault was injected (the run ended first)")
    return report


def run_bank_test(
    *,
    clients: int,
    operations: int,
    users: int,
    server_kills: int,
    postgres_restarts: int,
    timeout_s: float,
    seed: int,
) -> BankReport:
    from wallet.embedded import embedded_postgres

    workdir = Path(tempfile.mkdtemp(prefix="wallet-bank-"))
    workdir.chmod(0o755)
    with embedded_postgres(workdir) as database_url:
        report = asyncio.run(
            _run(
                database_url,
                (workdir / "pgdata").resolve(),
                workdir,
                clients=clients,
                operations=operations,
                users=users,
                server_kills=server_kills,
                postgres_restarts=postgres_restarts,
                timeout_s=timeout_s,
                seed=seed,
            )
        )
    if report.ok:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        report.problems.append(f"service log and database kept in {workdir}")
    return report


app = typer.Typer(add_completion=False)


@app.command()
def main(
    clients: Annotated[int, typer.Option(min=1, max=512, help="Concurrent HTTP clients.")] = 64,
    operations: Annotated[int, typer.Option(min=1, max=1_000_000, help="Operations in all.")] = 20_000,
    users: Annotated[int, typer.Option(min=1, max=10_000, help="Distinct users.")] = 50,
    server_kills: Annotated[int, typer.Option(min=0, max=100, help="SIGKILLs of the service.")] = 3,
    postgres_restarts: Annotated[int, typer.Option(min=0, max=100, help="PostgreSQL crash-restarts.")] = 1,
    timeout_ms: Annotated[int, typer.Option(min=10, max=60_000, help="Client timeout per attempt.")] = 2_000,
    seed: Annotated[int, typer.Option(help="Random seed for the operations.")] = 1,
) -> None:
    """Jepsen-style: random writes with retries under SIGKILLs and a PostgreSQL crash, then audit."""
    report = run_bank_test(
        clients=clients,
        operations=operations,
        users=users,
        server_kills=server_kills,
        postgres_restarts=postgres_restarts,
        timeout_s=timeout_ms / 1000,
        seed=seed,
    )
    typer.echo(report.render())
    if not report.ok:
        raise typer.Exit(code=1)


if __name__ == "__main__":
    app()
