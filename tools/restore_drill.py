"""`make restore-drill` (`python -m tools.restore_drill`): a base backup and point-in-time restore,
proved on the ledger.

PostgreSQL's own tools, as docs/operations/backups.md describes for a
self-hosted deployment: WAL archiving (`archive_command` copying each segment to an archive
folder), a base backup (`pg_basebackup`), and a restore of the backup replaying the archive up to
an instant (`restore_command`, `recovery_target_time`). Everything runs on a scratch PostgreSQL
15 cluster in a temporary folder on free ports, and is removed at the end:

1. initdb a cluster with WAL archiving on, migrate and seed it, start `wallet serve` on it, make
   users and post a first batch of writes;
2. take a base backup (compressed tar) while the service runs;
3. post writes (top-ups, bonuses, spends, transfers, from several clients at once), note an
   instant T once they are all answered, then post more;
4. restore the backup into a new cluster, replaying the archived WAL up to T, and promote it;
5. serve the restored copy too, and compare: every user's `GET .../balance?as_of=T` and the
   liability report as of T, live against restored, must agree exactly, and so must the
   transactions up to T; `wallet verify` must find the restored ledger clean.

Prints `restore drill: OK` with the figures (backup size and time, WAL archived, restore time,
what was compared), or `restore drill: FAILED` and the first difference (exit 1). Needs the
PostgreSQL 15 server binaries (Debian: postgresql-15); as root, the clusters run as `postgres`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pwd
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from tools.service_process import ServiceProcess, free_port

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
ASSETS = ("GOLD_COINS", "DIAMONDS")
QUIET_SERVICE = {  # no background writers: the ledger changes only by what the drill posts
    "WALLET_LOT_EXPIRY_INTERVAL_MS": "0",
    "WALLET_AUDIT_INTERVAL_MS": "0",
    "WALLET_HOLD_SWEEP_INTERVAL_MS": "0",
    "WALLET_WEBHOOK_POLL_INTERVAL_MS": "0",
    "WALLET_ACCESS_LOG": "0",
    "WALLET_RATE_LIMIT_RPS": "0",
}


class DrillFailed(Exception):
    pass


class Cluster:
    """A scratch PostgreSQL cluster: its folder, port and server process (pg_ctl)."""

    def __init__(self, root: Path, name: str) -> None:
        self.pgdata = root / name
        self.socket_dir = root
        self.log = root / f"{name}.log"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/wallet"
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def configure(self, settings: dict[str, str]) -> None:
        with (self.pgdata / "postgresql.auto.conf").open("a") as conf:
            for name, value in settings.items():
                conf.write(f"{name} = '{value}'\n")

    def start(self) -> None:
        run_pg(
            "pg_ctl", "-D", str(self.pgdata), "-l", str(self.log), "-w", "-t", "300", "start",
        )  # fmt: skip

    def stop(self) -> None:
        if (self.pgdata / "postmaster.pid").exists():
            run_pg("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "stop", check=False)


def _as_postgres() -> list[str]:
    """The server refuses to run as root: as root, commands run as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def run_pg(program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*_as_postgres(), str(PG_BIN / program), *args], capture_output=True, text=True, timeout=600
    )
    if check and result.returncode != 0:
        raise DrillFailed(f"{program} {' '.join(args)}: {result.stderr.strip() or result.stdout.strip()}")
    return result


