"""The id of the request being served, for what it writes (stored with each transaction).

A context variable, set per request by `wallet.api.observe.ObserveRequests`: the service functions
read it where they post, so no signature in between has to carry it. Outside a request (the CLI,
the seed) it is None and nothing is stored.
"""

from __future__ import annotations

from contextvars import ContextVar

REQUEST_ID: ContextVar[str | None] = ContextVar("wallet_request_id", default=None)


def current_request_id() -> str | None:
    return REQUEST_ID.get()
