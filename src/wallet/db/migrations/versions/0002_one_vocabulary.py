"""One vocabulary: stored outcomes are catalogue codes, constraints read the generated rules.

Revision ID: 0002
Revises: 0001
"""

from wallet.db.migrations.script_runner import run_sql_script

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_script("0002_one_vocabulary.sql")


def downgrade() -> None:
    raise NotImplementedError("0002 is not reversible: restore from a backup instead")
