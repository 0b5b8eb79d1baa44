"""Credit lots (origin, expiry, spend order), breakage accounts, the live audit's runs.

Revision ID: 0009
Revises: 0008
"""

from alembic import op

from wallet.db.migrations.script_runner import run_sql_script

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_script("0009_credit_lots.sql")
    # The trigger's function and the helpers it calls, then the trigger: postings from here on
    # keep the lots, in the same database transaction as the opening lots above.
    run_sql_script("functions/60_lots.sql")
    op.execute(
        "CREATE TRIGGER ledger_entries_lots AFTER INSERT ON ledger_entries"
        " REFERENCING NEW TABLE AS new_entries"
        " FOR EACH STATEMENT EXECUTE FUNCTION wallet_ledger_entries_lots()"
    )


def downgrade() -> None:
    raise NotImplementedError("0009 is not reversible: restore from a backup instead")
