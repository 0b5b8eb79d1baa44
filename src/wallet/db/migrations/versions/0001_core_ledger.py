"""Core ledger: assets, users, accounts, transactions, append-only entries, idempotency, API keys.

Revision ID: 0001
Revises:
"""

from wallet.db.migrations.script_runner import run_sql_script

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_script("0001_core_ledger.sql")


def downgrade() -> None:
    run_sql_script("0001_core_ledger_down.sql")