def wallet(url: str, *args: str) -> str:
    env = dict(os.environ) | {"WALLET_DATABASE_URL": url}
    result = subprocess.run(
        [sys.executable, "-m", "wallet", *args], env=env, capture_output=True, text=True, timeout=600
    )
    if result.returncode != 0:
        raise DrillFailed(f"wallet {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --- Writes ---------------------------------------------------------------------------------------


async def post_writes(
    base_url: str, token: str, users: list[str], count: int, clients: int, seed: int
) -> int:
    """`count` postings of every kind over `clients` connections; returns how many were posted
    (a spend or transfer may be refused for want of funds: 409, part of the drill's mix)."""
    rng = random.Random(seed)
    plan: list[tuple[str, dict[str, Any]]] = []
    for _ in range(count):
        user = rng.choice(users)
        asset = rng.choice(ASSETS)
        kind = rng.choices(["topup", "bonus", "spend", "transfer"], weights=[4, 2, 3, 2])[0]
        body: dict[str, Any] = {
            "user_id": user,
            "asset_type": asset,
            "amount": rng.randint(1, 50),
            "idempotency_key": f"drill-{uuid.uuid4().hex}",
        }
        if kind == "transfer":
            body["from_user_id"] = body.pop("user_id")
            body["to_user_id"] = rng.choice([u for u in users if u != user])
        plan.append((kind, body))
    queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
    for item in plan:
        queue.put_nowait(item)
    posted = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal posted
        while not queue.empty():
            kind, body = queue.get_nowait()
            response = await http.post(f"/api/v1/transactions/{kind}", json=body)
            if response.status_code == 201:
                posted += 1
            elif response.status_code != 409:  # insufficient funds: refused, part of the mix
                raise DrillFailed(f"{kind} {body}: {response.status_code} {response.text}")

    async with httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60
    ) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return posted


async def ledger_as_of(base_url: str, token: str, users: list[str], as_of: str) -> dict[str, Any]:
    """What the service says about the ledger as of `as_of` (every user's balances, the report)."""
    async with httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60
    ) as http:
        balances: dict[str, Any] = {}
        for user in users:
            response = await http.get(f"/api/v1/wallets/{user}/balance", params={"as_of": as_of})
            if response.status_code != 200:
                raise DrillFailed(f"balance of {user} as of {as_of}: {response.status_code} {response.text}")
            balances[user] = response.json()
        report = await http.get("/api/v1/reports/liabilities", params={"as_of": as_of})
        if report.status_code != 200:
            raise DrillFailed(f"liabilities as of {as_of}: {report.status_code} {report.text}")
        return {"balances": balances, "liabilities": report.json()}


async def transactions_up_to(url: str, as_of: datetime) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT id, type, created_at FROM transactions WHERE created_at <= $1 ORDER BY id", as_of
        )
    finally:
        await conn.close()
    return [tuple(row) for row in rows]


async def server_now(url: str) -> datetime:
    conn = await asyncpg.connect(url)
    try:
        now = await conn.fetchval("SELECT clock_timestamp()")
    finally:
        await conn.close()
    assert isinstance(now, datetime)
    return now


async def archive_all(url: str) -> tuple[int, int]:
    """Switches to a new WAL segment and waits until the archiver has copied the previous one;
    returns (segments archived, failures)."""
    conn = await asyncpg.connect(url)
    try:
        segment = await conn.fetchval("SELECT pg_walfile_name(pg_switch_wal())")
        for _ in range(600):
            row = await conn.fetchrow(
                "SELECT archived_count, last_archived_wal, failed_count FROM pg_stat_archiver"
            )
            assert row is not None
            if row["last_archived_wal"] is not None and row["last_archived_wal"] >= segment:
                return int(row["archived_count"]), int(row["failed_count"])
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    raise DrillFailed(f"WAL segment {segment} was not archived within 60 s")


async def wait_promoted(url: str) -> None:
    for _ in range(3000):
        try:
            conn = await asyncpg.connect(url)
        except (OSError, asyncpg.CannotConnectNowError):
            await asyncio.sleep(0.1)
            continue
        try:
            if not await conn.fetchval("SELECT pg_is_in_recovery()"):
                return
        finally:
            await conn.close()
        await asyncio.sleep(0.1)
    raise DrillFailed("the restored cluster did not finish recovery within 300 s")


