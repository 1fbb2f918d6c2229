"""Hosts: the port of the agent's traffic listener

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 08:00:00.000000

An agent serves sandbox traffic (`/proxy/...`) on a listener of its own, apart from its control API, so
that no path a user sends through the traffic proxy can reach an RPC. The control plane learns its port at
registration, from heartbeats and from `GetHostInfo` (0: not known yet, no traffic is sent).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("proxy_port", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("proxy_port")
