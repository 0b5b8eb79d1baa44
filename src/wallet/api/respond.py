"""How every write answers: the document its posting function stored, with the status of its
outcome, counted by kind. The document is put in the documented key order (wallet.api.documents)
from the same stored jsonb on the first answer and on every replay, so a replay is byte for byte
the original answer; a replay of a record stored before that order existed answers the bytes it
answered then (wallet.domain.documents.stored_answer, migration 0010)."""

from __future__ import annotations

from fastapi import Response

from wallet.api.documents import DocumentResponse
from wallet.api.error_response import status_of
from wallet.api.metrics import POSTINGS
from wallet.domain.documents import stored_answer
from wallet.services.outcome import PostingOutcome


def respond(kind: str, outcome: PostingOutcome) -> Response:
    status = status_of(outcome.code)
    POSTINGS.labels(kind, status, outcome.replayed).inc()
    if outcome.replayed:
        headers = {"Idempotent-Replayed": "true"}
        return Response(stored_answer(outcome.body_json), status, headers, media_type="application/json")
    return DocumentResponse(outcome.body_json, status)
