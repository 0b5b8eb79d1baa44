"""The request id stored with each transaction; posting functions take it (old signatures dropped).

Revision ID: 0008
Revises: 0007
"""

from wallet.db.migrations.script_runner import run_sql_script

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_script("0008_request_ids.sql")


def downgrade() -> None:
    raise NotImplementedError("0008 is not reversible: restore from a backup instead")
