"""How the API writes an instant: UTC, microseconds, `Z`, exactly as the database's documents
write theirs (`to_char(... 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')`), so times read the same whichever
side rendered them."""

from __future__ import annotations

from datetime import UTC, datetime


def api_time(instant: datetime) -> str:
    assert instant.tzinfo is not None, instant
    return instant.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
