"""Ledger operations: reversals, holds, transfers, balances as of a time.

Revision ID: 0003
Revises: 0002
"""

from wallet.db.migrations.script_runner import run_sql_script

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_script("0003_ledger_operations.sql")


def downgrade() -> None:
    raise NotImplementedError("0003 is not reversible: restore from a backup instead")
