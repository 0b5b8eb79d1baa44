"""A posted batch's idempotency record keeps its transactions' ids instead of its whole answer.

Revision ID: 0016
Revises: 0015
"""

from alembic import op

from wallet.db.migrations.script_runner import run_sql_script

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_script("0016_batch_replay_ids.sql")


def downgrade() -> None:
    # Each batch record gets its answer back as a body, rendered as its replay renders it.
    op.execute("ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_batch_ids")
    op.execute(
        "UPDATE idempotency_keys SET response_body = jsonb_build_object("
        "'transactions', wallet_transactions_document(transaction_ids, true))"
        " WHERE transaction_ids IS NOT NULL"
    )
    op.execute("ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_answer_kept")
    op.execute(
        "ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_answer_kept"
        " CHECK (response_body IS NOT NULL OR transaction_id IS NOT NULL)"
    )
    op.execute("ALTER TABLE idempotency_keys DROP COLUMN transaction_ids")
