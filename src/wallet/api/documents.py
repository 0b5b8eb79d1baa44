"""The answer of every JSON route: its document in the one documented key order
(wallet.domain.documents)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse

from wallet.domain.documents import ordered, render


class DocumentResponse(JSONResponse):
    """A JSON answer in the documented key order: from a Python value, or from JSON text as
    PostgreSQL built it. The application's default response class, so models answered by
    FastAPI take this order too (a JSONResponse, so OpenAPI describes them as JSON)."""

    def render(self, content: Any) -> bytes:
        if isinstance(content, str | bytes):
            return render(content)
        return orjson.dumps(ordered(content))
