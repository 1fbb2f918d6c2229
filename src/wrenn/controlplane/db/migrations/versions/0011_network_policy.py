"""Capsules and templates: egress policies (public part, sealed secrets) and each capsule's egress CA

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 12:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sandboxes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("network", sa.JSON(), nullable=False, server_default="{}"))
        batch_op.add_column(sa.Column("network_secrets", sa.Text(), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("egress_ca_cert", sa.Text(), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("egress_ca_key", sa.Text(), nullable=False, server_default=""))
    with op.batch_alter_table("templates", schema=None) as batch_op:
        batch_op.add_column(sa.Column("network", sa.JSON(), nullable=False, server_default="{}"))
        batch_op.add_column(sa.Column("network_secrets", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("templates", schema=None) as batch_op:
        batch_op.drop_column("network_secrets")
        batch_op.drop_column("network")
    with op.batch_alter_table("sandboxes", schema=None) as batch_op:
        batch_op.drop_column("egress_ca_key")
        batch_op.drop_column("egress_ca_cert")
        batch_op.drop_column("network_secrets")
        batch_op.drop_column("network")
