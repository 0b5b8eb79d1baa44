"""HEAD answers wherever GET does: the same status and headers, no body.

FastAPI routes declared with GET do not answer HEAD (405). The one request middleware
(`wallet.api.observe.ObserveRequests`) runs a HEAD request as a GET and sends, instead of the
body it produces, one empty body message, keeping the headers (Content-Length included, as HTTP
says a HEAD answer should). These are its two halves.
"""

from __future__ import annotations

from starlette.types import Message, Scope

EMPTY_BODY: Message = {"type": "http.response.body", "body": b"", "more_body": False}


def as_get(scope: Scope) -> Scope:
    """The scope of a HEAD request, as a GET (a copy: the server's scope is left as it was)."""
    return {**scope, "method": "GET"}


def without_body(message: Message) -> Message | None:
    """What a HEAD answer sends for `message` of the GET answer (None: nothing)."""
    if message["type"] != "http.response.body":
        return message
    if message.get("more_body", False):
        return None
    return EMPTY_BODY
