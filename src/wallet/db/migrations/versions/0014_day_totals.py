"""Per-day totals for the reports (lot movements, volume), kept by a background task.

Revision ID: 0014
Revises: 0013
"""

from alembic import op

from wallet.db.migrations.script_runner import run_sql_script

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_script("0014_day_totals.sql")


def downgrade() -> None:
    op.execute("DROP TABLE volume_totals")
    op.execute("DROP TABLE lot_flow_totals")
    op.execute("DROP TABLE rollup_days")
    op.execute("DROP TABLE rollup_checkpoint")
