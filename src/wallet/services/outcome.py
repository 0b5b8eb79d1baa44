"""What a posting function answers: an outcome from the error catalogue, the stored response
document (verbatim JSON), and whether it was a replay of an earlier request with the same key.
Every write path returns one (single writes through group commit, batches, holds, transfers,
reversals), and the HTTP layer turns it into a response in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from wallet.domain import errors


@dataclass(frozen=True, slots=True)
class PostingOutcome:
    code: errors.Code  # from the catalogue: `posted`, or why not
    body_json: str  # the stored response document, verbatim
    replayed: bool

    @classmethod
    def of_row(cls, row: asyncpg.Record) -> PostingOutcome:
        """From a posting function's row (outcome, body, replayed). Its outcome must be in the
        catalogue (anything else is a bug)."""
        return cls(errors.CATALOGUE[row["outcome"]], row["body"], row["replayed"])

    @classmethod
    async def call(cls, pool: asyncpg.Pool, function_call: str, *args: Any) -> PostingOutcome:
        """Runs one posting function, e.g. `wallet_void_hold($1, $2, $3)`: one round trip, one
        database transaction."""
        row = await pool.fetchrow(f"SELECT outcome, body::text AS body, replayed FROM {function_call}", *args)
        assert row is not None
        return cls.of_row(row)
