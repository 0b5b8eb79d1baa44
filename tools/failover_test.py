"""`make failover-test` (`python -m tools.failover_test`): the bank test's mix against the local
HA cluster (tools/cluster.py) while primaries and a replica are killed.

A cluster of its own is started in a temporary folder (etcd, three Patroni members with
synchronous_mode_strict, haproxy), migrated and seeded through the multi-host URL. Two `wallet
serve` instances run behind haproxy's HTTP port, one on the multi-host URL
(`target_session_attrs=read-write`) and one through haproxy's primary port; each runs lot expiry,
the live audit, webhook delivery (to a receiver here) and the key-usage flush. The bank test's
clients (tools.bank_test: top-ups, bonuses some expiring in seconds, spends, holds with captures
or voids, transfers, refunds) post through haproxy and retry every unknown outcome with the same
idempotency key, while a probe posts one top-up every 100 ms to time the write outages.

Faults, one after the other, each once the cluster is whole again: SIGKILL of the primary's
postmaster (Patroni restarts it), loss of the primary's node (Patroni and postmaster SIGKILLed;
the leader key expires after Patroni's ttl and a replica is promoted; the node then rejoins),
loss of the synchronous replica's node, SIGKILL of one service instance (restarted), and a
second postmaster kill and node loss.

Then: every acknowledged operation exists exactly once and balances match (tools.bank_test's
checks), `wallet verify` is clean on the new primary, every event reached the webhook receiver
(at least once, the first deliveries in feed order), the audit runs chain without overlap, the
rate limit held across the two instances, and the outage of each kill is printed.
Targets: writes resume within 10 s of a postmaster kill and 30 s of a node loss.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import httpx
import typer

from tools import cluster
from tools.bank_test import BankReport, Operation, _check, _operations, _prepare, _run_clients
from tools.service_process import ServiceProcess, free_port

POSTMASTER_TARGET_S = 10.0
NODE_TARGET_S = 30.0
PROBE_INTERVAL_S = 0.1
PROBE_TIMEOUT_S = 1.0
FAULTS = ("postmaster", "node", "replica", "service", "postmaster", "node")


@dataclass
class Fault:
    kind: str
    member: str
    at: float  # monotonic
    outage_s: float | None = None
    recovered_s: float | None = None  # until the cluster was whole again (3 members, a sync replica)
    note: str = ""

    def render(self) -> str:
        outage = f"{self.outage_s:5.1f} s" if self.outage_s is not None else "  n/a"
        target = {"postmaster": POSTMASTER_TARGET_S, "node": NODE_TARGET_S}.get(self.kind)
        verdict = ""
        if target is not None and self.outage_s is not None:
            verdict = f" (target <= {target:.0f} s: {'ok' if self.outage_s <= target else 'MISSED'})"
        whole = f"; whole again after {self.recovered_s:.1f} s" if self.recovered_s is not None else ""
        return f"{self.kind:<10} {self.member:<9} write outage {outage}{verdict}{whole}{self.note}"


@dataclass
class Probe:
    """One top-up per interval to bank_probe, each retried with its key until acknowledged."""

    operations: list[Operation] = field(default_factory=list)
    sent: list[tuple[float, float]] = field(default_factory=list)  # (first attempt, acknowledged)

    def outage_after(self, at: float) -> float | None:
        """From `at` to the acknowledgement of the first write first sent after it."""
        done = [acked for first, acked in self.sent if first >= at]
        return min(done) - at if done else None


class Receiver:
    """The webhook endpoint: records each delivery's event id, answers 204."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.ids.append(int(self.headers["X-Wallet-Event-Id"]))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def _wallet(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wallet", *args],
        env=os.environ | {"WALLET_DATABASE_URL": url, "WALLET_LOG_LEVEL": "WARNING"},
        capture_output=True,
        text=True,
        timeout=300,
    )


async def _probe(
    base_url: str, token: str, probe: Probe, answers: dict[str, Any], stop: asyncio.Event
) -> None:
    run = uuid.uuid4().hex[:8]
    async with httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=PROBE_TIMEOUT_S
    ) as http:
        n = 0
        while not stop.is_set():
            operation = Operation(f"probe-{run}-{n}", "topup", "bank_probe", "GOLD_COINS", 1)
            probe.operations.append(operation)
            key = f"{operation.key}:topup"
            first = time.monotonic()
            while True:
                try:
                    response = await http.post(
                        "/api/v1/transactions/topup",
                        json={"user_id": "bank_probe", "asset_type": "GOLD_COINS", "amount": 1},
                        headers={"Idempotency-Key": key},
                    )
                    if response.status_code in (200, 201):
                        answers[key] = (response.status_code, response.json())
                        probe.sent.append((first, time.monotonic()))
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
            n += 1
            await asyncio.sleep(max(0.0, PROBE_INTERVAL_S - (time.monotonic() - first)))


