"""Request ids, access logs and OpenTelemetry: a request can be followed from the caller through
the logs to the transaction it created."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import httpx
import pytest
from tools.service_process import ServiceProcess, free_port

from tests.support import bearer, new_key


async def _request_id_of(pool: Any, transaction_id: str) -> str | None:
    value = await pool.fetchval("SELECT request_id FROM transactions WHERE id = $1::uuid", transaction_id)
    assert value is None or isinstance(value, str)
    return value


async def test_the_callers_request_id_is_returned_and_stored_with_what_it_created(
    client, admin, pool, make_user
):
    alice, bob = await make_user(GOLD_COINS=100), await make_user()
    writes = [
        ("/api/v1/transactions/topup", {"user_id": alice, "asset_type": "GOLD_COINS", "amount": 5}),
        ("/api/v1/transactions/spend?slow=1", {"user_id": alice, "asset_type": "GOLD_COINS", "amount": 1}),
        (
            "/api/v1/transactions/batch",
            {"operations": [{"type": "bonus", "user_id": bob, "asset_type": "GOLD_COINS", "amount": 2}]},
        ),
        (
            "/api/v1/transactions/transfer",
            {"from_user_id": alice, "to_user_id": bob, "asset_type": "GOLD_COINS", "amount": 3},
        ),
    ]
    for index, (path, body) in enumerate(writes):
        request_id = f"req-{index}-{new_key()}"
        response = await admin.post(
            path, json=body, headers={"Idempotency-Key": new_key(), "X-Request-ID": request_id}
        )
        assert response.status_code == 201, response.text
        assert response.headers["X-Request-ID"] == request_id
        document = response.json()
        ids = [t["id"] for t in document["transactions"]] if "transactions" in document else [document["id"]]
        for transaction_id in ids:
            assert await _request_id_of(pool, transaction_id) == request_id
    # A reversal too.
    spent = await admin.post(
        "/api/v1/transactions/spend",
        json={"user_id": alice, "asset_type": "GOLD_COINS", "amount": 4},
        headers={"Idempotency-Key": new_key()},
    )
    reversal = await admin.post(
        f"/api/v1/transactions/{spent.json()['id']}/reverse",
        json={},
        headers={"Idempotency-Key": new_key(), "X-Request-ID": "refund-ticket-42"},
    )
    assert reversal.status_code == 201
    assert await _request_id_of(pool, reversal.json()["id"]) == "refund-ticket-42"
    # Concurrent single writes go through group commit: each keeps its own id.
    ids = [f"grouped-{i}-{new_key()}" for i in range(20)]
    responses = await asyncio.gather(
        *(
            client.post(
                "/api/v1/transactions/topup",
                json={"user_id": bob, "asset_type": "GOLD_COINS", "amount": 1},
                headers={"Idempotency-Key": new_key(), "X-Request-ID": rid},
            )
            for rid in ids
        )
    )
    for rid, response in zip(ids, responses, strict=True):
        assert await _request_id_of(pool, response.json()["id"]) == rid


async def test_a_request_id_is_generated_when_absent_or_unusable(client):
    for sent in (None, "has spaces", "x" * 129, "a\tb", "é".encode("latin-1")):
        headers: dict[str, Any] = {"X-Request-ID": sent} if sent is not None else {}
        response = await client.get("/api/v1/asset-types", headers=headers)
        assert response.status_code == 200
        returned = response.headers["X-Request-ID"]
        assert returned != sent
        assert len(returned) == 32 and int(returned, 16) >= 0
    # Errors carry it too, whichever layer answers.
    for response in (
        await client.get("/api/v1/nowhere"),
        await client.post("/api/v1/transactions/topup", content=b"x" * 20_000),
        await httpx.AsyncClient(transport=client._transport, base_url="http://t").get("/api/v1/asset-types"),
    ):
        assert response.status_code in (401, 404, 413)
        assert len(response.headers["X-Request-ID"]) == 32


def test_access_log_lines_are_structured_and_carry_no_secrets(database_url, keys, tmp_path):
    log = tmp_path / "service.log"
    service = ServiceProcess(
        {"WALLET_DATABASE_URL": database_url, "WALLET_LOG_JSON": "1", "WALLET_LOG_LEVEL": "INFO"},
        log_path=log,
    )
    service.start()
    try:
        secret_body = (
            '{"user_id": "nobody", "asset_type": "GOLD_COINS", "amount": 7, "description": "SECRET-BODY"}'
        )
        with httpx.Client(base_url=service.base_url, headers=bearer(keys["admin"])) as http:
            http.post(
                "/api/v1/transactions/topup",
                content=secret_body,
                headers={
                    "Idempotency-Key": new_key(),
                    "X-Request-ID": "trace-me-1",
                    "Content-Type": "application/json",
                },
            )
            http.get("/api/v1/wallets/nobody/balance", headers={"X-Request-ID": "trace-me-2"})
    finally:
        service.stop()
    text = log.read_text()
    assert keys["admin"] not in text
    assert "SECRET-BODY" not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    access = {line["request_id"]: line for line in lines if line.get("event") == "request"}
    topup, balance = access["trace-me-1"], access["trace-me-2"]
    assert topup["method"] == "POST"
    assert topup["route"] == "/api/v1/transactions/topup"
    assert topup["status"] == 404
    assert topup["api_key"] == "test-admin"
    assert topup["duration_ms"] >= 0
    assert balance["route"] == "/api/v1/wallets/{user_id}/balance"
    assert balance["status"] == 404


class _Collector(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Collector.received.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


def test_traces_are_exported_over_otlp_when_the_standard_variables_are_set(database_url, keys, tmp_path):
    """The request's span, and under it a span for each query the request made (asyncpg's
    instrumentation): the statement recorded, its parameters not."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    port = free_port()
    server = HTTPServer(("127.0.0.1", port), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    service = ServiceProcess(
        {
            "WALLET_DATABASE_URL": database_url,
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_SERVICE_NAME": "wallet-test",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
        },
        log_path=tmp_path / "service.log",
    )
    service.start()
    missing = "00000000-0000-0000-0000-00000000beef"
    request_span = "GET /api/v1/transactions/{transaction_id}"
    spans: dict[bytes, Any] = {}
    try:
        with httpx.Client(base_url=service.base_url, headers=bearer(keys["read"])) as http:
            assert http.get("/api/v1/wallets/nobody/balance").status_code == 404
            assert http.get(f"/api/v1/transactions/{missing}").status_code == 404
            topup = {"user_id": "nobody", "asset_type": "GOLD_COINS", "amount": 1}
            posted = http.post(
                "/api/v1/transactions/topup",
                json=topup,
                headers={**bearer(keys["credit"]), "Idempotency-Key": new_key()},
            )
            assert posted.status_code == 404  # asked of the database all the same
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            time.sleep(0.2)
            for path, body in list(_Collector.received):
                if path == "/v1/traces":
                    request = ExportTraceServiceRequest.FromString(body)
                    for resource_spans in request.resource_spans:
                        for scope_spans in resource_spans.scope_spans:
                            spans |= {span.span_id: span for span in scope_spans.spans}
            names = {span.name for span in spans.values()}
            if (
                "GET /api/v1/wallets/{user_id}/balance" in names
                and _queries_under(spans, request_span)
                and _queries_under(spans, "POST /api/v1/transactions/topup")
            ):
                break
    finally:
        service.stop()
        server.shutdown()
    names = {span.name for span in spans.values()}
    log_tail = (tmp_path / "service.log").read_text()[-2000:]
    assert "GET /api/v1/wallets/{user_id}/balance" in names, (names, log_tail)
    queries = _queries_under(spans, request_span)
    assert queries, (sorted(names), log_tail)
    statements = [
        _attributes(q).get("db.statement", _attributes(q).get("db.query.text", "")) for q in queries
    ]
    assert any("wallet_transaction_json" in s for s in statements), statements
    # A single write goes through group commit's task: under its request all the same.
    grouped = _queries_under(spans, "POST /api/v1/transactions/topup")
    assert any("wallet_post_" in _attributes(q).get("db.statement", "") for q in grouped), grouped
    for query in queries:
        attributes = _attributes(query)
        assert attributes.get("db.system", attributes.get("db.system.name")) == "postgresql", attributes
        assert "db.statement.parameters" not in attributes
        assert missing not in str(attributes)


def _attributes(span: Any) -> dict[str, str]:
    return {a.key: a.value.string_value for a in span.attributes}


def _queries_under(spans: dict[bytes, Any], request_name: str) -> list[Any]:
    """The database spans whose chain of parents reaches the span named `request_name`."""
    found = []
    for span in spans.values():
        if "postgresql" not in str(_attributes(span).values()):
            continue
        parent = spans.get(span.parent_span_id)
        while parent is not None and parent.name != request_name:
            parent = spans.get(parent.parent_span_id)
        if parent is not None:
            found.append(span)
    return found


@pytest.fixture(autouse=True)
def _clear_collector() -> None:
    _Collector.received.clear()
