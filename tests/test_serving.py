"""`wallet serve --workers N` (wallet.serving): one listening socket per worker, so connections
spread over the workers; a dead worker, or one that hangs, is replaced on its socket; no worker
outlives the supervisor, even one killed with SIGKILL."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
from tools.service_process import ServiceProcess

from tests.support import CliResult, wallet_cli

WORKERS = 2
CONNECTIONS = 32
HEARTBEAT_TIMEOUT_S = 3  # WALLET_WORKER_HEARTBEAT_TIMEOUT_S (workers beat four times a second)


def _started(database_url: str, log_path: Path) -> ServiceProcess:
    process = ServiceProcess(
        {
            "WALLET_DATABASE_URL": database_url,
            "WALLET_LOG_LEVEL": "WARNING",
            "WALLET_WORKER_HEARTBEAT_TIMEOUT_S": str(HEARTBEAT_TIMEOUT_S),
        },
        workers=WORKERS,
        log_path=log_path,
    )
    process.start()
    return process


@pytest.fixture
def service(database_url: str, tmp_path: Path):
    """A service of the test's own: for the tests that stop it."""
    process = _started(database_url, tmp_path / "service.log")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def _module_service(database_url: str, tmp_path_factory: pytest.TempPathFactory):
    process = _started(database_url, tmp_path_factory.mktemp("serving") / "service.log")
    yield process
    process.stop()


@pytest.fixture
def shared_service(_module_service: ServiceProcess) -> ServiceProcess:
    """One service for the tests that leave it as they found it (each worker on a socket of its
    own, answering), started once: each test gets it with all its workers up."""
    _wait_for(lambda: len(_workers(_module_service)) == WORKERS)
    return _module_service


def _workers(service: ServiceProcess) -> list[psutil.Process]:
    """The supervisor's children that listen on the port (not multiprocessing's helper)."""
    assert service.process is not None
    workers = []
    for child in psutil.Process(service.process.pid).children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and _listening(child, service.port):
                workers.append(child)
        except psutil.NoSuchProcess:
            continue
    return workers