def _member_with_role(layout: cluster.Layout, role: str) -> int:
    for member in cluster.cluster_state(layout):
        if member.get("role") == role:
            return int(str(member["name"]).removeprefix("pg")) - 1
    raise RuntimeError(f"no member is {role}: {cluster.cluster_state(layout)}")


async def _inject(kind: str, layout: cluster.Layout, services: list[ServiceProcess], probe: Probe) -> Fault:
    await asyncio.to_thread(cluster.wait_healthy, layout, 120)
    await asyncio.sleep(2)  # writes flowing on the whole cluster before the next fault
    if kind == "service":
        fault = Fault(kind, "api1", time.monotonic())
        await asyncio.to_thread(services[0].kill)
    else:
        member = _member_with_role(layout, "sync_standby" if kind == "replica" else "leader")
        fault = Fault(kind, layout.member_name(member), time.monotonic())
        if kind == "postmaster":
            cluster.kill_postmaster(layout, member)
        else:
            await asyncio.to_thread(cluster.kill_member, layout, member)
    # Until a write first sent after the kill is acknowledged.
    deadline = time.monotonic() + 120
    while probe.outage_after(fault.at) is None and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    fault.outage_s = probe.outage_after(fault.at)
    if kind == "service":
        await asyncio.to_thread(services[0].start, healthy_statuses=(200, 503))
    elif kind in ("node", "replica"):
        cluster.start_member(layout, member)
    await asyncio.to_thread(cluster.wait_healthy, layout, 180)
    fault.recovered_s = time.monotonic() - fault.at
    if kind != "service":
        fault.note = f"; primary now {layout.member_name(_member_with_role(layout, 'leader'))}"
    return fault


async def _rate_limit_check(base_url: str, token: str, rps: float, burst: int) -> tuple[bool, str]:
    """Requests as fast as they go through haproxy (round robin over both instances): no more
    than the one bucket allows are let through."""
    accepted = refused = 0
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {token}"}) as http:
        while time.monotonic() - started < 3:
            status = (await http.get("/api/v1/asset-types")).status_code
            accepted += status == 200
            refused += status == 429
    elapsed = time.monotonic() - started
    allowed = burst + rps * elapsed + 1
    ok = accepted <= allowed and refused > 0
    return (
        ok,
        f"{accepted} let through, {refused} refused in {elapsed:.1f} s (one bucket allows {allowed:.0f})",
    )


