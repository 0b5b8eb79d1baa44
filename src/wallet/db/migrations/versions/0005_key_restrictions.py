"""API keys: restrictions, rotation (client_key_id, expires_at), last use, rate-limit overrides.

Revision ID: 0005
Revises: 0004
"""

from wallet.db.migrations.script_runner import run_sql_script

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_script("0005_key_restrictions.sql")


def downgrade() -> None:
    raise NotImplementedError("0005 is not reversible: restore from a backup instead")
