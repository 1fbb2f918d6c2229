"""Placement by CPU, memory and disk; cordoned hosts

Revision ID: 0016
Revises: 0015
Create Date: 2027-03-01 10:00:00.000000

- `hosts.disk_free_mb`: free space on the agent's data filesystem, as it last reported (null: not known).
- `hosts.cpu_load`: its 1-minute load average, as it last reported.
- `hosts.cordoned`: an operator took it out of placement (no new capsules; running ones stay).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("disk_free_mb", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("cpu_load", sa.Float(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("cordoned", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("cordoned")
        batch_op.drop_column("cpu_load")
        batch_op.drop_column("disk_free_mb")
