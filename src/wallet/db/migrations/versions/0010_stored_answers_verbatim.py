"""Replays of answers stored before the documented key order keep their bytes (see the SQL).

Revision ID: 0010
Revises: 0009
"""

from alembic import op

from wallet.db.migrations.script_runner import run_sql_script

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_script("0010_stored_answers_verbatim.sql")


def downgrade() -> None:
    # The stored texts back into documents (a revision before this one replays them as jsonb).
    op.execute(
        "UPDATE idempotency_keys SET response_body = (response_body #>> '{}')::jsonb"
        " WHERE jsonb_typeof(response_body) = 'string'"
    )
