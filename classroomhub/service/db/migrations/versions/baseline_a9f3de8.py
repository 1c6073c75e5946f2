"""Baseline: the schema of classroomhub as released at a9f3de8 (before migrations).

A database made by that release (tables from ``create_all``, no
``alembic_version``) is stamped with this revision, then upgraded.

Revision ID: baseline_a9f3de8
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "baseline_a9f3de8"
down_revision = None
branch_labels = None
depends_on = None

# UTCDateTime is DateTime(timezone=True) in the database: what the DDL needs
UTC = sa.DateTime(timezone=True)


def _name(column):
    return sa.Column(column, sa.String(255), nullable=False)


def upgrade():
    op.create_table(
        "assignments",
        _name("course"),
        _name("material"),
        sa.Column("due", UTC, nullable=False),
        sa.Column("late_seconds", sa.Integer(), nullable=False),
        _name("set_by"),
        sa.Column("updated", UTC, nullable=False),
        sa.PrimaryKeyConstraint("course", "material"),
    )
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", UTC, nullable=False),
        _name("actor"),
        sa.Column("action", sa.String(32), nullable=False),
        _name("course"),
        _name("material"),
        _name("student"),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_audit_course", "audit", ["course"])
    op.create_table(
        "delivered",
        _name("course"),
        _name("material"),
        _name("student"),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("course", "material", "student"),
    )
    op.create_table(
        "extensions",
        _name("course"),
        _name("material"),
        _name("student"),
        sa.Column("due", UTC, nullable=False),
        _name("set_by"),
        sa.PrimaryKeyConstraint("course", "material", "student"),
    )
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), nullable=False),
        _name("course"),
        _name("material"),
        _name("student"),
        _name("grader"),
        sa.Column("at", UTC, nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.Column("results", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_feedback_course", "feedback", ["course"])
    op.create_table(
        "graded_choices",
        _name("course"),
        _name("material"),
        _name("student"),
        sa.Column("submission_id", sa.Integer(), nullable=False),
        _name("by"),
        sa.Column("at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("course", "material", "student"),
    )
    op.create_table(
        "releases",
        sa.Column("id", sa.Integer(), nullable=False),
        _name("course"),
        _name("material"),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created", UTC, nullable=False),
        _name("created_by"),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.Column("skipped", sa.JSON(), nullable=False),
        sa.Column("restore_deleted", sa.Boolean(), nullable=False),
        sa.Column("shared", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("course", "material", "version"),
    )
    op.create_index("ix_releases_course", "releases", ["course"])
    op.create_table(
        "submissions",
        sa.Column("id", sa.Integer(), nullable=False),
        _name("course"),
        _name("material"),
        _name("student"),
        sa.Column("taken", UTC, nullable=False),
        sa.Column("deadline", UTC, nullable=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("late", sa.Boolean(), nullable=False),
        sa.Column("caught_up", sa.Boolean(), nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.Column("skipped", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("course", "material", "student", "deadline"),
    )
    op.create_index("ix_submissions_course", "submissions", ["course"])
    op.create_table(
        "delivery_reports",
        sa.Column("release_id", sa.Integer(), nullable=False),
        _name("student"),
        sa.Column("at", UTC, nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("results", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["release_id"], ["releases.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("release_id", "student"),
    )


def downgrade():
    for table in (
        "delivery_reports",
        "submissions",
        "releases",
        "graded_choices",
        "feedback",
        "extensions",
        "delivered",
        "audit",
        "assignments",
    ):
        op.drop_table(table)
