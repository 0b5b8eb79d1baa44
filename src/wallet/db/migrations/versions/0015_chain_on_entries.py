"""The hash chain's links on the ledger entries they vouch for: no ledger_chain row per entry.

Revision ID: 0015
Revises: 0014
"""

from wallet.db.migrations.script_runner import run_sql_script

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_script("0015_chain_on_entries.sql")
    # The entries' check that refuses an unchained user entry, and the head of an account's chain,
    # in the same database transaction as the trigger's removal: a service still running the
    # previous posting core while `wallet migrate` goes on (it re-installs the core right after)
    # has its postings refused for that moment, never written unchained.
    run_sql_script("functions/15_ledger_checks.sql")
    run_sql_script("functions/16_hash_chain.sql")


def downgrade() -> None:
    raise NotImplementedError("0015 is not reversible: restore from a backup instead")
