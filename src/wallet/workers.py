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
  the port with the next service silently;
- kills (SIGKILL) and replaces, on the same socket, a worker that hangs: see below.

Hung workers. A process that lives but no longer serves (an event loop blocked by a synchronous
call or a deadlock, a stopped process) is not dead, and its socket's connections would wait
forever. Each worker's event loop beats: every BEAT_INTERVAL_S a task of the loop writes
`time.monotonic()` (one clock for every process of the machine) into a double in shared memory
that the supervisor reads. The task is started from the server's own loop through uvicorn's public
hook for a supervisor's heartbeat, `Config.callback_notify` (gunicorn's UvicornWorker uses it),
which uvicorn calls once the server serves; its own rhythm (once per ten 0.1 s ticks of uvicorn's
main loop) stretches on a busy machine, where every tick wakes late, so the beats are the task's,
one wake-up each. A worker whose last beat is older than
`heartbeat_timeout_s` (WALLET_WORKER_HEARTBEAT_TIMEOUT_S; 0: not checked) gets SIGKILL at once, with
a log line, and is replaced: a loop that does not run cannot shut down gracefully, and a stopped
process would not even take SIGTERM. What it was doing is lost as in a crash (PostgreSQL rolls
back its open transactions; clients retry with their idempotency keys); the connections waiting
in its socket's backlog are served by the replacement. A worker is judged from its first beat,
that is once it serves: its start (the application's import, the lifespan start-up that waits up
to WALLET_DB_STARTUP_WAIT_MS for the database) is not, and a worker that fails to start exits.
The shared double has no lock: a worker killed while holding one would block the supervisor; an
aligned 8-byte store and load are atomic on the platforms the service runs on. When the supervisor
itself did not run for half the timeout (the whole service stopped by SIGSTOP or a frozen
container, whose workers stopped beating with it), every worker is given a full timeout again
rather than judged on beats that could not happen.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import multiprocessing
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import FrameType

import uvicorn
from uvicorn.config import STARTUP_FAILURE

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# How often the supervisor looks for dead workers.
CHECK_INTERVAL_S = 0.5
# Beyond the graceful shutdown a worker is given to exit before it is killed.
EXIT_MARGIN_S = 5.0
# How often a worker's event loop beats (WALLET_WORKER_HEARTBEAT_TIMEOUT_S is at least 1 s).
BEAT_INTERVAL_S = 0.25

log = logging.getLogger("uvicorn.error")
_spawn = multiprocessing.get_context("spawn")


async def _beat(heartbeat: ctypes.c_double) -> None:  # pragma: no cover (child)
    """In the worker's event loop, until the loop ends: it beats only while the loop runs."""
    while True:
        heartbeat.value = time.monotonic()
        await asyncio.sleep(BEAT_INTERVAL_S)


def _beating(heartbeat: ctypes.c_double) -> Callable[[], Awaitable[None]]:  # pragma: no cover (child)
    """uvicorn's `callback_notify`: its first call, in the server's loop, starts the beats."""
    beats: list[asyncio.Task[None]] = []  # the task, referenced while the loop runs

    async def notified() -> None:
        if not beats:
            beats.append(asyncio.get_running_loop().create_task(_beat(heartbeat)))

    return notified


def _worker(
    config: uvicorn.Config, sock: socket.socket, heartbeat: ctypes.c_double
) -> None:  # pragma: no cover (child)
    _terminate_with_parent()
    config.configure_logging()
    # uvicorn's main loop calls callback_notify when timeout_notify seconds have passed since the
    # last call, checking once a second: with 0, at its first tick (then once a second, a no-op).
    config.callback_notify = _beating(heartbeat)
    config.timeout_notify = 0
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


@dataclass(frozen=True, slots=True)
class Worker:
    process: multiprocessing.process.BaseProcess
    # The time.monotonic() of the worker's last beat, in shared memory; 0.0 until its first.
    heartbeat: ctypes.c_double


class Supervisor:
    def __init__(
        self, config: uvicorn.Config, sockets: list[socket.socket], *, heartbeat_timeout_s: float
    ) -> None:
        self.config = config
        self.sockets = sockets
        self.heartbeat_timeout_s = heartbeat_timeout_s  # 0: hung workers are not looked for
        self.workers: list[Worker] = []
        self.stop = threading.Event()
        self.restart = threading.Event()
        self.stopped_by: int | None = None
        self.exit_code = 0
        # When the supervisor last looked at the beats, and since when it has run without a gap.
        self.last_look = self.running_since = time.monotonic()

    def _start(self, index: int) -> Worker:
        heartbeat = _spawn.RawValue(ctypes.c_double, 0.0)
        process = _spawn.Process(
            target=_worker, args=(self.config, self.sockets[index], heartbeat), name=f"worker-{index}"
        )
        process.start()
        log.info("Started worker [%s] on socket %d", process.pid, index)
        return Worker(process, heartbeat)

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
            self.workers = [self._start(index) for index in range(len(self.sockets))]
            while not self.stop.wait(CHECK_INTERVAL_S):
                if self.restart.is_set():
                    self.restart.clear()
                    self._restart_all()
                self._replace_dead()
                self._replace_hung()
            self._shutdown()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if self.exit_code:
            sys.exit(self.exit_code)
        if self.stopped_by is not None:
            signal.raise_signal(self.stopped_by)

    def _replace_dead(self) -> None:
        for index, worker in enumerate(self.workers):
            process = worker.process
            if process.is_alive() or self.stop.is_set():
                continue
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                log.error("Worker [%s] failed to start; stopping.", process.pid)
                self.exit_code = STARTUP_FAILURE
                self.stop.set()
                return
            log.warning("Worker [%s] died (exit code %s); replacing it.", process.pid, process.exitcode)
            self.workers[index] = self._start(index)

    def _replace_hung(self) -> None:
        """Kills (SIGKILL) and replaces each worker whose last beat is older than the timeout."""
        now = time.monotonic()
        if now - self.last_look > max(2 * CHECK_INTERVAL_S, self.heartbeat_timeout_s / 2):
            self.running_since = now  # the supervisor was stopped too: beats could not happen
        self.last_look = now
        if not self.heartbeat_timeout_s:
            return
        for index, worker in enumerate(self.workers):
            last_beat = worker.heartbeat.value
            if self.stop.is_set() or not last_beat:  # not serving yet
                continue
            silent_s = now - max(last_beat, self.running_since)
            if silent_s <= self.heartbeat_timeout_s or not worker.process.is_alive():
                continue
            log.error(
                "Worker [%s] has not beaten for %.1f s (heartbeat timeout %g s): its event loop is "
                "blocked or the process is stopped; killing it (SIGKILL) and replacing it.",
                worker.process.pid,
                silent_s,
                self.heartbeat_timeout_s,
            )
            worker.process.kill()
            worker.process.join()
            self.workers[index] = self._start(index)

    def _restart_all(self) -> None:
        for index in range(len(self.workers)):
            if self.stop.is_set():
                return
            self._retire(self.workers[index].process)
            self.workers[index] = self._start(index)

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
        for worker in self.workers:
            if worker.process.is_alive():
                worker.process.terminate()
        for worker in self.workers:
            self._retire(worker.process)
