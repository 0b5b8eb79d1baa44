"""One posting core: the wallet_posting type, idempotency records that keep a transaction's id.

Revision ID: 0011
Revises: 0010
"""

from wallet.db.migrations.script_runner import run_sql_script

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_script("0011_posting_core.sql")


def downgrade() -> None:
    raise NotImplementedError("0011 is not reversible: restore from a backup instead")
