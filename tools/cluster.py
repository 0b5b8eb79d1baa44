"""`make cluster-up` / `make cluster-down` (`python -m tools.cluster up|down|status`): a local
PostgreSQL 15 high-availability cluster for the wallet, all on 127.0.0.1.

* etcd (Debian's etcd-server): the distributed configuration store Patroni elects a leader in;
* three Patroni members (pinned in requirements-cluster.lock, installed into .venv), each running
  a PostgreSQL 15 of Debian's: one primary and two streaming replicas, with
  `synchronous_mode_strict` and `synchronous_commit = on`, so a commit is acknowledged only once a
  synchronous replica has it, and with no synchronous replica left writes wait rather than
  continue unprotected;
* haproxy (Debian's) with Patroni's REST checks: one port always leads to the primary (`GET
  /primary` answers 200 only there), one to the replicas (`GET /replica`), and one HTTP port
  balances over the wallet instances a developer (or the failover test) runs on two fixed ports.

Missing Debian packages are installed with apt-get and Patroni with pip, by `up` itself.
PostgreSQL refuses to run as root: as root, the members run as the `postgres` user.
Authentication is `trust` on 127.0.0.1: a developer's cluster, not a deployment.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

ROOT = Path(__file__).resolve().parent.parent
PG_BIN = Path("/usr/lib/postgresql/15/bin")
DEFAULT_DIR = ROOT / ".wallet-cluster"
PATRONI_VENV = ROOT / ".venv-cluster"
DEFAULT_BASE_PORT = 15400
MEMBERS = 3
DATABASE = "wallet"
# Patroni's shortest leader lease; a lost primary is replaced within about this long.
TTL_S = 20
LOOP_WAIT_S = 1
APT_PACKAGES = {"etcd": "etcd-server", "haproxy": "haproxy", "pgbouncer": "pgbouncer"}


@dataclass(frozen=True)
class Layout:
    """Every port and path of one cluster, from a base port and a folder."""

    directory: Path
    base_port: int = DEFAULT_BASE_PORT

    @property
    def etcd_port(self) -> int:
        return self.base_port

    @property
    def etcd_peer_port(self) -> int:
        return self.base_port + 1

    def pg_port(self, member: int) -> int:
        return self.base_port + 10 + member

    def rest_port(self, member: int) -> int:
        return self.base_port + 20 + member

    @property
    def primary_port(self) -> int:
        """haproxy: the primary, whichever member it is."""
        return self.base_port + 30

    @property
    def replicas_port(self) -> int:
        """haproxy: the replicas, round robin."""
        return self.base_port + 31

    @property
    def api_port(self) -> int:
        """haproxy: HTTP, balanced over the wallet instances on `api_ports`."""
        return self.base_port + 32

    @property
    def api_ports(self) -> tuple[int, int]:
        return (self.base_port + 40, self.base_port + 41)

    def member_name(self, member: int) -> str:
        return f"pg{member + 1}"

    def member_dir(self, member: int) -> Path:
        return self.directory / self.member_name(member)

    def pid_file(self, name: str) -> Path:
        return self.directory / "pids" / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.directory / "logs" / f"{name}.log"

    @property
    def multi_host_url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{self.pg_port(m)}" for m in range(MEMBERS))
        return f"postgresql://postgres@{hosts}/{DATABASE}?target_session_attrs=read-write"

    @property
    def haproxy_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.primary_port}/{DATABASE}"

    @property
    def replicas_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.replicas_port}/{DATABASE}"


# --- installation --------------------------------------------------------------------------------


def _sudo() -> list[str]:
    return [] if os.geteuid() == 0 else ["sudo"]


def ensure_installed() -> None:
    """etcd and haproxy from Debian, Patroni into this venv, when missing."""
    missing = [pkg for binary, pkg in APT_PACKAGES.items() if shutil.which(binary) is None]
    if not (PG_BIN / "postgres").exists():
        missing.append("postgresql-15")
    if missing:
        if shutil.which("apt-get") is None:
            raise SystemExit(f"missing {' '.join(missing)} and no apt-get to install them")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run([*_sudo(), "apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run([*_sudo(), "apt-get", "install", "-y", "-qq", *missing], check=True, env=env)
    if not _patroni().exists():
        _install_patroni()


def _install_patroni() -> None:
    """Patroni gets a venv of its own, made from the system's python3: PostgreSQL's user must be
    able to run that Python (Patroni spawns a Python child to start the postmaster), and a Python
    under /root, or a developer's home, is not readable by it. It also keeps .venv lean."""
    system_python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    subprocess.run([system_python, "-m", "venv", str(PATRONI_VENV)], check=True)
    pip = [str(PATRONI_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--no-deps", "-r", "requirements-cluster.lock"], check=True, cwd=ROOT)
    # Patroni's own requirements that requirements.lock pins for the service.
    shared = ["PyYAML", "urllib3", "psutil", "click"]
    subprocess.run([*pip, "--no-deps", "-c", "requirements.lock", *shared], check=True, cwd=ROOT)


def _patroni() -> Path:
    return PATRONI_VENV / "bin" / "patroni"


# --- processes -----------------------------------------------------------------------------------


def _as_postgres() -> list[str]:
    """PostgreSQL will not run as root; Patroni runs it as the user Patroni runs as."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]


def _spawn(layout: Layout, name: str, command: list[str], env: dict[str, str] | None = None) -> int:
    log = layout.log_file(name).open("ab")
    process = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=dict(os.environ) | (env or {}),
    )
    layout.pid_file(name).write_text(f"{process.pid}\n")
    return process.pid


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own child, not yet reaped) is not alive.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _stop(pid: int | None, timeout_s: float = 30) -> None:
    """SIGTERM to the process group started by `_spawn`, then SIGKILL after `timeout_s`."""
    if pid is None or not alive(pid):
        return
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if alive(pid):
        _signal_group(pid, signal.SIGKILL)


def port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# --- configuration -------------------------------------------------------------------------------


def _patroni_config(layout: Layout, member: int) -> dict[str, object]:
    name = layout.member_name(member)
    return {
        "scope": "wallet",
        "namespace": f"/wallet-{layout.base_port}/",
        "name": name,
        "log": {"level": "INFO"},
        "restapi": {
            "listen": f"127.0.0.1:{layout.rest_port(member)}",
            "connect_address": f"127.0.0.1:{layout.rest_port(member)}",
        },
        "etcd3": {"hosts": [f"127.0.0.1:{layout.etcd_port}"]},
        "bootstrap": {
            "dcs": {
                "ttl": TTL_S,
                "loop_wait": LOOP_WAIT_S,
                "retry_timeout": 5,
                "maximum_lag_on_failover": 16 * 1024 * 1024,
                "synchronous_mode": True,
                "synchronous_mode_strict": True,
                "postgresql": {
                    "use_pg_rewind": True,
                    "use_slots": True,
                    "parameters": {
                        "synchronous_commit": "on",
                        "wal_level": "replica",
                        "hot_standby": "on",
                        "wal_log_hints": "on",
                        "max_connections": 200,
                        "max_wal_senders": 10,
                        "max_replication_slots": 10,
                        "wal_keep_size": "256MB",
                        # A standby whose primary restarted reconnects after this (default 5 s):
                        # with synchronous_mode_strict no commit is acknowledged until it has.
                        "wal_retrieve_retry_interval": "1s",
                        "shared_buffers": "64MB",
                    },
                },
            },
            "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}, "data-checksums"],
        },
        "postgresql": {
            "listen": f"127.0.0.1:{layout.pg_port(member)}",
            "connect_address": f"127.0.0.1:{layout.pg_port(member)}",
            "data_dir": str(layout.member_dir(member) / "data"),
            "bin_dir": str(PG_BIN),
            "pgpass": str(layout.member_dir(member) / "pgpass"),
            "remove_data_directory_on_rewind_failure": True,
            "remove_data_directory_on_diverged_timelines": True,
            "authentication": {
                "superuser": {"username": "postgres"},
                "replication": {"username": "postgres"},
                "rewind": {"username": "postgres"},
            },
            "pg_hba": [
                "local all all trust",
                "host all all 127.0.0.1/32 trust",
                "host replication all 127.0.0.1/32 trust",
            ],
            "parameters": {"unix_socket_directories": str(layout.member_dir(member))},
        },
        "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False, "nosync": False},
    }


def _haproxy_config(layout: Layout) -> str:
    members = "\n".join(
        f"    server {layout.member_name(m)} 127.0.0.1:{layout.pg_port(m)} check port {layout.rest_port(m)}"
        for m in range(MEMBERS)
    )
    apis = "\n".join(
        f"    server api{i + 1} 127.0.0.1:{port} check" for i, port in enumerate(layout.api_ports)
    )
    return f"""global
    maxconn 4000

defaults
    mode tcp
    timeout connect 2s
    timeout client 30m
    timeout server 30m
    timeout check 2s

# The primary: Patroni's REST API answers GET /primary with 200 on the leader only. When the
# leader changes, the old primary's sessions are cut (on-marked-down), so pools reconnect.
listen primary
    bind 127.0.0.1:{layout.primary_port}
    option httpchk
    http-check send meth GET uri /primary
    http-check expect status 200
    default-server inter 1s fastinter 500ms fall 2 rise 1 on-marked-down shutdown-sessions
{members}

# Streaming replicas (for reads that may be stale): GET /replica answers 200 on a running replica.
listen replicas
    bind 127.0.0.1:{layout.replicas_port}
    balance roundrobin
    option httpchk
    http-check send meth GET uri /replica
    http-check expect status 200
    default-server inter 1s fastinter 500ms fall 2 rise 1 on-marked-down shutdown-sessions
{members}

# The wallet service: `wallet serve --port {layout.api_ports[0]}` and `--port {layout.api_ports[1]}`.
listen api
    bind 127.0.0.1:{layout.api_port}
    mode http
    balance roundrobin
    timeout client 60s
    timeout server 60s
    # An instance that answers is up: /health's 503 means the database is away, which every
    # instance shares, and marking them all down would only add haproxy's own 503 to the outage.
    option httpchk GET /health
    http-check expect rstatus ^(200|503)$
    default-server inter 1s fastinter 500ms fall 2 rise 1
{apis}
"""


# --- state ---------------------------------------------------------------------------------------


def rest(layout: Layout, member: int, path: str, timeout_s: float = 1.0) -> tuple[int, dict[str, object]]:
    """GET Patroni's REST API of one member: (status, JSON), (0, {}) when it does not answer."""
    url = f"http://127.0.0.1:{layout.rest_port(member)}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}
    except (OSError, ValueError):
        return 0, {}


def leader(layout: Layout) -> int | None:
    """The member whose REST API says it is the primary, if one does."""
    for member in range(MEMBERS):
        if rest(layout, member, "/primary")[0] == 200:
            return member
    return None


def cluster_state(layout: Layout) -> list[dict[str, object]]:
    """Patroni's view of the members (from any member that answers)."""
    for member in range(MEMBERS):
        status, body = rest(layout, member, "/cluster")
        members = body.get("members")
        if status == 200 and isinstance(members, list):
            return [m for m in members if isinstance(m, dict)]
    return []


def wait_healthy(layout: Layout, timeout_s: float = 120, replicas: int = MEMBERS - 1) -> None:
    """Until there is a leader, `replicas` streaming replicas of which one is synchronous."""
    deadline = time.monotonic() + timeout_s
    state: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        state = cluster_state(layout)
        roles = [m.get("role") for m in state if m.get("state") in ("running", "streaming")]
        if "leader" in roles and roles.count("sync_standby") == 1 and len(roles) >= replicas + 1:
            return
        time.sleep(0.5)
    raise RuntimeError(f"cluster not healthy within {timeout_s:.0f} s: {state}")


def _psql(port: int, sql: str, database: str = "postgres") -> str:
    return subprocess.run(
        [
            str(PG_BIN / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "postgres",
            "-d",
            database,
            "-Atqc",
            sql,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


# --- members -------------------------------------------------------------------------------------


def start_member(layout: Layout, member: int) -> None:
    name = layout.member_name(member)
    config = layout.member_dir(member) / "patroni.yml"
    home = str(layout.member_dir(member))
    _spawn(
        layout, name, [*_as_postgres(), str(_patroni()), str(config)], {"HOME": home, "PGUSER": "postgres"}
    )


def postmaster_pid(layout: Layout, member: int) -> int | None:
    return read_pid(layout.member_dir(member) / "data" / "postmaster.pid")


def kill_postmaster(layout: Layout, member: int) -> None:
    """SIGKILL of the member's postmaster: Patroni stays and restarts (or demotes) it."""
    pid = postmaster_pid(layout, member)
    if pid is not None and alive(pid):
        os.kill(pid, signal.SIGKILL)


def kill_member(layout: Layout, member: int) -> None:
    """A lost node: Patroni and its PostgreSQL SIGKILLed at once, nothing left running."""
    patroni = read_pid(layout.pid_file(layout.member_name(member)))
    postmaster = postmaster_pid(layout, member)
    for pid in (patroni, postmaster):
        if pid is not None and alive(pid):
            os.kill(pid, signal.SIGKILL)
    if patroni is not None:
        _signal_group(patroni, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (alive(postmaster) or alive(patroni)):
        time.sleep(0.05)


# --- up / down -----------------------------------------------------------------------------------


def up(layout: Layout, *, install: bool = True) -> None:
    if install:
        ensure_installed()
    if layout.pid_file("etcd").exists() and alive(read_pid(layout.pid_file("etcd"))):
        raise SystemExit(f"a cluster is already running in {layout.directory} (make cluster-down first)")
    ports = [
        layout.etcd_port,
        layout.etcd_peer_port,
        layout.primary_port,
        layout.replicas_port,
        layout.api_port,
    ]
    ports += [p for m in range(MEMBERS) for p in (layout.pg_port(m), layout.rest_port(m))]
    taken = [port for port in ports if not port_free(port)]
    if taken:
        raise SystemExit(f"ports {taken} are taken: another cluster on base port {layout.base_port}?")
    shutil.rmtree(layout.directory, ignore_errors=True)
    for sub in ("pids", "logs"):
        (layout.directory / sub).mkdir(parents=True, exist_ok=True)
    layout.directory.chmod(0o755)
    (layout.directory / "logs").chmod(0o777)

    for member in range(MEMBERS):
        member_dir = layout.member_dir(member)
        member_dir.mkdir(mode=0o700)
        # JSON is YAML: Patroni reads it as its configuration file.
        (member_dir / "patroni.yml").write_text(json.dumps(_patroni_config(layout, member), indent=2))
        if os.geteuid() == 0:
            shutil.chown(member_dir, "postgres", "postgres")
            shutil.chown(member_dir / "patroni.yml", "postgres", "postgres")
    (layout.directory / "haproxy.cfg").write_text(_haproxy_config(layout))

    etcd_dir = layout.directory / "etcd"
    _spawn(
        layout,
        "etcd",
        [
            "etcd",
            "--name=etcd1",
            f"--data-dir={etcd_dir}",
            f"--listen-client-urls=http://127.0.0.1:{layout.etcd_port}",
            f"--advertise-client-urls=http://127.0.0.1:{layout.etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{layout.etcd_peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{layout.etcd_peer_port}",
            f"--initial-cluster=etcd1=http://127.0.0.1:{layout.etcd_peer_port}",
            "--initial-cluster-state=new",
        ],
    )
    _wait_http(f"http://127.0.0.1:{layout.etcd_port}/health", 30)
    for member in range(MEMBERS):
        start_member(layout, member)
    _spawn(layout, "haproxy", ["haproxy", "-db", "-f", str(layout.directory / "haproxy.cfg")])
    wait_healthy(layout)
    if not _psql(layout.primary_port, f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"):
        _psql(layout.primary_port, f"CREATE DATABASE {DATABASE}")


def _wait_http(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (OSError, urllib.error.URLError):
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s")


def down(layout: Layout) -> None:
    """Stops everything started in the folder (Patroni stops its PostgreSQL), then removes it."""
    _stop(read_pid(layout.pid_file("haproxy")), 10)
    for member in range(MEMBERS):
        _stop(read_pid(layout.pid_file(layout.member_name(member))), 60)
        pid = postmaster_pid(layout, member)
        if pid is not None and alive(pid):  # a member whose Patroni was killed left it running
            os.kill(pid, signal.SIGKILL)
    _stop(read_pid(layout.pid_file("etcd")), 10)
    shutil.rmtree(layout.directory, ignore_errors=True)


def describe(layout: Layout) -> str:
    return (
        f"Cluster in {layout.directory} (logs in {layout.directory / 'logs'}):\n"
        f"  multi-host URL: {layout.multi_host_url}\n"
        f"  through haproxy: {layout.haproxy_url}\n"
        f"  replicas (stale reads): {layout.replicas_url}\n"
        f"  wallet API through haproxy: http://127.0.0.1:{layout.api_port}"
        f" (instances on ports {layout.api_ports[0]} and {layout.api_ports[1]})\n"
        f"  Patroni REST: "
        + ", ".join(f"{layout.member_name(m)} http://127.0.0.1:{layout.rest_port(m)}" for m in range(MEMBERS))
    )


def _layout(directory: Path | None, base_port: int | None) -> Layout:
    return Layout(
        (directory or Path(os.environ.get("WALLET_CLUSTER_DIR", DEFAULT_DIR))).resolve(),
        base_port or int(os.environ.get("WALLET_CLUSTER_BASE_PORT", DEFAULT_BASE_PORT)),
    )


app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
DirOption = Annotated[Path | None, typer.Option(help="Default WALLET_CLUSTER_DIR or .wallet-cluster.")]
PortOption = Annotated[int | None, typer.Option(help="Default WALLET_CLUSTER_BASE_PORT or 15400.")]


@app.command("up")
def up_command(directory: DirOption = None, base_port: PortOption = None) -> None:
    """Install what is missing, start etcd, three Patroni members and haproxy, create the database."""
    layout = _layout(directory, base_port)
    started = time.monotonic()
    up(layout)
    typer.echo(f"cluster up in {time.monotonic() - started:.1f} s")
    typer.echo(describe(layout))


@app.command("deps")
def deps_command() -> None:
    """Install etcd, haproxy and pgbouncer (Debian) and Patroni (.venv-cluster) when missing."""
    ensure_installed()
    typer.echo(f"etcd, haproxy, pgbouncer and {_patroni()} in place")


@app.command("down")
def down_command(directory: DirOption = None, base_port: PortOption = None) -> None:
    """Stop the cluster and delete its folder."""
    layout = _layout(directory, base_port)
    down(layout)
    typer.echo(f"cluster in {layout.directory} stopped and removed")


@app.command("status")
def status_command(directory: DirOption = None, base_port: PortOption = None) -> None:
    """Patroni's view of the members, and the URLs."""
    layout = _layout(directory, base_port)
    for member in cluster_state(layout):
        typer.echo(
            f"{member.get('name')}: {member.get('role')} {member.get('state')}"
            f" timeline {member.get('timeline')} lag {member.get('lag', 0)}"
        )
    typer.echo(describe(layout))


if __name__ == "__main__":
    app()
