"""The framework's floor for `make bench`: a hello-world FastAPI route, served by the same uvicorn
with the same worker count as the service, so the balance read can be put beside it in one run."""

from __future__ import annotations

from fastapi import FastAPI

app = FastAPI()


@app.get("/hello")
async def hello() -> dict[str, str]:
    return {"hello": "world"}
