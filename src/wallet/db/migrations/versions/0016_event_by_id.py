"""A transaction's event references its transaction by id (events.transaction_id), written by the
posting core in its own statement; the trigger that wrote it (transactions_events) goes, and the
check of new transactions requires each one's event.

Revision ID: 0016
Revises: 0014
"""

from alembic import op

from wallet.db.migrations.script_runner import run_sql_script
from wallet.db.sql_files import read_sql

revision = "0016"
# 0015 is being written beside this one: merged after it, this revises "0015" (here and above).
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_script("0016_event_by_id.sql")


def downgrade() -> None:
    # Back to 0014's schema: the events written since get the payload 0014's trigger wrote,
    # {"id": "<uuid>"} (served as the same document), the append-only trigger bypassed for this
    # one update; then the column goes and the trigger and 0003's check come back.
    op.execute("ALTER TABLE events DROP CONSTRAINT events_payload_or_transaction_id")
    op.execute("SET LOCAL session_replication_role = replica")
    op.execute(
        "UPDATE events SET payload = jsonb_build_object('id', transaction_id), transaction_id = NULL"
        " WHERE transaction_id IS NOT NULL"
    )
    op.execute("SET LOCAL session_replication_role = origin")
    op.execute("ALTER TABLE events DROP COLUMN transaction_id")
    op.execute("ALTER TABLE events ALTER COLUMN payload SET NOT NULL")
    op.execute(
        """
CREATE FUNCTION wallet_events_from_transactions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events (type, payload)
    SELECT 'transaction.posted', jsonb_build_object('id', n.id) FROM new_transactions n ORDER BY n.seq;
    RETURN NULL;
END $$"""
    )
    op.execute(
        "CREATE TRIGGER transactions_events AFTER INSERT ON transactions"
        " REFERENCING NEW TABLE AS new_transactions"
        " FOR EACH STATEMENT EXECUTE FUNCTION wallet_events_from_transactions()"
    )
    op.execute(_check_of_0003())


def _check_of_0003() -> str:
    """0003's wallet_transactions_check, as 0003_ledger_operations.sql defines it."""
    sql = read_sql("0003_ledger_operations.sql")
    start = sql.index("CREATE OR REPLACE FUNCTION wallet_transactions_check()")
    end = sql.index("END $$;", start) + len("END $$")
    return sql[start:end]
