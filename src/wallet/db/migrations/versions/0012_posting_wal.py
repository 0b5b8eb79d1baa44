"""Fewer WAL bytes per posting: guards after the update, room for HOT updates, two indexes fewer or narrower.

Revision ID: 0012
Revises: 0011
"""

from alembic import op

from wallet.db.migrations.script_runner import run_sql_script

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_script("0012_posting_wal.sql")


def downgrade() -> None:
    for table, trigger, when, function in (
        (
            "accounts",
            "accounts_available_not_negative",
            "NEW.held_minor > NEW.balance_minor"
            " AND NEW.balance_minor - NEW.held_minor < OLD.balance_minor - OLD.held_minor",
            "wallet_accounts_guard_available",
        ),
        (
            "credit_lots",
            "credit_lots_identity_fixed",
            "NEW.id <> OLD.id OR NEW.account_id <> OLD.account_id OR NEW.origin <> OLD.origin"
            " OR NEW.expires_at IS DISTINCT FROM OLD.expires_at OR NEW.created_at <> OLD.created_at",
            "wallet_reject_change",
        ),
    ):
        op.execute(f"DROP TRIGGER {trigger} ON {table}")
        op.execute(
            f"CREATE TRIGGER {trigger} BEFORE UPDATE ON {table} FOR EACH ROW WHEN ({when})"
            f" EXECUTE FUNCTION {function}()"
        )
    op.execute("ALTER TABLE accounts RESET (fillfactor)")
    op.execute("ALTER TABLE credit_lots RESET (fillfactor)")
    op.execute("CREATE INDEX transactions_user_history ON transactions (user_id, seq DESC)")
    op.execute("DROP INDEX idempotency_keys_by_age")
    op.execute("CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at)")
