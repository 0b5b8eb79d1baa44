"""The supervisor of `wallet serve --workers N`: N uvicorn servers, each in its own process on its
own listening socket, started through uvicorn's public API (`Server(config).run(sockets=[...])`).

Why not uvicorn's own `--workers`: its supervisor binds one socket that every worker accepts on,
and which worker wins each connection is a race (on the 2-core benchmark machine one worker was
seen holding all 64 of a run's connections while the other idled; docs/PERFORMANCE.md, issue 8).
Here each worker has its own socket, bound with SO_REUSEPORT by `wallet.serving`, and the kernel
spreads new connections over them. Why not a subclass of uvicorn's supervisor: it was one that
replaced three of its internal methods (issue 19); this is a small supervisor of its own.

What it does:
- starts each worker with its socket (multiprocessing's spawn: the socket is handed over, the
  worker imports the application itself); a worker that fails to start stops the service with
  uvicorn's exit status for that (3);
- replaces a worker that dies, on the same socket, which it keeps open, so the connections
  waiting in that socket's backlog are served by the replacement;
- SIGTERM or SIGINT: every worker gets SIGTERM and shuts down gracefully (uvicorn's own graceful
  shutdown, within `timeout_graceful_shutdown`, then lifespan shutdown); the supervisor waits for
  them, then re-raises the signal, as uvicorn does;
- SIGHUP: replaces the workers one at a time;
- each worker gets SIGTERM when the supervisor dies, even by SIGKILL (Linux PR_SET_PDEATHSIG), so
  no orphan keeps a socket of the port: with SO_REUSEPORT a stale worker would otherwise share
  the port with the next service silently.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import multiprocessing
import signal
import socket
import sys
import threading
from types import FrameType

import uvicorn
from uvicorn.config import STARTUP_FAILURE

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# How often the supervisor looks for dead workers.
CHECK_INTERVAL_S = 0.5
# Beyond the graceful shutdown a worker is given to exit before it is killed.
EXIT_MARGIN_S = 5.0

log = logging.getLogger("uvicorn.error")
_spawn = multiprocessing.get_context("spawn")


def _worker(config: uvicorn.Config, sock: socket.socket) -> None:  # pragma: no cover (child)
    _terminate_with_parent()
    config.configure_logging()
    try:
        config.load()  # an application that cannot be imported: uvicorn exits with 1
    except SystemExit:
        sys.exit(STARTUP_FAILURE)  # which stops the service, rather than a replacement each time
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    if not server.started:  # the application or its lifespan failed to start
        sys.exit(STARTUP_FAILURE)


def _terminate_with_parent() -> None:  # pragma: no cover (child)
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
        self.config = config
        self.sockets = sockets
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self.stop = threading.Event()
        self.restart = threading.Event()
        self.stopped_by: int | None = None
        self.exit_code = 0

    def _start(self, index: int) -> multiprocessing.process.BaseProcess:
        process = _spawn.Process(
            target=_worker, args=(self.config, self.sockets[index]), name=f"worker-{index}"
        )
        process.start()
        log.info("Started worker [%s] on socket %d", process.pid, index)
        return process

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.restart.set()
            return
        self.stopped_by = signum
        self.stop.set()

    def run(self) -> None:
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        previous = {signum: signal.signal(signum, self._on_signal) for signum in handled}
        try:
            self.processes = [self._start(index) for index in range(len(self.sockets))]
            while not self.stop.wait(CHECK_INTERVAL_S):
                if self.restart.is_set():
                    self.restart.clear()
                    self._restart_all()
                self._replace_dead()
            self._shutdown()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if self.exit_code:
            sys.exit(self.exit_code)
        if self.stopped_by is not None:
            signal.raise_signal(self.stopped_by)

    def _replace_dead(self) -> None:
        for index, process in enumerate(self.processes):
            if process.is_alive() or self.stop.is_set():
                continue
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                log.error("Worker [%s] failed to start; stopping.", process.pid)
                self.exit_code = STARTUP_FAILURE
                self.stop.set()
                return
            log.warning("Worker [%s] died (exit code %s); replacing it.", process.pid, process.exitcode)
            self.processes[index] = self._start(index)

    def _restart_all(self) -> None:
        for index in range(len(self.processes)):
            if self.stop.is_set():
                return
            self._retire(self.processes[index])
            self.processes[index] = self._start(index)

    def _retire(self, process: multiprocessing.process.BaseProcess) -> None:
        """SIGTERM (uvicorn's graceful shutdown), then SIGKILL if it outlasts it."""
        if process.is_alive():
            process.terminate()
        process.join((self.config.timeout_graceful_shutdown or 0) + EXIT_MARGIN_S)
        if process.is_alive():
            log.warning("Worker [%s] did not stop in time; killing it.", process.pid)
            process.kill()
            process.join()

    def _shutdown(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        for process in self.processes:
            self._retire(process)