def _listening(process: psutil.Process, port: int) -> set[int]:
    """The file descriptors of `process` listening on `port`."""
    return {
        c.fd
        for c in process.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_for(condition, timeout_s: float = 30.0, describe=lambda: "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out {describe()}"
        time.sleep(0.1)


def _open_connections(service: ServiceProcess, count: int) -> list[socket.socket]:
    """`count` keep-alive connections, each having had one answered request."""
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", service.port), timeout=10)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sockets.append(sock)
    return sockets


def test_each_worker_listens_on_its_own_socket_and_gets_a_share_of_the_connections(shared_service):
    service = shared_service
    workers = _workers(service)
    assert len(workers) == WORKERS
    # Every worker listens on the port, through one socket of its own.
    assert all(len(_listening(w, service.port)) == 1 for w in workers)
    connections = _open_connections(service, CONNECTIONS)
    try:
        local_ports = {s.getsockname()[1] for s in connections}
        held = Counter(
            w.pid
            for w in workers
            for c in w.net_connections(kind="tcp")
            if c.raddr and c.raddr.port in local_ports and c.laddr.port == service.port
        )
    finally:
        for sock in connections:
            sock.close()
    assert sum(held.values()) == CONNECTIONS
    # The kernel spreads connections by a hash: each of 2 workers gets far more than 4 of 32
    # (fewer happens with probability about 2 in a million); with one shared socket, one worker
    # was seen taking all of them.
    assert len(held) == WORKERS and min(held.values()) >= 4, held


def test_a_dead_worker_is_replaced_and_the_port_keeps_answering(shared_service):
    service = shared_service
    before = _workers(service)
    victim = before[0]
    victim.send_signal(signal.SIGKILL)
    _wait_for(
        lambda: victim.pid not in {w.pid for w in _workers(service)} and len(_workers(service)) == WORKERS
    )
    # The replacement serves: every one of many new connections is answered.
    for _ in range(20):
        assert httpx.get(f"{service.base_url}/health", timeout=10).status_code == 200
    assert all(len(_listening(w, service.port)) == 1 for w in _workers(service))


def test_a_hung_worker_is_killed_and_replaced_within_the_heartbeat_timeout(service, tmp_path):
    """A worker that lives but does not run (SIGSTOP: its event loop beats no more, as a blocked
    loop would not) is killed within the timeout and replaced on its socket; the requests that
    arrived on that socket meanwhile are answered by the replacement, and the other worker, which
    kept beating, is left alone."""

    def log() -> str:
        return "; the service's log ends: " + (tmp_path / "service.log").read_text()[-3000:]

    victim, other = _workers(service)
    time.sleep(HEARTBEAT_TIMEOUT_S + 1)  # idle workers beat: neither is taken for hung
    assert {w.pid for w in _workers(service)} == {victim.pid, other.pid}, log()
    victim.suspend()
    stopped_at = time.monotonic()
    # New connections while it hangs: the kernel puts about half on the victim's socket.
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = pool.map(
            lambda _: httpx.get(f"{service.base_url}/health", timeout=60).status_code, range(8)
        )
        _wait_for(lambda: not _alive(victim), HEARTBEAT_TIMEOUT_S + 5, log)
        killed_after_s = time.monotonic() - stopped_at
        assert list(answers) == [200] * 8
    # Its last beat was a quarter of a second before the stop at most, and the supervisor looks
    # twice a second: killed within the timeout, with slack for a busy machine.
    assert killed_after_s < HEARTBEAT_TIMEOUT_S + 3, (killed_after_s, log())
    _wait_for(lambda: len(_workers(service)) == WORKERS, describe=log)
    workers = _workers(service)
    assert other.pid in {w.pid for w in workers} and victim.pid not in {w.pid for w in workers}, log()
    assert all(len(_listening(w, service.port)) == 1 for w in workers)
    for _ in range(20):
        assert httpx.get(f"{service.base_url}/health", timeout=10).status_code == 200
    assert f"Worker [{victim.pid}] has not beaten for" in (tmp_path / "service.log").read_text(), log()


def test_a_service_stopped_as_a_whole_keeps_its_workers_when_it_resumes(service, tmp_path):
    """Ctrl-Z, or a frozen container, stops the supervisor with its workers: on resuming, their
    beats are older than the timeout because nothing ran, and none of them is taken for hung."""
    assert service.process is not None
    supervisor = psutil.Process(service.process.pid)
    workers = _workers(service)
    everyone = [supervisor, *workers]
    for process in everyone:
        process.suspend()
    time.sleep(HEARTBEAT_TIMEOUT_S + 1.5)
    for process in everyone:
        process.resume()
    time.sleep(HEARTBEAT_TIMEOUT_S + 1)
    assert {w.pid for w in _workers(service)} == {w.pid for w in workers}, (
        tmp_path / "service.log"
    ).read_text()[-3000:]
    assert httpx.get(f"{service.base_url}/health", timeout=10).status_code == 200


def test_no_worker_outlives_a_killed_supervisor(service):
    workers = _workers(service)
    service.kill()  # SIGKILL: the supervisor cannot tell its workers anything
    _wait_for(lambda: not any(_alive(w) for w in workers))
    # Nothing listens on the port any more: a new service can take it.
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", service.port))
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{service.base_url}/health", timeout=2)


def _serve(*args: str, env: dict[str, str]) -> CliResult:
    """`wallet serve ARGS` in this process: each mistake here is found before serve installs its
    signal handler, and a serve that got past that would fail with a traceback (tests.support)."""
    return wallet_cli("serve", *args, env=env)


def test_a_second_service_on_a_served_port_is_refused_and_the_first_keeps_it_alone(
    shared_service, database_url
):
    service = shared_service
    before = {w.pid for w in _workers(service)}
    env = {"WALLET_DATABASE_URL": database_url}
    for args in [
        ("--workers", "2"),  # SO_REUSEPORT would have let it join the port
        ("--workers", "1"),
        ("--host", "0.0.0.0", "--workers", "2"),  # the wildcard address covers 127.0.0.1
    ]:
        result = _serve("--port", str(service.port), *args, env=env)
        assert result.returncode == 1, (args, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1, (args, result.stderr)
        assert lines[0].startswith("error: ") and f":{service.port} is already served" in lines[0]
    # No one else listens on the port: every connection still goes to the first service.
    listeners = {
        c.pid
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == service.port
    }
    assert listeners == before
    assert httpx.get(f"{service.base_url}/health", timeout=10).status_code == 200


def test_a_port_outside_1_to_65535_is_a_usage_error(database_url):
    for port in ("70000", "0", "-1", "65536"):
        result = _serve("--port", port, env={"WALLET_DATABASE_URL": database_url})
        assert result.returncode == 2, (port, result.stderr)
        assert "--port" in result.stderr and "Traceback" not in result.stderr
    result = _serve(env={"WALLET_DATABASE_URL": database_url, "WALLET_PORT": "70000"})
    assert result.returncode == 2 and result.stderr.startswith("error: WALLET_PORT: "), result.stderr


def test_a_host_that_cannot_be_listened_on_is_one_line(database_url):
    result = _serve(
        "--host", "no-such-host.invalid", "--port", "8000", env={"WALLET_DATABASE_URL": database_url}
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("error: cannot listen on no-such-host.invalid:8000: ")
    assert len(result.stderr.splitlines()) == 1


def test_sigterm_lets_a_request_in_flight_finish_then_stops_every_worker(service):
    """Graceful shutdown: the supervisor hands SIGTERM to each worker (uvicorn's own shutdown:
    requests in flight are answered, then the lifespan ends), waits for them, and exits."""
    assert service.process is not None
    workers = _workers(service)
    # A request whose body arrives slowly is in flight when the signal comes.
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=30)
    body = b'{"user_id": "nobody", "name": "x"}'
    sock.sendall(
        b"POST /api/v1/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:5]
    )
    time.sleep(0.5)
    service.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    sock.sendall(body[5:])
    answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 401"), answer  # answered (no key), not cut off
    sock.close()
    service.process.wait(timeout=30)
    assert not any(_alive(w) for w in workers)


def test_an_application_that_cannot_start_stops_the_service(database_url):
    """A worker that fails to start (here: no such application) stops the supervisor with
    uvicorn's exit status for it (3), rather than being replaced again and again."""
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    free = port.getsockname()[1]
    port.close()
    result = subprocess.run(
        [sys.executable, "-m", "wallet.serving", "no_such_module:app", "--port", str(free), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3, result.stderr[-2000:]
