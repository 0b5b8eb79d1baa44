"""The database reads the rules from functions generated out of `wallet.domain.rules`: they must
answer exactly as Python does, and the constraints must state them (with the functions, or on the
hot tables with the same values as literals)."""

from __future__ import annotations

import asyncpg
import pytest

from wallet.api.observe import REQUEST_ID_PATTERN
from wallet.db.migrate import upgrade_to_head_async
from wallet.db.rules import CONSTRAINT_COMMENT_PREFIX, rule_constraints
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


async def test_hot_tables_check_the_rules_values_as_literals(pool):
    """The constraints of the tables every posting writes hold the rules' values, not calls of the
    rule functions (PostgreSQL folds a CHECK's function calls again for every statement)."""
    for table, name, expression in rule_constraints():
        row = await pool.fetchrow(
            "SELECT pg_get_constraintdef(c.oid) AS definition, c.convalidated,"
            " obj_description(c.oid, 'pg_constraint') AS comment"
            " FROM pg_constraint c WHERE c.conrelid = $1::regclass AND c.conname = $2",
            table,
            name,
        )
        assert row is not None, name
        assert row["convalidated"], name
        assert "wallet_rule_" not in row["definition"], name
        assert row["comment"] == CONSTRAINT_COMMENT_PREFIX + expression


async def test_literal_constraints_say_what_the_rule_functions_say(pool):
    """Each type-dependent literal agrees with the rule function for every type and an unknown one,
    and each limit sits exactly at the rule's value."""
    by_name = {name: expression for _, name, expression in rule_constraints()}
    for type_ in [*(t.value for t in rules.TYPE_RULES), "no_such_type"]:
        row = await pool.fetchrow(
            f"""SELECT ({by_name["transactions_type_known"]}) AS known,
                       (type = ANY (wallet_rule_transaction_types())) AS known_by_rule,
                       ({by_name["transactions_balance_after_covered"]}) AS covered,
                       (balance_after_minor >= 0 OR allow_negative OR wallet_rule_user_sign(type) > 0) AS covered_by_rule,
                       ({by_name["transactions_credit_expiry_only_lot_credits"]}) AS expiry,
                       (credit_expires_at IS NULL OR wallet_rule_lot_origin(type) IS NOT NULL) AS expiry_by_rule
                  FROM (SELECT $1::text AS type, -1::bigint AS balance_after_minor, false AS allow_negative,
                               now() AS credit_expires_at) AS t""",
            type_,
        )
        assert row["known"] is row["known_by_rule"], type_
        if not row["known"]:
            continue  # refused by transactions_type_known (the functions answer NULL, which a CHECK lets by)
        assert row["covered"] is row["covered_by_rule"], type_
        assert row["expiry"] is row["expiry_by_rule"], type_
    for amount, allowed in (
        (1, True),
        (0, False),
        (rules.AMOUNT_MINOR_CEILING, True),
        (rules.AMOUNT_MINOR_CEILING + 1, False),
    ):
        check = by_name["transactions_amount_in_range"]
        assert (
            await pool.fetchval(f"SELECT {check} FROM (SELECT $1::bigint AS amount_minor) AS t", amount)
            is allowed
        )
    for outcome in [*errors.CATALOGUE, "made_up_outcome"]:
        check = by_name["idempotency_keys_outcome_known"]
        assert await pool.fetchval(f"SELECT {check} FROM (SELECT $1::text AS outcome) AS t", outcome) is (
            outcome in errors.CATALOGUE
        )
    key = by_name["idempotency_keys_key_length"]
    for length, allowed in (
        (1, True),
        (0, False),
        (rules.IDEMPOTENCY_KEY_MAX_CHARS, True),
        (rules.IDEMPOTENCY_KEY_MAX_CHARS + 1, False),
    ):
        assert (
            await pool.fetchval(f"SELECT {key} FROM (SELECT repeat('k', $1) AS key) AS t", length) is allowed
        )


async def test_the_request_id_constraint_says_what_the_service_accepts(pool):
    """The database's rule for a request id (a class and a length) and the service's pattern for
    X-Request-ID (a bounded repetition) accept the same ids."""
    check = {name: expression for _, name, expression in rule_constraints()}["transactions_request_id_check"]
    for request_id in (
        "a",
        "0123456789abcdef0123456789abcdef",
        "A-Za-z0-9._:@/+=-",
        "x" * rules.REQUEST_ID_MAX_CHARS,
        "x" * (rules.REQUEST_ID_MAX_CHARS + 1),
        "",
        "with space",
        "tab\t",
        "é",
        "semi;colon",
        "quote'",
        "[brackets]",
        "back\\slash",
    ):
        accepted = await pool.fetchval(
            f"SELECT {check} FROM (SELECT $1::text AS request_id) AS t", request_id
        )
        assert accepted is (REQUEST_ID_PATTERN.fullmatch(request_id.encode()) is not None), request_id


async def test_migrate_replaces_a_constraint_whose_rule_changed(create_migrated_database):
    """A constraint that no longer states the rule (as after a release changed a limit) is
    replaced by the next upgrade; one already right is left alone."""
    url = await create_migrated_database()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "ALTER TABLE transactions DROP CONSTRAINT transactions_amount_in_range,"
            " ADD CONSTRAINT transactions_amount_in_range CHECK (amount_minor > 0 AND amount_minor <= 10);"
            " COMMENT ON CONSTRAINT transactions_amount_in_range ON transactions IS 'wallet rule: stale'"
        )
        untouched = await conn.fetchval(
            "SELECT oid FROM pg_constraint WHERE conname = 'transactions_type_known'"
        )
        await upgrade_to_head_async(url)
        definition = await conn.fetchval(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'transactions_amount_in_range'"
        )
        assert str(rules.AMOUNT_MINOR_CEILING) in definition
        assert (
            await conn.fetchval("SELECT oid FROM pg_constraint WHERE conname = 'transactions_type_known'")
            == untouched
        )
    finally:
        await conn.close()
