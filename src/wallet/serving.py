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

The workers are uvicorn servers started through its public API, one per socket, under a small
supervisor of the service's own (`wallet.workers`: it keeps every socket open, replaces a worker
that dies or hangs on the same socket, stops them gracefully, and no worker outlives it). Their HTTP
protocol is uvicorn's own, given through its public `http=` setting
(`wallet.http_protocol.CoalescingHttpToolsProtocol`: one write per response). Nothing of uvicorn
is overridden or replaced (issue 19).
"""

from __future__ import annotations

import errno
import socket
import sys

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from wallet.http_protocol import CoalescingHttpToolsProtocol
from wallet.settings import get_settings
from wallet.workers import Supervisor

# What `wallet serve` and `python -m wallet.serving` give uvicorn's `http=` setting.
HTTP_PROTOCOL = CoalescingHttpToolsProtocol


def serve(config: uvicorn.Config, *, heartbeat_timeout_s: float) -> None:
    """Runs `config` in this process (one worker) or under the per-socket supervisor, which
    replaces a worker silent for `heartbeat_timeout_s` (0: never; wallet.workers)."""
    if config.workers <= 1:
        server = uvicorn.Server(config)
        server.run()
        if not server.started:  # as uvicorn.run: the application or the bind failed
            sys.exit(STARTUP_FAILURE)
        return
    sockets = listening_sockets(config.host, config.port, config.workers, config.backlog)
    try:
        Supervisor(config, sockets, heartbeat_timeout_s=heartbeat_timeout_s).run()
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
            http=HTTP_PROTOCOL,
        ),
        heartbeat_timeout_s=get_settings().worker_heartbeat_timeout_s,
    )


if __name__ == "__main__":
    main()
