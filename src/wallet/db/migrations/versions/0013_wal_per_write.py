"""Fewer WAL bytes per posting, continued: entries and lot movements without what their
transaction holds (entries: asset and time; lot movements and posted writes' idempotency records:
time); lot movements without the surrogate key; transactions without the (user, asset, time)
index, idempotency records without the age index.

Revision ID: 0013
Revises: 0012
"""

from alembic import op

from wallet.db.migrations.script_runner import run_sql_script

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_script("0013_wal_per_write.sql")


def downgrade() -> None:
    op.execute("CREATE INDEX idempotency_keys_by_age ON idempotency_keys USING brin (created_at)")
    op.execute(
        "CREATE INDEX transactions_user_asset_time ON transactions (user_id, asset_code, created_at, seq)"
    )
    # The values the rows written since left to their transaction are filled in from it (the
    # append-only triggers are bypassed for this one update), then the columns are required again.
    op.execute("ALTER TABLE lot_movements DROP CONSTRAINT lot_movements_ordered")
    op.execute("SET LOCAL session_replication_role = replica")
    op.execute(
        "UPDATE ledger_entries e SET asset_code = coalesce(e.asset_code, t.asset_code),"
        " created_at = coalesce(e.created_at, t.created_at)"
        " FROM transactions t WHERE t.id = e.transaction_id AND (e.asset_code IS NULL OR e.created_at IS NULL)"
    )
    op.execute(
        "UPDATE lot_movements m SET created_at = t.created_at"
        " FROM transactions t WHERE t.id = m.transaction_id AND m.created_at IS NULL"
    )
    # Movements numbered within their transaction get ids after every id given, in posting order.
    op.execute(
        "UPDATE lot_movements m SET id = n.id"
        " FROM (SELECT x.transaction_id, x.movement_no,"
        "              (SELECT coalesce(max(y.id), 0) FROM lot_movements y)"
        "              + row_number() OVER (ORDER BY t.seq, x.movement_no) AS id"
        "         FROM lot_movements x JOIN transactions t ON t.id = x.transaction_id"
        "        WHERE x.movement_no IS NOT NULL) n"
        " WHERE m.transaction_id = n.transaction_id AND m.movement_no = n.movement_no"
    )
    op.execute(
        "UPDATE idempotency_keys k SET created_at = t.created_at"
        " FROM transactions t WHERE t.id = k.transaction_id AND k.created_at IS NULL"
    )
    op.execute("SET LOCAL session_replication_role = origin")
    op.execute("ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_dated")
    op.execute("ALTER TABLE idempotency_keys ALTER COLUMN created_at SET NOT NULL")
    op.execute("ALTER TABLE ledger_entries ALTER COLUMN asset_code SET NOT NULL")
    op.execute("ALTER TABLE ledger_entries ALTER COLUMN created_at SET DEFAULT clock_timestamp()")
    op.execute("ALTER TABLE ledger_entries ALTER COLUMN created_at SET NOT NULL")
    op.execute("ALTER TABLE lot_movements DROP COLUMN movement_no")
    op.execute("ALTER TABLE lot_movements ALTER COLUMN id SET NOT NULL")
    op.execute("ALTER TABLE lot_movements ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY")
    op.execute(
        "SELECT setval(pg_get_serial_sequence('lot_movements', 'id'),"
        " (SELECT coalesce(max(id), 0) + 1 FROM lot_movements), false)"
    )
    op.execute("ALTER TABLE lot_movements DROP CONSTRAINT lot_movements_dated")
    op.execute("ALTER TABLE lot_movements ALTER COLUMN created_at SET DEFAULT clock_timestamp()")
    op.execute("ALTER TABLE lot_movements ALTER COLUMN created_at SET NOT NULL")
    op.execute("ALTER TABLE lot_movements ADD CONSTRAINT lot_movements_pkey PRIMARY KEY (id)")
