"""Worker processes for `wallet serve --workers N`: one listening socket per worker.

uvicorn's own supervisor binds one socket and every worker accepts on it: which worker wins each
connect is a race, and on the 2-core benchmark machine one worker was seen holding all 64 of a
run's connections while the other idled, its requests queueing on one event loop and one pool
(docs/PERFORMANCE.md, issue 8, "Tails at 64 connections"). Here the supervisor binds one socket
per worker with SO_REUSEPORT, so the kernel spreads new connections over the workers (by a hash
of each connection), and hands each worker its own socket.

SO_REUSEPORT also lets an unrelated process join the port: a second `wallet serve` started while
the first still runs (a botched restart) would silently split the traffic with it. So before
binding, `ensure_port_free` binds the address once without SO_REUSEPORT, which fails while
anything listens there, and `wallet serve` refuses with one line. (Between that check and the bind
another process could still take the port; the window is the time of one bind.)

The supervisor keeps every socket open, so a worker that dies is replaced on the same socket and
the connections waiting in its backlog are not lost. A worker also gets SIGTERM when the
supervisor dies (even by SIGKILL), so no orphan keeps a socket of the port: with SO_REUSEPORT a
stale process would otherwise share the port with the next service silently.

Everything else (health checks, restarts, signals, graceful shutdown) is uvicorn's
`Multiprocess`; the three methods that start workers are its own, with a socket per worker.
Re-check them on a uvicorn upgrade (uvicorn is pinned in requirements.lock).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import signal
import socket
import sys

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process, logger

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def serve(config: uvicorn.Config) -> None:
    """Runs `config` in this process (one worker) or under the per-socket supervisor."""
    if config.workers <= 1:
        server = uvicorn.Server(config)
        server.run()
        if not server.started:  # as uvicorn.run: the application or the bind failed
            sys.exit(STARTUP_FAILURE)
        return
    sockets = listening_sockets(config.host, config.port, config.workers, config.backlog)
    try:
        PerWorkerSockets(config, sockets).run()
    finally:
        for sock in sockets:
            sock.close()


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def ensure_port_free(host: str, port: int) -> None:
    """Raises OSError (EADDRINUSE when something listens there) unless (host, port) can be bound
    by a socket without SO_REUSEPORT: no process, this service or another, serves it. Port 0
    (any free port) always can."""
    if port == 0:
        return
    with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are no one
        probe.bind((host, port))


def bind_problem(host: str, port: int, exc: OSError) -> str:
    """One line for an operator about why `ensure_port_free` failed."""
    if exc.errno == errno.EADDRINUSE:
        return (
            f"{host}:{port} is already served by another process (a `wallet serve` still running?): "
            "stop it first, or choose another --port"
        )
    if isinstance(exc, socket.gaierror):
        return f"cannot listen on {host}:{port}: unknown host ({exc.strerror})"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"


def listening_sockets(host: str, port: int, count: int, backlog: int) -> list[socket.socket]:
    """`count` sockets listening on one (host, port) with SO_REUSEPORT (port 0: one free port).
    Raises OSError (EADDRINUSE) when the port is served already, even with SO_REUSEPORT."""
    ensure_port_free(host, port)
    family = _family(host)
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]
            sock.listen(backlog)
            sock.set_inheritable(True)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class Worker(Process):
    """uvicorn's worker process, which ends when its supervisor does."""

    def target(self, sockets: list[socket.socket] | None = None) -> None:  # pragma: no cover (child)
        _terminate_with_parent()
        super().target(sockets)


def _terminate_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class PerWorkerSockets(Multiprocess):
    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
        assert len(sockets) == config.workers
        super().__init__(config, sockets=[])
        self.worker_sockets = sockets

    def _new_worker(self, index: int) -> Worker:
        worker = Worker(self.config, [self.worker_sockets[index]])
        worker.start()
        return worker

    def init_processes(self) -> None:
        for index in range(self.processes_num):
            self.processes.append(self._new_worker(index))

    def restart_all(self) -> None:
        """SIGHUP: replaces each worker, its replacement serving before the old one retires."""
        for index, old in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            new = self._new_worker(index)
            if not new.wait_until_ready(self.config.timeout_worker_healthcheck, self.should_exit):
                new.kill()
                new.join()
                if not self.should_exit.is_set():
                    logger.error(f"New child process [{new.pid}] was not ready in time; keeping [{old.pid}].")
                return
            old.terminate()
            old.join()
            self.processes[index] = new

    def keep_subprocess_alive(self) -> None:
        if self.should_exit.is_set():
            return
        for index, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()  # hung: kill it
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                logger.error(f"Child process [{process.pid}] failed to start, stopping the parent process.")
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            logger.info(f"Child process [{process.pid}] died")
            self.processes[index] = self._new_worker(index)


def main(argv: list[str] | None = None) -> None:
    """`python -m wallet.serving APP --port P --workers N`: any ASGI app under this supervisor
    (the benchmark serves its hello-world floor this way, as the service is served)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m wallet.serving")
    parser.add_argument("app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    serve(
        uvicorn.Config(
            args.app,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level="warning",
            access_log=False,
        )
    )


if __name__ == "__main__":
    main()