async def create_users(base_url: str, token: str, count: int) -> list[str]:
    users = [f"drill_{i:03d}" for i in range(count)]
    async with httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60
    ) as http:
        for user in users:
            response = await http.post("/api/v1/users", json={"user_id": user, "name": user})
            if response.status_code not in (200, 201):
                raise DrillFailed(f"creating {user}: {response.status_code} {response.text}")
    return users


def first_difference(live: Any, restored: Any, path: str = "") -> str:
    if isinstance(live, dict) and isinstance(restored, dict):
        for key in sorted(set(live) | set(restored)):
            if live.get(key) != restored.get(key):
                return first_difference(live.get(key), restored.get(key), f"{path}.{key}")
    if isinstance(live, list) and isinstance(restored, list) and len(live) == len(restored):
        for index, (a, b) in enumerate(zip(live, restored, strict=True)):
            if a != b:
                return first_difference(a, b, f"{path}[{index}]")
    return f"{path or 'value'}: live {live!r}, restored {restored!r}"


# --- The drill ------------------------------------------------------------------------------------


def drill(root: Path, users_count: int, writes: int, clients: int) -> list[str]:
    """Runs the drill in `root`; returns the lines of figures."""
    archive = root / "wal-archive"
    backup = root / "base-backup"
    live = Cluster(root, "live")
    restored = Cluster(root, "restored")
    archive.mkdir()
    if os.geteuid() == 0:
        postgres = pwd.getpwnam("postgres")
        for path in (root, archive):
            os.chown(path, postgres.pw_uid, postgres.pw_gid)

    run_pg("initdb", "-D", str(live.pgdata), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    live.configure(
        {
            "port": str(live.port),
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(live.socket_dir),
            "wal_level": "replica",
            "archive_mode": "on",
            # Never overwrite a segment already archived; a failure is retried by the archiver.
            "archive_command": f"test ! -f {archive}/%f && cp %p {archive}/%f",
            "max_connections": "60",
        }
    )
    live.start()
    services: list[ServiceProcess] = []
    try:
        asyncio.run(_create_database(live.admin_url))
        wallet(live.url, "migrate")
        wallet(live.url, "seed", "--reference-only")
        token = wallet(live.url, "keys", "create", "--name", "drill", "--scope", "admin")
        service = ServiceProcess(
            QUIET_SERVICE | {"WALLET_DATABASE_URL": live.url}, workers=2, log_path=root / "live-serve.log"
        )
        services.append(service)
        service.start()
        users = asyncio.run(create_users(service.base_url, token, users_count))
        before_backup = asyncio.run(post_writes(service.base_url, token, users, writes // 4, clients, seed=1))

        started = time.monotonic()
        run_pg("pg_basebackup", "-d", live.admin_url, "-D", str(backup), "-F", "tar", "-z", "-X", "stream", "-c", "fast")  # fmt: skip
        backup_s = time.monotonic() - started
        backup_bytes = folder_bytes(backup)

        before_t = asyncio.run(post_writes(service.base_url, token, users, writes, clients, seed=2))
        time.sleep(0.2)
        target = asyncio.run(server_now(live.url))
        time.sleep(0.2)
        after_t = asyncio.run(post_writes(service.base_url, token, users, writes, clients, seed=3))
        archived, failed = asyncio.run(archive_all(live.admin_url))
        if failed:
            raise DrillFailed(f"the archiver failed {failed} times ({live.log})")
        archive_bytes = folder_bytes(archive)

        # The restore: the backup into a new folder, the archive replayed up to T, then promoted.
        started = time.monotonic()
        restored.pgdata.mkdir(mode=0o700)
        subprocess.run(["tar", "-xzf", str(backup / "base.tar.gz"), "-C", str(restored.pgdata)], check=True)
        subprocess.run(
            ["tar", "-xzf", str(backup / "pg_wal.tar.gz"), "-C", str(restored.pgdata / "pg_wal")], check=True
        )
        (restored.pgdata / "recovery.signal").touch()
        if os.geteuid() == 0:
            subprocess.run(["chown", "-R", "postgres:postgres", str(restored.pgdata)], check=True)
        restored.configure(
            {
                "port": str(restored.port),
                "unix_socket_directories": str(restored.socket_dir),
                "archive_mode": "off",  # a drill: the copy leaves the live archive alone
                "restore_command": f"cp {archive}/%f %p",
                "recovery_target_time": target.isoformat(),
                "recovery_target_action": "promote",
            }
        )
        restored.start()
        asyncio.run(wait_promoted(restored.admin_url))
        restore_s = time.monotonic() - started

        # The proof: the restored ledger is the live one as of T.
        restored_service = ServiceProcess(
            QUIET_SERVICE | {"WALLET_DATABASE_URL": restored.url},
            workers=1,
            log_path=root / "restored-serve.log",
        )
        services.append(restored_service)
        restored_service.start()
        as_of = target.isoformat()
        live_view = asyncio.run(ledger_as_of(service.base_url, token, users, as_of))
        restored_view = asyncio.run(ledger_as_of(restored_service.base_url, token, users, as_of))
        if live_view != restored_view:
            raise DrillFailed("as of T, " + first_difference(live_view, restored_view))
        live_txs = asyncio.run(transactions_up_to(live.url, target))
        restored_txs = asyncio.run(transactions_up_to(restored.url, target))
        everything_restored = asyncio.run(
            transactions_up_to(restored.url, datetime.max.replace(tzinfo=target.tzinfo))
        )
        if live_txs != restored_txs or restored_txs != everything_restored:
            raise DrillFailed(
                f"transactions up to T: live {len(live_txs)}, restored {len(restored_txs)}"
                f" (restored holds {len(everything_restored)} in all)"
            )
        live_now = asyncio.run(transactions_up_to(live.url, datetime.max.replace(tzinfo=target.tzinfo)))
        if len(live_now) <= len(live_txs):
            raise DrillFailed("no write after T reached the live ledger: the drill proves nothing")
        verify = wallet(restored.url, "verify")
        outstanding = sum(
            asset["outstanding_purchased"] + asset["outstanding_granted"]
            for asset in live_view["liabilities"]["assets"]
        )
    finally:
        for running in services:
            running.stop()
        restored.stop()
        live.stop()

    return [
        f"  base backup:  {backup_bytes / 1e6:.1f} MB (tar.gz) in {backup_s:.1f} s, while serving",
        f"  WAL archived: {archived} segments, {archive_bytes / 1e6:.1f} MB",
        f"  writes:       {before_backup} before the backup, {before_t} between it and T, {after_t} after T"
        f" ({clients} clients; T = {as_of})",
        f"  restore:      to T in {restore_s:.1f} s (extract, replay, promote)",
        f"  compared:     {len(restored_txs)} transactions up to T (of {len(live_now)} live), "
        f"{len(users)} users' balances as of T, the liability report as of T "
        f"({outstanding} outstanding): identical",
        f"  verify:       {verify.splitlines()[0] if verify else 'clean'} (wallet verify on the restored copy)",
    ]


async def _create_database(admin_url: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute("CREATE DATABASE wallet")
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.restore_drill", description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--writes", type=int, default=400, help="postings before T, and as many after")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (clusters, logs)")
    args = parser.parse_args(argv)
    if not (PG_BIN / "initdb").exists():
        print(f"restore drill: FAILED: no PostgreSQL 15 server in {PG_BIN} (Debian: postgresql-15)")
        return 1
    root = Path(tempfile.mkdtemp(prefix="wallet-restore-drill-"))
    started = time.monotonic()
    try:
        lines = drill(root, args.users, args.writes, args.clients)
    except (DrillFailed, RuntimeError) as exc:
        print(f"restore drill: FAILED: {exc} (logs in {root})")
        return 1
    else:
        print(f"restore drill: OK in {time.monotonic() - started:.0f} s")
        print("\n".join(lines))
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
