"""The database reads the rules from functions generated out of `wallet.domain.rules`: they must
answer exactly as Python does, and the constraints must use them."""

from __future__ import annotations

import asyncpg
import pytest

from wallet.domain import errors, rules


async def test_installed_rule_functions_match_the_python_definitions(pool):
    for type_, rule in rules.TYPE_RULES.items():
        row = await pool.fetchrow(
            "SELECT wallet_rule_user_sign($1) AS sign, wallet_rule_system_account($1) AS system,"
            " wallet_rule_scope($1) AS scope, wallet_rule_direct($1) AS direct,"
            " wallet_rule_reversed_by($1) AS reversed_by",
            type_.value,
        )
        assert dict(row) == {
            "sign": rule.user_sign,
            "system": rule.system_account.value if rule.system_account else None,
            "scope": rule.scope.value,
            "direct": rule.direct,
            "reversed_by": rule.reversed_by.value if rule.reversed_by else None,
        }
    assert await pool.fetchval("SELECT wallet_rule_user_sign('no_such_type')") is None
    assert await pool.fetchval("SELECT wallet_rule_transaction_types()") == [
        t.value for t in rules.TYPE_RULES
    ]
    assert await pool.fetchval("SELECT wallet_rule_scopes()") == [s.value for s in rules.Scope]
    assert await pool.fetchval("SELECT wallet_rule_system_codes()") == [s.value for s in rules.SystemAccount]
    assert await pool.fetchval("SELECT wallet_rule_outcomes()") == list(errors.CATALOGUE)
    assert await pool.fetchval("SELECT wallet_rule_amount_minor_ceiling()") == rules.AMOUNT_MINOR_CEILING
    assert (
        await pool.fetchval("SELECT wallet_rule_idempotency_key_max_chars()")
        == rules.IDEMPOTENCY_KEY_MAX_CHARS
    )


async def test_system_accounts_exist_for_every_rule(pool):
    codes = await pool.fetch("SELECT DISTINCT system_code FROM accounts WHERE kind = 'system'")
    assert {r["system_code"] for r in codes} == {s.value for s in rules.SystemAccount}


async def test_constraints_refuse_what_the_rules_refuse(pool):
    with pytest.raises(asyncpg.exceptions.CheckViolationError):
        await pool.execute(
            "INSERT INTO api_keys (name, key_prefix, key_sha256, scopes)"
            " VALUES ('x', 'x', sha256('rules-test'), '{superuser}')"
        )
    with pytest.raises(asyncpg.exceptions.CheckViolationError):
        await pool.execute(
            "INSERT INTO idempotency_keys (api_key_id, key, request_sha256, outcome, response_body)"
            " VALUES (1, 'rules-test', sha256('x'), 'made_up_outcome', '{}')"
        )
