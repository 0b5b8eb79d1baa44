"""The error catalogue is the one vocabulary: every code the SQL can emit is defined in it, every
entry has exactly one HTTP status, and every error code is declared in the OpenAPI document."""

from __future__ import annotations

import re
from importlib.resources import files

from wallet.api.errors import STATUS_BY_CODE
from wallet.domain import errors

# Every way the SQL names an outcome: assigning it, or building an error body with it.
SQL_OUTCOME = re.compile(r"outcome\s*:=\s*'([a-z_]+)'|wallet_error_body\(\s*'([a-z_]+)'")


def _sql_sources() -> dict[str, str]:
    root = files("wallet.db").joinpath("sql")
    sources = {}
    for folder in (root, root.joinpath("functions")):
        for entry in folder.iterdir():
            if entry.name.endswith(".sql") and not entry.name.startswith("0001_"):
                sources[entry.name] = entry.read_text(encoding="utf-8")
    return sources


def test_every_code_the_sql_can_emit_is_in_the_catalogue():
    emitted: dict[str, str] = {}
    for name, text in _sql_sources().items():
        for match in SQL_OUTCOME.finditer(text):
            emitted[match.group(1) or match.group(2)] = name
    assert {"posted", "insufficient_funds", "user_not_found", "idempotency_key_in_use"} <= set(emitted)
    unknown = {code: name for code, name in emitted.items() if code not in errors.CATALOGUE}
    assert not unknown, f"codes emitted by SQL but missing from wallet.domain.errors: {unknown}"


def test_every_catalogue_entry_has_exactly_one_status():
    assert set(STATUS_BY_CODE) == set(errors.CATALOGUE.values())
    for code, status in STATUS_BY_CODE.items():
        assert (status < 400) == code.success, code


async def test_every_error_code_is_declared_in_the_openapi_spec(client):
    spec = (await client.get("/openapi.json")).json()
    declared: dict[str, set[str]] = {}
    for path in spec["paths"].values():
        for operation in path.values():
            for status, response in operation.get("responses", {}).items():
                for code in re.findall(r"`([a-z_]+)`", response.get("description", "")):
                    declared.setdefault(code, set()).add(status)
    for code, status in STATUS_BY_CODE.items():
        if code.success:
            continue
        assert str(status) in declared.get(code.code, set()), f"{code.code} ({status}) is not declared"
    enum = spec["components"]["schemas"]["ErrorDetail"]["properties"]["code"]["enum"]
    assert sorted(enum) == errors.error_codes()


async def test_an_error_response_carries_a_catalogue_code_and_its_status(client):
    response = await client.get("/api/v1/wallets/nobody_here/balance")
    assert response.status_code == 404
    body = response.json()["error"]
    assert body["code"] == errors.USER_NOT_FOUND.code
    assert STATUS_BY_CODE[errors.CATALOGUE[body["code"]]] == 404
