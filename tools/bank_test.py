"""`make bank-test` (`python -m tools.bank_test`): a Jepsen-style check that no acknowledged write is lost or applied twice.

Many clients post random top-ups, bonuses and spends over HTTP with short client timeouts and
retry each operation with its idempotency key until they get an answer, while the service is
killed with SIGKILL and restarted, and PostgreSQL is crash-stopped (`pg_ctl stop -m immediate`)
and restarted. Then the books are compared with what the clients were told:

* every acknowledged (201) operation exists exactly once, with the amount and user it was sent;
* every operation refused with 409 insufficient_funds wrote nothing;
* no transaction exists that no client was told about;
* every balance equals the sum of that user's acknowledged operations, and none is negative;
* `wallet verify` is clean.

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
from typing import Annotated

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
    type: str
    user_id: str
    asset: str
    amount: int


@dataclass
class BankReport:
    operations: int = 0
    acknowledged: int = 0
    refused_insufficient: int = 0
    attempts: int = 0
    replayed_answers: int = 0  # final answers that were replays: an earlier attempt had committed
    retries_by_reason: Counter[str] = field(default_factory=Counter)
    server_kills: int = 0
    postgres_restarts: int = 0
    elapsed_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        lines = [
            f"operations {self.operations}: {self.acknowledged} acknowledged, "
            f"{self.refused_insufficient} refused (insufficient funds), in {self.elapsed_s:.1f} s",
            f"attempts {self.attempts}, of which {self.replayed_answers} final answers were replays; retries by reason: "
            + (", ".join(f"{k} {v}" for k, v in sorted(self.retries_by_reason.items())) or "none"),
            f"faults injected: {self.server_kills} service SIGKILLs, {self.postgres_restarts} PostgreSQL crash-restarts",
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
    from pgserver._commands import pg_ctl

    user = pgserver.get_server(pgdata, cleanup_mode=None).system_user
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
        return await create_api_key(conn, "bank-test", ["read", "credit", "spend"])
    finally:
        await conn.close()


def _operations(count: int, users: list[str], seed: int) -> list[Operation]:
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:8]
    kinds = ["topup"] * 4 + ["bonus"] * 2 + ["spend"] * 4
    return [
        Operation(
            f"bank-{run}-{i}", rng.choice(kinds), rng.choice(users), rng.choice(ASSETS), rng.randint(1, 100)
        )
        for i in range(count)
    ]


async def _run_clients(
    base_url: str,
    token: str,
    operations: list[Operation],
    clients: int,
    timeout_s: float,
    report: BankReport,
    answers: dict[str, tuple[int, dict]],
    progress: list[int],
) -> None:
    queue: asyncio.Queue[Operation] = asyncio.Queue()
    for operation in operations:
        queue.put_nowait(operation)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(http: httpx.AsyncClient) -> None:
        while True:
            try:
                operation = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            started = time.monotonic()
            while True:
                report.attempts += 1
                try:
                    response = await http.post(
                        f"/api/v1/transactions/{operation.type}",
                        json={
                            "user_id": operation.user_id,
                            "asset_type": operation.asset,
                            "amount": operation.amount,
                        },
                        headers={"Idempotency-Key": operation.key},
                    )
                except httpx.TimeoutException:
                    reason = "client timeout"
                except httpx.TransportError:
                    reason = "connection error"
                else:
                    body = response.json()
                    code = body.get("error", {}).get("code") if response.status_code >= 400 else None
                    if response.status_code == 201 or code == "insufficient_funds":
                        answers[operation.key] = (response.status_code, body)
                        report.replayed_answers += response.headers.get("Idempotent-Replayed") == "true"
                        progress[0] += 1
                        break
                    reason = f"{response.status_code} {code}"
                report.retries_by_reason[reason] += 1
                if time.monotonic() - started > GIVE_UP_AFTER_S:
                    report.problems.append(f"{operation.key}: no answer after {GIVE_UP_AFTER_S} s ({reason})")
                    break
                await asyncio.sleep(RETRY_PAUSE_S)

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
    database_url: str, operations: list[Operation], answers: dict[str, tuple[int, dict]], report: BankReport
) -> None:
    from wallet.services.verify import verify_ledger

    conn = await asyncpg.connect(database_url)
    try:
        api_key_id = await conn.fetchval("SELECT id FROM api_keys WHERE name = 'bank-test'")
        rows = await conn.fetch(
            "SELECT id::text, idempotency_key, type, user_id, asset_code, amount_minor FROM transactions"
            " WHERE api_key_id = $1",
            api_key_id,
        )
        by_key: dict[str, list[asyncpg.Record]] = defaultdict(list)
        for row in rows:
            by_key[row["idempotency_key"]].append(row)
        expected: Counter[tuple[str, str]] = Counter()
        for operation in operations:
            found = by_key.pop(operation.key, [])
            answer = answers.get(operation.key)
            if answer is None:
                continue  # already reported as unanswered
            status, body = answer
            if status == 201:
                report.acknowledged += 1
                if len(found) != 1:
                    report.problems.append(
                        f"{operation.key}: acknowledged, but {len(found)} transactions exist"
                    )
                    continue
                row = found[0]
                if (row["id"], row["type"], row["user_id"], row["asset_code"], row["amount_minor"]) != (
                    body["id"],
                    operation.type,
                    operation.user_id,
                    operation.asset,
                    operation.amount,
                ):
                    report.problems.append(
                        f"{operation.key}: stored transaction differs from the acknowledged one"
                    )
                sign = -1 if operation.type == "spend" else 1
                expected[(operation.user_id, operation.asset)] += sign * operation.amount
            else:
                report.refused_insufficient += 1
                if found:
                    report.problems.append(f"{operation.key}: refused, but {len(found)} transactions exist")
        for key, leftovers in by_key.items():
            report.problems.append(f"{key}: {len(leftovers)} transactions no client was told about")
        balances = await conn.fetch(
            "SELECT user_id, asset_code, balance_minor FROM accounts WHERE kind = 'user' AND user_id LIKE 'bank_%'"
        )
        for row in balances:
            want = expected[(row["user_id"], row["asset_code"])]
            if row["balance_minor"] != want:
                report.problems.append(
                    f"{row['user_id']} {row['asset_code']}: balance {row['balance_minor']}, acknowledged sum {want}"
                )
            if row["balance_minor"] < 0:
                report.problems.append(f"{row['user_id']} {row['asset_code']}: negative balance")
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
    answers: dict[str, tuple[int, dict]] = {}
    progress = [0]
    service = ServiceProcess(
        {"WALLET_DATABASE_URL": database_url, "WALLET_LOG_LEVEL": "WARNING", "WALLET_DB_POOL_MAX_SIZE": "24"},
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
