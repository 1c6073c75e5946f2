"""When a release's delivery and a submission's copy finished; the files
that made a submission late (``changed``).

Revision ID: finished_changed
Revises: baseline_a9f3de8
"""

import sqlalchemy as sa
from alembic import op

revision = "finished_changed"
down_revision = "baseline_a9f3de8"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("releases") as batch:
        batch.add_column(sa.Column("finished", sa.DateTime(timezone=True), nullable=True))
    # releases made before were delivered when made: a start must not resume them
    op.execute("UPDATE releases SET finished = created")
    # rows made before: the column is NOT NULL (models: default=list), they get []
    with op.batch_alter_table("submissions") as batch:
        batch.add_column(sa.Column("finished", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("changed", sa.JSON(), nullable=False, server_default=sa.text("'[]'")))
    with op.batch_alter_table("submissions") as batch:
        batch.alter_column("changed", server_default=None)


def downgrade():
    with op.batch_alter_table("submissions") as batch:
        batch.drop_column("changed")
        batch.drop_column("finished")
    with op.batch_alter_table("releases") as batch:
        batch.drop_column("finished")
