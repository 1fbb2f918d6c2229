"""Hosts: the base images each one has built

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 10:00:00.000000

The control plane learns which base images exist (name, version, envd version, kernel, description) from
its hosts (registration, heartbeats, `GetHostInfo`) instead of reading the image builder's recipes: the
control plane never imports the host side.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("images", sa.JSON(), nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("images")
