"""Capsules: auto-resume and the last metrics window kept over a pause; templates: a default user

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 12:00:00.000000

`auto_resume`: whether traffic to a paused capsule resumes it (E2B's `autoResume`; true for capsules that
existed before, which traffic always resumed). `last_metrics`: the samples the host held when the capsule
was last paused, served while it sleeps. `templates.default_user`: who commands run as in capsules started
from the template ("": the platform's default, `user`).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sandboxes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("auto_resume", sa.Boolean(), nullable=False, server_default=sa.true()))
        batch_op.add_column(sa.Column("last_metrics", sa.JSON(), nullable=True))
    with op.batch_alter_table("templates", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("default_user", sa.String(length=64), nullable=False, server_default="")
        )


def downgrade() -> None:
    with op.batch_alter_table("templates", schema=None) as batch_op:
        batch_op.drop_column("default_user")
    with op.batch_alter_table("sandboxes", schema=None) as batch_op:
        batch_op.drop_column("last_metrics")
        batch_op.drop_column("auto_resume")
