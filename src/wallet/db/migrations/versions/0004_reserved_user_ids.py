"""User ids that are only dots or a system account's code are refused.

Revision ID: 0004
Revises: 0003
"""

from wallet.db.migrations.script_runner import run_sql_script

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_script("0004_reserved_user_ids.sql")


def downgrade() -> None:
    raise NotImplementedError("0004 is not reversible: restore from a backup instead")
