"""Tamper evidence: a SHA-256 hash chain per user account over its ledger entries.

Revision ID: 0006
Revises: 0005
"""

from wallet.db.migrations.script_runner import run_sql_script

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_script("0006_hash_chain.sql")


def downgrade() -> None:
    raise NotImplementedError("0006 is not reversible: restore from a backup instead")
