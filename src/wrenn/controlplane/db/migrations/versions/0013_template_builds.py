"""Templates built from steps: builds with their logs, uploaded files, tags

Revision ID: 0013
Revises: 0012
Create Date: 2027-01-20 10:00:00.000000

- `templates.build_id`: a built template's current build (its default tag).
- `template_builds`: one build (spec, status, what it made, its claim by a control plane, its registry
  credentials sealed).
- `template_build_logs`: each build's log lines, in order.
- `template_files`: archives a team uploaded for COPY steps, by the client's hash of their files.
- `template_tags`: tags naming builds of a template.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("templates", schema=None) as batch_op:
        batch_op.add_column(sa.Column("build_id", sa.String(length=40), nullable=True))
    op.create_table(
        "template_builds",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("template_id", sa.String(length=40), nullable=False),
        sa.Column("team_id", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("vcpus", sa.Integer(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("disk_size_mb", sa.Integer(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("reason_step", sa.String(length=16), nullable=False),
        sa.Column("host_id", sa.String(length=40), nullable=True),
        sa.Column("worker", sa.String(length=64), nullable=False),
        sa.Column("lease_until", _TS, nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("registry_auth", sa.String(length=2048), nullable=True),
        sa.Column("log_count", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(length=40), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("queued_at", _TS, nullable=True),
        sa.Column("started_at", _TS, nullable=True),
        sa.Column("finished_at", _TS, nullable=True),
        sa.ForeignKeyConstraint(["host_id"], ["hosts.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["template_id"], ["templates.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    for column in ("template_id", "team_id", "status", "queued_at"):
        op.create_index(f"ix_template_builds_{column}", "template_builds", [column], unique=False)
    op.create_table(
        "template_build_logs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("build_id", sa.String(length=40), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("level", sa.String(length=8), nullable=False),
        sa.Column("step", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["build_id"], ["template_builds.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("build_id", "seq"),
    )
    op.create_index("ix_template_build_logs_build_id", "template_build_logs", ["build_id"], unique=False)
    op.create_table(
        "template_files",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("team_id", sa.String(length=40), nullable=False),
        sa.Column("files_hash", sa.String(length=64), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("team_id", "files_hash"),
    )
    op.create_index("ix_template_files_team_id", "template_files", ["team_id"], unique=False)
    op.create_table(
        "template_tags",
        sa.Column("template_id", sa.String(length=40), nullable=False),
        sa.Column("tag", sa.String(length=128), nullable=False),
        sa.Column("build_id", sa.String(length=40), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(["build_id"], ["template_builds.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["template_id"], ["templates.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("template_id", "tag"),
    )


def downgrade() -> None:
    op.drop_table("template_tags")
    op.drop_index("ix_template_files_team_id", table_name="template_files")
    op.drop_table("template_files")
    op.drop_index("ix_template_build_logs_build_id", table_name="template_build_logs")
    op.drop_table("template_build_logs")
    for column in ("template_id", "team_id", "status", "queued_at"):
        op.drop_index(f"ix_template_builds_{column}", table_name="template_builds")
    op.drop_table("template_builds")
    with op.batch_alter_table("templates", schema=None) as batch_op:
        batch_op.drop_column("build_id")
