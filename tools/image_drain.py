"""`make image-test`'s shutdown check: SIGTERM to a serving container lets in-flight requests finish.

`python -m tools.image_drain BASE_URL KEY USER CONTAINER` posts top-ups for USER with KEY from
several clients, each request on its own connection, and sends SIGTERM to CONTAINER (`podman kill
--signal TERM`) while they run. One of the requests is held in flight on purpose: its headers and
half of its body are sent before the signal, the rest a second after it. The check passes when

- that request is answered 201 (the server waited for it instead of dropping it),
- every other request was answered 201, or (after the signal only) not taken up: refused, or
  closed unanswered from the listening backlog once the workers stopped accepting; never a 5xx,
- the container exits on its own, within the graceful-shutdown window, with 0 or 143 (SIGTERM,
  re-raised by `wallet serve` after a clean shutdown).

It prints one JSON object: the counts, the exit code and how long the shutdown took. The caller
compares the 201s with what the ledger holds afterwards: a request cut off after its top-up was
posted would show there as one posting more than the answers.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from urllib.parse import urlsplit

import httpx

CLIENTS = 6
LOAD_BEFORE_SIGNAL_S = 1.5


def _topup_body(user: str, key: str) -> bytes:
    return json.dumps(
        {"user_id": user, "asset_type": "GOLD_COINS", "amount": 1, "idempotency_key": key}
    ).encode()


def _held_request(base_url: str, token: str, user: str, signalled: threading.Event) -> int:
    """Sends half a top-up, waits for the signal and a second more, sends the rest: its status."""
    parts = urlsplit(base_url)
    body = _topup_body(user, f"drain-held-{uuid.uuid4().hex}")
    head = (
        f"POST /api/v1/transactions/topup HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=30) as sock:
        sock.sendall(head + body[: len(body) // 2])
        signalled.wait(30)
        time.sleep(1.0)
        sock.sendall(body[len(body) // 2 :])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line = answer.split(b"\r\n", 1)[0].decode(errors="replace")
    return int(status_line.split()[1]) if status_line.startswith("HTTP/") else 0


def main(argv: list[str]) -> int:
    base_url, token, user, container = argv
    outcomes: dict[str, int] = {
        "answered_201": 0,
        "unanswered_after_signal": 0,
        "unanswered_before_signal": 0,
        "other_status": 0,
    }
    lock = threading.Lock()
    stop = threading.Event()
    signalled = threading.Event()

    def count(outcome: str) -> None:
        with lock:
            outcomes[outcome] += 1

    def client() -> None:
        headers = {"Authorization": f"Bearer {token}", "Connection": "close"}
        with httpx.Client(base_url=base_url, headers=headers, timeout=30) as http:
            while not stop.is_set():
                content = _topup_body(user, f"drain-{uuid.uuid4().hex}")
                try:
                    response = http.post(
                        "/api/v1/transactions/topup",
                        content=content,
                        headers={"Content-Type": "application/json"},
                    )
                except httpx.TransportError:
                    if not signalled.is_set():
                        count("unanswered_before_signal")
                        continue
                    count("unanswered_after_signal")
                    if stop.is_set():
                        return
                    time.sleep(0.05)
                    continue
                count("answered_201" if response.status_code == 201 else "other_status")

    held: list[int] = []
    held_thread = threading.Thread(
        target=lambda: held.append(_held_request(base_url, token, user, signalled))
    )
    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    held_thread.start()
    for thread in threads:
        thread.start()
    time.sleep(LOAD_BEFORE_SIGNAL_S)
    signalled_at = time.monotonic()
    signalled.set()  # before the signal: a request failing as it lands counts as after it
    subprocess.run(["podman", "kill", "--signal", "TERM", container], check=True, capture_output=True)
    waited = subprocess.run(["podman", "wait", container], capture_output=True, text=True, timeout=60)
    shutdown_s = time.monotonic() - signalled_at
    stop.set()
    for thread in [held_thread, *threads]:
        thread.join(60)
    exit_code = int(waited.stdout.strip() or "-1")
    held_status = held[0] if held else 0
    print(
        json.dumps(
            {
                **outcomes,
                "held_request_status": held_status,
                "exit_code": exit_code,
                "shutdown_s": round(shutdown_s, 2),
            }
        )
    )
    clean = (
        held_status == 201
        and outcomes["unanswered_before_signal"] == 0
        and outcomes["other_status"] == 0
        and outcomes["answered_201"] > 0
        and exit_code in (0, 143)
    )
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