async def _run(
    layout: cluster.Layout,
    started_services: list[ServiceProcess],
    *,
    clients: int,
    operations: int,
    users: int,
    seed: int,
) -> list[str]:
    lines: list[str] = []
    problems: list[str] = []
    url = layout.multi_host_url
    started = time.monotonic()
    # Two instances migrating the new database at once, one per URL: they take turns on the
    # migrations' lock.
    for migrated in await asyncio.gather(
        asyncio.to_thread(_wallet, url, "migrate"), asyncio.to_thread(_wallet, layout.haproxy_url, "migrate")
    ):
        if migrated.returncode != 0:
            raise RuntimeError(f"wallet migrate: {migrated.stderr}")
    user_ids = [f"bank_{i:03d}" for i in range(users)]
    token = await _prepare(url, [*user_ids, "bank_probe"])
    conn = await asyncpg.connect(url)
    try:
        from wallet.services.api_keys import RateLimitOverride, create_api_key

        admin = await create_api_key(conn, "failover-admin", ["read", "admin"])
        limited = await create_api_key(
            conn, "failover-limited", ["read"], rate_limit=RateLimitOverride(rps=5, burst=5)
        )
    finally:
        await conn.close()
    receiver = Receiver()
    service_env = {
        "WALLET_LOG_LEVEL": "WARNING",
        "WALLET_DB_POOL_MAX_SIZE": "16",
        "WALLET_LOT_EXPIRY_INTERVAL_MS": "500",
        "WALLET_AUDIT_INTERVAL_MS": "2000",
        "WALLET_AUDIT_SETTLE_MS": "1000",
        "WALLET_WEBHOOK_POLL_INTERVAL_MS": "200",
        "WALLET_WEBHOOK_BACKOFF_BASE_MS": "100",
        "WALLET_WEBHOOK_BACKOFF_CAP_MS": "1000",
        "WALLET_KEY_USAGE_FLUSH_MS": "1000",
        "WALLET_DB_CONNECT_TIMEOUT_MS": "3000",
    }
    workdir = layout.directory
    services = [
        ServiceProcess(
            service_env | {"WALLET_DATABASE_URL": database_url},
            port=port,
            log_path=workdir / "logs" / f"api{i + 1}.log",
        )
        for i, (port, database_url) in enumerate(
            zip(layout.api_ports, (url, layout.haproxy_url), strict=True)
        )
    ]
    for port in layout.api_ports:
        if not cluster.port_free(port):
            raise RuntimeError(f"port {port} is taken (a leftover instance?); the instances need it")
    started_services.extend(services)
    for service in services:
        await asyncio.to_thread(service.start)
    base_url = f"http://127.0.0.1:{layout.api_port}"
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {admin}"}) as http:
        for _ in range(100):  # haproxy's health checks see both instances
            with_both = {(await http.get("/health")).status_code for _ in range(4)}
            if with_both == {200}:
                break
            await asyncio.sleep(0.2)
        hook = await http.post("/api/v1/webhooks", json={"url": receiver.url})
        if hook.status_code != 201:
            raise RuntimeError(f"webhook registration: {hook.status_code} {hook.text}")
        hook_id = hook.json()["id"]
    conn = await asyncpg.connect(url)
    try:
        cursor = await conn.fetchrow(
            "SELECT cursor_txid, cursor_seq FROM webhook_endpoints WHERE id = $1", hook_id
        )
    finally:
        await conn.close()
    lines.append(
        f"cluster, two concurrent migrations, seed and two instances ready in {time.monotonic() - started:.1f} s"
    )

    planned = _operations(operations, user_ids, seed)
    report = BankReport(operations=len(planned))
    answers: dict[str, tuple[int, dict[str, Any]]] = {}
    progress = [0]
    stop = asyncio.Event()
    probe = Probe()
    faults: list[Fault] = []
    run_started = time.monotonic()

    async def chaos() -> None:
        try:
            for kind in FAULTS:
                faults.append(await _inject(kind, layout, services, probe))
                print(faults[-1].render(), flush=True)
            await asyncio.sleep(3)
        finally:
            stop.set()

    probe_task = asyncio.create_task(_probe(base_url, token, probe, answers, stop))
    chaos_task = asyncio.create_task(chaos())
    # The clients back off (50 ms doubling to 1 s) as real ones should; the probe retries every 50 ms.
    await _run_clients(base_url, token, planned, clients, 2.0, report, answers, progress, stop, 1.0)
    report.server_kills = sum(f.kind == "service" for f in faults)
    report.postgres_restarts = sum(f.kind != "service" for f in faults)
    stop.set()
    await chaos_task
    await probe_task
    report.elapsed_s = time.monotonic() - run_started

    rate_ok, rate_line = await _rate_limit_check(base_url, limited, 5, 5)
    if not rate_ok:
        problems.append(f"rate limit across two instances: {rate_line}")

    # Webhooks: every event since registration reaches the receiver.
    conn = await asyncpg.connect(url)
    assert cursor is not None
    try:
        feed = [
            r["seq"]
            for r in await conn.fetch(
                "SELECT seq FROM events WHERE (txid, seq) > ($1::xid8, $2) ORDER BY txid, seq",
                cursor["cursor_txid"],
                cursor["cursor_seq"],
            )
        ]
        expected = set(feed)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with receiver.lock:
                got = set(receiver.ids)
            if expected <= got:
                break
            await asyncio.sleep(0.5)
        with receiver.lock:
            received = list(receiver.ids)
        missing = expected - set(received)
        duplicates = len(received) - len(set(received))
        first_seen: list[int] = []
        seen: set[int] = set()
        for event_id in received:
            if event_id not in seen:
                seen.add(event_id)
                first_seen.append(event_id)
        rank = {seq: i for i, seq in enumerate(feed)}
        ranks = [rank[seq] for seq in first_seen if seq in rank]
        in_feed_order = ranks == sorted(ranks)
        if not in_feed_order:
            problems.append("webhooks: first deliveries out of feed order")
        if missing:
            problems.append(f"webhooks: {len(missing)} of {len(expected)} events never delivered")
        dead = await conn.fetchval("SELECT count(*) FROM webhook_dead_letters")
        if dead:
            problems.append(f"webhooks: {dead} dead letters")
        audits = await conn.fetch(
            "SELECT id, from_seq, to_seq, consistent FROM audit_runs WHERE kind = 'incremental' ORDER BY id"
        )
    finally:
        await conn.close()
    for service in services:
        await asyncio.to_thread(service.stop)
    receiver.close()

    # The audit: runs in both instances take turns, each from where the last clean one ended.
    inconsistent = [a["id"] for a in audits if not a["consistent"]]
    if inconsistent:
        problems.append(f"audit: runs {inconsistent} found the ledger inconsistent")
    chained = all(b["from_seq"] == a["to_seq"] for a, b in itertools.pairwise(audits))
    if not chained:
        problems.append("audit: runs overlap or leave gaps (from_seq is not the previous to_seq)")

    all_operations = planned + probe.operations
    await _check(url, all_operations, answers, report)
    conn = await asyncpg.connect(url)
    try:
        key_id = await conn.fetchval("SELECT id FROM api_keys WHERE name = 'bank-test'")
        found = await conn.fetchval(
            "SELECT (SELECT count(*) FROM transactions WHERE api_key_id = $1)"
            " + (SELECT count(*) FROM holds WHERE api_key_id = $1)",
            key_id,
        )
        used = await conn.fetchval("SELECT last_used_at IS NOT NULL FROM api_keys WHERE id = $1", key_id)
    finally:
        await conn.close()
    acknowledged = sum(
        1 for key, (status, _) in answers.items() if status in (200, 201) and not key.endswith(":void")
    )
    if not used:
        problems.append("key usage: the bank key's last use was never written")
    verify = await asyncio.to_thread(_wallet, url, "verify")
    if verify.returncode != 0:
        problems.append("wallet verify on the new primary: " + verify.stdout[-2000:])

    answered = {key.rsplit(":", 1)[0] for key in answers}
    performed = sum(1 for op in planned if op.key in answered)
    lines.append(
        f"clients: {clients}, operations performed {performed} of {len(planned)} planned, probe writes"
        f" {len(probe.operations)}, in {report.elapsed_s:.1f} s"
    )
    lines.append("faults:")
    lines.extend("  " + fault.render() for fault in faults)
    for fault in faults:
        target = {"postmaster": POSTMASTER_TARGET_S, "node": NODE_TARGET_S}.get(fault.kind)
        if fault.outage_s is None:
            problems.append(f"{fault.kind} kill of {fault.member}: writes never resumed")
        elif target is not None and fault.outage_s > target:
            problems.append(
                f"{fault.kind} kill of {fault.member}: outage {fault.outage_s:.1f} s > {target:.0f} s"
            )
    lines.append(
        f"acknowledged writes {acknowledged} (transactions and holds), found {found}; "
        f"{report.refused_insufficient} refused for insufficient funds"
    )
    lines.append(report.render())
    lines.append(
        f"webhooks: {len(expected)} events, {len(set(received))} delivered, {duplicates} sent again"
        f" (at least once: a delivery cut by a kill is repeated), first deliveries in feed order:"
        f" {in_feed_order}"
    )
    lines.append(f"audit: {len(audits)} incremental runs from both instances, chained: {chained}")
    lines.append(f"rate limit (5/s, burst 5) across both instances: {rate_line}")
    lines.append("wallet verify on the new primary: " + ("clean" if verify.returncode == 0 else "NOT clean"))
    if not report.ok:
        problems.extend(report.problems)
    if problems:
        lines.append(f"FAIL: {len(problems)} problems")
        lines.extend(f"  - {p}" for p in problems[:50])
    else:
        lines.append("OK: 0 lost, 0 duplicated, every outage within its target")
    return lines


