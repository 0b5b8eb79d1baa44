"""How every write answers: the document its posting function stored, verbatim, with the status of
its outcome (so a replay is byte for byte the original answer), counted by kind."""

from __future__ import annotations

from fastapi import Response

from wallet.api.error_response import status_of
from wallet.api.metrics import POSTINGS
from wallet.services.outcome import PostingOutcome


def respond(kind: str, outcome: PostingOutcome) -> Response:
    status = status_of(outcome.code)
    POSTINGS.labels(kind, status, outcome.replayed).inc()
    headers = {"Idempotent-Replayed": "true"} if outcome.replayed else None
    return Response(outcome.body_json, status, headers, media_type="application/json")
