"""A malformed body never means "everything", and types are strict: on every write route (taken
from the OpenAPI document, so a new route must join the table), a body that is sent must be a
JSON object that parses strictly and validates, or it gets a 400/422 naming the problem and
nothing is written. Only no body at all (or `{}`) lets capture and reverse mean "all"."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.support import ledger_counts, new_key

WRITE_METHODS = ("post", "put", "patch")


@dataclass
class Target:
    method: str
    url: str
    body: dict[str, Any]  # valid: sent once at the end, it must pass validation
    accepted: set[int]  # what that valid body gets
    cleanup: list[str] = field(default_factory=list)


async def snapshot(pool) -> tuple[Any, ...]:
    """Everything a write could change."""
    row = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM holds),"
        " (SELECT count(*) FROM holds WHERE status = 'open'),"
        " (SELECT count(*) FROM webhook_endpoints), (SELECT count(*) FROM webhook_endpoints WHERE active),"
        " (SELECT count(*) FROM webhook_dead_letters WHERE status = 'redeliver'),"
        " (SELECT coalesce(sum(balance_minor), 0) FROM accounts WHERE user_id IS NOT NULL)"
    )
    return (*await ledger_counts(pool), *row)


async def targets(admin, make_user) -> dict[tuple[str, str], Target]:
    """Every write route with concrete path parameters and a valid body."""
    user = await make_user(GOLD_COINS=1_000)
    other = await make_user()
    topup = await admin.post(
        "/api/v1/transactions/topup",
        headers={"Idempotency-Key": new_key()},
        json={"user_id": user, "asset_type": "GOLD_COINS", "amount": 100},
    )
    assert topup.status_code == 201, topup.text
    holds = []
    for _ in range(2):
        hold = await admin.post(
            "/api/v1/holds",
            headers={"Idempotency-Key": new_key()},
            json={"user_id": user, "asset_type": "GOLD_COINS", "amount": 50},
        )
        assert hold.status_code == 201, hold.text
        holds.append(hold.json()["id"])
    webhook = await admin.post("/api/v1/webhooks", json={"url": "http://127.0.0.1:9/strict-bodies"})
    assert webhook.status_code == 201, webhook.text
    webhook_url = f"/api/v1/webhooks/{webhook.json()['id']}"
    posting = {"user_id": user, "asset_type": "GOLD_COINS", "amount": 5}
    return {
        ("post", "/api/v1/transactions/topup"): Target(
            "post", "/api/v1/transactions/topup", {**posting, "metadata": {"k": 1}}, {201}
        ),
        ("post", "/api/v1/transactions/bonus"): Target(
            "post", "/api/v1/transactions/bonus", {**posting, "expires_in_seconds": 3600}, {201}
        ),
        ("post", "/api/v1/transactions/spend"): Target(
            "post", "/api/v1/transactions/spend", {**posting, "description": "d"}, {201}
        ),
        ("post", "/api/v1/transactions/batch"): Target(
            "post",
            "/api/v1/transactions/batch",
            {"operations": [{"type": "bonus", **posting, "expires_at": "2030-01-01T00:00:00Z"}]},
            {201},
        ),
        ("post", "/api/v1/transactions/transfer"): Target(
            "post",
            "/api/v1/transactions/transfer",
            {"from_user_id": user, "to_user_id": other, "asset_type": "GOLD_COINS", "amount": 5, "fee": 1},
            {201},
        ),
        ("post", "/api/v1/transactions/{transaction_id}/reverse"): Target(
            "post", f"/api/v1/transactions/{topup.json()['id']}/reverse", {"amount": 5, "reason": "r"}, {201}
        ),
        ("post", "/api/v1/holds"): Target(
            "post", "/api/v1/holds", {**posting, "expires_in_seconds": 600}, {201}
        ),
        ("post", "/api/v1/holds/{hold_id}/capture"): Target(
            "post", f"/api/v1/holds/{holds[0]}/capture", {"amount": 5}, {201}
        ),
        ("post", "/api/v1/holds/{hold_id}/void"): Target("post", f"/api/v1/holds/{holds[1]}/void", {}, {200}),
        ("post", "/api/v1/users"): Target(
            "post", "/api/v1/users", {"user_id": f"u_{uuid.uuid4().hex[:12]}", "name": "N"}, {201}
        ),
        ("post", "/api/v1/webhooks"): Target(
            "post",
            "/api/v1/webhooks",
            {"url": "http://127.0.0.1:9/strict", "event_types": ["transaction.posted"], "description": "d"},
            {201},
        ),
        ("patch", "/api/v1/webhooks/{webhook_id}"): Target(
            "patch", webhook_url, {"active": False}, {200}, cleanup=[webhook_url]
        ),
        (
            "post",
            "/api/v1/webhooks/{webhook_id}/dead-letters/{dead_letter_id}/redeliver",
        ): Target("post", f"{webhook_url}/dead-letters/1/redeliver", {}, {404}),
    }


async def send(admin, target: Target, content: bytes | None, content_type: str | None = "application/json"):
    headers = {"Idempotency-Key": new_key()}
    if content_type is not None:
        headers["Content-Type"] = content_type
    return await admin.request(target.method.upper(), target.url, content=content, headers=headers)


async def finish(admin, target: Target, created: list[str]) -> None:
    """The valid body passes (so the refusals above were about the body), then clean up."""
    response = await send(admin, target, json.dumps(target.body).encode())
    assert response.status_code in target.accepted, response.text
    if target.url == "/api/v1/webhooks":
        created.append(f"/api/v1/webhooks/{response.json()['id']}")
    for url in [*target.cleanup, *created]:
        assert (await admin.delete(url)).status_code == 204
    target.cleanup.clear()
    created.clear()


def write_routes(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method, path)
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if method in WRITE_METHODS and "requestBody" in operation
    }


async def test_every_write_route_in_the_openapi_document_is_covered(admin, make_user):
    spec = (await admin.get("/openapi.json")).json()
    found = await targets(admin, make_user)
    assert write_routes(spec) == set(found)
    for target in found.values():
        for url in target.cleanup:
            await admin.delete(url)


# ---- the strict-body table ----------------------------------------------------------------------


def _text(body: dict[str, Any]) -> str:
    return json.dumps(body)


# name, body bytes from the valid body, content type, status, code, field, words in the message
Case = tuple[str, Any, str | None, int, str, str | None, str]
CASES: list[Case] = [
    ("trailing comma", lambda b: (_text(b)[:-1] + (", " if b else "") + '"x": 1,}').encode(),
     "application/json", 400, "malformed_json", None, "not valid JSON"),
    ("trailing comma in an array", lambda b: b'{"a": [1, 2,]}', "application/json", 400, "malformed_json", None, "not valid JSON"),
    ("single quotes", lambda b: _text(b).replace('"', "'").encode() if b else b"{'a': 1}",
     "application/json", 400, "malformed_json", None, "not valid JSON"),
    ("unquoted key", lambda b: b"{amount: 5}", "application/json", 400, "malformed_json", None, "not valid JSON"),
    ("cut short", lambda b: _text(b)[:-1].encode(), "application/json", 400, "malformed_json", None, "not valid JSON"),
    ("two documents", lambda b: (_text(b) + " {}").encode(), "application/json", 400, "malformed_json", None, "Extra data"),
    ("a comment", lambda b: ("// all\n" + _text(b)).encode(), "application/json", 400, "malformed_json", None, "not valid JSON"),
    ("only whitespace", lambda b: b" \n ", "application/json", 400, "malformed_json", None, "not valid JSON"),
    ("leading zero", lambda b: b'{"amount": 05}', "application/json", 400, "malformed_json", None, "not valid JSON"),
    ("hex number", lambda b: b'{"amount": 0x10}', "application/json", 400, "malformed_json", None, "not valid JSON"),
    ("control character in a string", lambda b: b'{"reason": "a\x01b"}', "application/json", 400, "malformed_json", None, "not valid JSON"),
    ("duplicate key", lambda b: b'{"amount": 1, "amount": 1}', "application/json", 400, "malformed_json", None, "duplicate key 'amount'"),
    ("duplicate key after the valid body", lambda b: (_text(b)[:-1] + (", " if b else "") + '"k": 1, "k": 2}').encode(),
     "application/json", 400, "malformed_json", None, "duplicate key 'k'"),
    ("duplicate key nested", lambda b: b'{"metadata": {"a": 1, "a": 1}}', "application/json", 400, "malformed_json", None, "duplicate key"),
    ("NaN", lambda b: b'{"amount": NaN}', "application/json", 400, "malformed_json", None, "NaN"),
    ("Infinity", lambda b: b'{"amount": Infinity}', "application/json", 400, "malformed_json", None, "Infinity"),
    ("-Infinity", lambda b: b'{"amount": -Infinity}', "application/json", 400, "malformed_json", None, "Infinity"),
    ("number beyond a double", lambda b: b'{"amount": 1e400}', "application/json", 400, "malformed_json", None, "out of range"),
    ("NaN as the body", lambda b: b"NaN", "application/json", 400, "malformed_json", None, "NaN"),
    ("byte order mark", lambda b: b"\xef\xbb\xbf" + _text(b).encode(), "application/json", 400, "malformed_json", None, "byte order mark"),
    ("UTF-16", lambda b: _text(b).encode("utf-16"), "application/json", 400, "malformed_body", None, "not UTF-8"),
    ("UTF-16 without a byte order mark", lambda b: _text(b).encode("utf-16-le"), "application/json", 400, "malformed_body", None, "not UTF-8"),
    ("UTF-32", lambda b: _text(b).encode("utf-32"), "application/json", 400, "malformed_body", None, "not UTF-8"),
    ("Latin-1", lambda b: '{"reason": "caf\u00e9"}'.encode("latin-1"), "application/json", 400, "malformed_body", None, "not UTF-8"),
    ("null body", lambda b: b"null", "application/json", 422, "validation_error", None, "must be a JSON object, not null"),
    ("array body", lambda b: f"[{_text(b)}]".encode(), "application/json", 422, "validation_error", None, "must be a JSON object, not an array"),
    ("empty array body", lambda b: b"[]", "application/json", 422, "validation_error", None, "not an array"),
    ("string body", lambda b: json.dumps(_text(b)).encode(), "application/json", 422, "validation_error", None, "not a string"),
    ("number body", lambda b: b"5", "application/json", 422, "validation_error", None, "not the number 5"),
    ("boolean body", lambda b: b"true", "application/json", 422, "validation_error", None, "not the boolean true"),
    ("text/plain", lambda b: _text(b).encode(), "text/plain", 400, "malformed_body", None, "Content-Type: application/json"),
    ("form", lambda b: b"amount=5", "application/x-www-form-urlencoded", 400, "malformed_body", None, "Content-Type: application/json"),
    ("no content type", lambda b: _text(b).encode(), None, 400, "malformed_body", None, "without a Content-Type"),
    ("multipart", lambda b: b"--x\r\n\r\n{}\r\n--x--", "multipart/form-data; boundary=x", 400, "malformed_body", None, "Content-Type"),
    ("unknown member", lambda b: _text({**b, "amount_all": True}).encode(), "application/json", 422, "validation_error", "amount_all", "unknown field"),
]  # fmt: skip


@pytest.mark.parametrize(
    "route",
    [
        "/api/v1/transactions/topup",
        "/api/v1/transactions/bonus",
        "/api/v1/transactions/spend",
        "/api/v1/transactions/batch",
        "/api/v1/transactions/transfer",
        "/api/v1/transactions/{transaction_id}/reverse",
        "/api/v1/holds",
        "/api/v1/holds/{hold_id}/capture",
        "/api/v1/holds/{hold_id}/void",
        "/api/v1/users",
        "/api/v1/webhooks",
        "/api/v1/webhooks/{webhook_id}",
        "/api/v1/webhooks/{webhook_id}/dead-letters/{dead_letter_id}/redeliver",
    ],
)
async def test_a_malformed_or_misshapen_body_is_refused_and_writes_nothing(admin, make_user, pool, route):
    (target,) = [t for (m, p), t in (await targets(admin, make_user)).items() if p == route]
    before = await snapshot(pool)
    wrong = []
    for name, make, content_type, status, code, field_, words in CASES:
        response = await send(admin, target, make(target.body), content_type)
        error = response.json().get("error", {}) if response.status_code >= 400 else {}
        got = (response.status_code, error.get("code"), error.get("field"))
        if got != (status, code, field_) or words not in error.get("message", ""):
            wrong.append((name, response.status_code, response.text[:300]))
    assert not wrong, wrong
    # A member that the route does not have is refused, not ignored; a null amount is not "all".
    if "amount" in json.dumps(target.body) or route.endswith(("/capture", "/reverse")):
        body = copy.deepcopy(target.body)
        (body["operations"][0] if "operations" in body else body)["amount"] = None
        response = await send(admin, target, json.dumps(body).encode())
        assert response.status_code == 422, response.text
        assert response.json()["error"]["field"].endswith("amount"), response.text
    assert await snapshot(pool) == before
    await finish(admin, target, [])


async def test_only_no_body_or_an_empty_object_means_all(admin, make_user, pool):
    user = await make_user(GOLD_COINS=100)
    for body in (None, b"{}", b"{ }"):
        topup = await admin.post(
            "/api/v1/transactions/topup",
            headers={"Idempotency-Key": new_key()},
            json={"user_id": user, "asset_type": "GOLD_COINS", "amount": 10},
        )
        headers = {"Content-Type": "application/json"}
        reversal = await admin.post(
            f"/api/v1/transactions/{topup.json()['id']}/reverse",
            content=body,
            headers={**headers, "Idempotency-Key": new_key()},
        )
        assert reversal.status_code == 201 and reversal.json()["amount"] == 10, reversal.text
        hold = await admin.post(
            "/api/v1/holds",
            headers={"Idempotency-Key": new_key()},
            json={"user_id": user, "asset_type": "GOLD_COINS", "amount": 7},
        )
        capture = await admin.post(
            f"/api/v1/holds/{hold.json()['id']}/capture",
            content=body,
            headers={**headers, "Idempotency-Key": new_key()},
        )
        assert capture.status_code == 201 and capture.json()["amount"] == 7, capture.text


async def test_a_refusal_is_the_same_whatever_the_content_type_spelling(admin, make_user, pool):
    """One answer (same status, code, field and message) for each refused body, whatever the
    Content-Type spelling, and nothing written."""
    user = await make_user(GOLD_COINS=10)
    before = await snapshot(pool)
    for body in (
        '{"user_id": "%s", "asset_type": "GOLD_COINS", "amount": 1, "expires_in_seconds": true}',
        '{"user_id": "%s", "asset_type": "GOLD_COINS", "amount": 1, "expires_in_seconds": "60"}',
        '{"user_id": "%s", "asset_type": "GOLD_COINS", "amount": 1, "expires_at": 1900000000}',
        '{"user_id": "%s", "asset_type": "GOLD_COINS", "amount": true}',
        '{"user_id": "%s", "asset_type": "GOLD_COINS", "amount": 1,}',
    ):
        answers = set()
        for content_type in ("application/json", "application/json; charset=utf-8", "Application/JSON"):
            response = await admin.post(
                "/api/v1/transactions/bonus",
                content=body % user,
                headers={"Idempotency-Key": new_key(), "Content-Type": content_type},
            )
            answers.add((response.status_code, response.text))
        (only,) = answers
        assert only[0] in (400, 422), only
    assert await snapshot(pool) == before


# ---- the OpenAPI walk: the wrong JSON type for every request-body field -------------------------


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        schema = spec["components"]["schemas"][name]
    return schema


def _types(spec: dict[str, Any], schema: dict[str, Any]) -> tuple[set[str], dict[str, Any]]:
    """The JSON types a schema allows, and the schema of its non-null option."""
    schema = _resolve(spec, schema)
    options = [_resolve(spec, o) for o in schema.get("anyOf", [schema])]
    types: set[str] = set()
    main = schema
    for option in options:
        kind = option.get("type") or ("object" if "properties" in option else "string")
        types.add(kind)
        if kind != "null":
            main = option
    return types, main


# Values of every JSON type; each field gets those whose type its schema does not allow.
POOL: list[Any] = [True, False, 0, 1, 5.5, "5", "60", "true", "yes", "on", "x", [5], ["x"], {}, {"v": 5}]


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _wrong(types: set[str], main: dict[str, Any], name: str) -> list[Any]:
    wrong = [v for v in POOL if _kind(v) not in types]
    if "null" not in types:
        wrong.append(None)
    if "integer" in types:
        wrong.append(5.0)  # a JSON number, not a JSON integer
    if main.get("format") == "date-time":
        wrong += ["1900000000", "tomorrow"]  # strings, but not RFC 3339 times
    if "enum" in main:
        wrong.append("no-such-value")
    return _unique(wrong)


def walk(spec: dict[str, Any], schema: dict[str, Any], path: str) -> Iterator[tuple[str, list[Any]]]:
    """(field path, wrong values) for every property, into nested objects and array items."""
    for name, prop in _resolve(spec, schema).get("properties", {}).items():
        here = f"{path}.{name}" if path else name
        types, main = _types(spec, prop)
        yield here, _wrong(types, main, name)
        if main.get("type") == "array":
            item_types, item = _types(spec, main.get("items", {}))
            if "properties" in item:
                yield from walk(spec, item, f"{here}[0]")
            else:
                yield f"{here}[0]", _wrong(item_types, item, name)


def _unique(values: list[Any]) -> list[Any]:
    seen, out = set(), []
    for value in values:
        key = json.dumps(value)
        if key not in seen:
            seen.add(key)
            out.append(value)
    return out


def _set(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    body = copy.deepcopy(body)
    parts = path.replace("[0]", ".0").split(".")
    cursor: Any = body
    for part in parts[:-1]:
        if part == "0":
            if not cursor:
                cursor.append({})
            cursor = cursor[0]
        else:
            cursor = cursor.setdefault(part, {})
    last = parts[-1]
    if last == "0":
        if cursor:
            cursor[0] = value
        else:
            cursor.append(value)
    else:
        cursor[last] = value
    return body


async def test_every_request_body_field_refuses_every_wrong_json_type(admin, make_user, pool):
    spec = (await admin.get("/openapi.json")).json()
    found = await targets(admin, make_user)
    before = await snapshot(pool)
    wrong, sent, fields = [], 0, set()
    for (method, template), target in found.items():
        schema = spec["paths"][template][method]["requestBody"]["content"]["application/json"]["schema"]
        for path, values in walk(spec, schema, ""):
            fields.add(f"{template} {path}")
            for value in values:
                body = _set(target.body, path, value)
                response = await send(admin, target, json.dumps(body).encode())
                sent += 1
                error = response.json().get("error", {}) if response.status_code >= 400 else {}
                if (response.status_code, error.get("code"), error.get("field")) != (
                    422,
                    "validation_error",
                    path,
                ):
                    wrong.append((template, path, value, response.status_code, response.text[:200]))
    assert not wrong, wrong[:20]
    assert len(fields) >= 60 and sent >= 400, (len(fields), sent)
    assert await snapshot(pool) == before
    created: list[str] = []
    for target in found.values():
        await finish(admin, target, created)