app = typer.Typer(add_completion=False)


@app.command()
def main(
    clients: Annotated[int, typer.Option(min=1, max=256, help="Concurrent bank-test clients.")] = 16,
    operations: Annotated[int, typer.Option(min=1, max=1_000_000, help="Operations at most.")] = 200_000,
    users: Annotated[int, typer.Option(min=1, max=10_000, help="Distinct users.")] = 50,
    seed: Annotated[int, typer.Option(help="Random seed for the operations.")] = 1,
    base_port: Annotated[int, typer.Option(help="The cluster's first port.")] = 15500,
    keep: Annotated[bool, typer.Option(help="Keep the cluster's folder (logs) even when it passes.")] = False,
) -> None:
    """The bank test against the HA cluster while primaries, a replica and a service instance are
    killed; prints each fault's write outage and the checks."""
    directory = Path(tempfile.mkdtemp(prefix="wallet-failover-"))
    directory.chmod(0o755)
    layout = cluster.Layout(directory / "cluster", base_port)
    started = time.monotonic()
    ok = False
    services: list[ServiceProcess] = []
    try:
        cluster.up(layout)
        typer.echo(f"cluster up in {time.monotonic() - started:.1f} s: {layout.multi_host_url}")
        lines = asyncio.run(
            _run(layout, services, clients=clients, operations=operations, users=users, seed=seed)
        )
        ok = lines[-1].startswith("OK")
        for line in lines:
            typer.echo(line)
    finally:
        for service in services:  # stopped already, unless the run failed half-way
            service.stop()
        if not ok or keep:
            logs = directory / "logs"
            shutil.copytree(layout.directory / "logs", logs, dirs_exist_ok=True)
            typer.echo(f"logs kept in {logs}")
        cluster.down(layout)
        if ok and not keep:
            shutil.rmtree(directory, ignore_errors=True)
        typer.echo(f"failover test took {time.monotonic() - started:.0f} s")
    if not ok:
        raise typer.Exit(code=1)


if __name__ == "__main__":
    app()
