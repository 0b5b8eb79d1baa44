"""Change events (transactional outbox, written by triggers) and webhook endpoints.

Revision ID: 0007
Revises: 0006
"""

from wallet.db.migrations.script_runner import run_sql_script

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_script("0007_events.sql")


def downgrade() -> None:
    raise NotImplementedError("0007 is not reversible: restore from a backup instead")
