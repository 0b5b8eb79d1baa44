"""A transaction's event references its transaction by id (events.transaction_id), written by the
posting core in the statement that inserts the transaction; the trigger that wrote it
(transactions_events) goes with the core's re-installation (db/sql/functions/40_posting.sql).

Revision ID: 0017
Revises: 0016
"""

from alembic import op

from wallet.db.migrations.script_runner import run_sql_script

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_script("0017_event_by_id.sql")


def downgrade() -> None:
    # Back to 0014's schema: the events written since get the payload 0014's trigger wrote,
    # {"id": "<uuid>"} (served as the same document), the append-only trigger bypassed for this
    # one update; then the column goes and the trigger comes back. (The posting core installed is
    # head's, which writes the column: whoever downgrades installs the functions of 0014's time.)
    op.execute("ALTER TABLE events DROP CONSTRAINT events_payload_or_transaction_id")
    op.execute("SET LOCAL session_replication_role = replica")
    op.execute(
        "UPDATE events SET payload = jsonb_build_object('id', transaction_id), transaction_id = NULL"
        " WHERE transaction_id IS NOT NULL"
    )
    op.execute("SET LOCAL session_replication_role = origin")
    op.execute("ALTER TABLE events DROP COLUMN transaction_id")
    op.execute("ALTER TABLE events ALTER COLUMN payload SET NOT NULL")
    # (After `wallet migrate` to head the trigger is gone, dropped with the core that replaced it;
    # after an upgrade to 0017 alone it is still there.)
    op.execute(
        """
CREATE OR REPLACE FUNCTION wallet_events_from_transactions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events (type, payload)
    SELECT 'transaction.posted', jsonb_build_object('id', n.id) FROM new_transactions n ORDER BY n.seq;
    RETURN NULL;
END $$"""
    )
    op.execute("DROP TRIGGER IF EXISTS transactions_events ON transactions")
    op.execute(
        "CREATE TRIGGER transactions_events AFTER INSERT ON transactions"
        " REFERENCING NEW TABLE AS new_transactions"
        " FOR EACH STATEMENT EXECUTE FUNCTION wallet_events_from_transactions()"
    )
