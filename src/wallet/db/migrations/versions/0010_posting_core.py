"""One posting core: the wallet_posting type, idempotency records that keep a transaction's id.

Revision ID: 0010
Revises: 0009
"""

from wallet.db.migrations.script_runner import run_sql_script

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_script("0010_posting_core.sql")


def downgrade() -> None:
    raise NotImplementedError("0010 is not reversible: restore from a backup instead")
