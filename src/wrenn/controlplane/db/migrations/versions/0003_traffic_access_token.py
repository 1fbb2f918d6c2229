"""traffic access token

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 09:12:41.118204

Capsules created with `allow_public_traffic=false` carry a token the traffic proxy requires.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sandboxes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("traffic_access_token", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sandboxes", schema=None) as batch_op:
        batch_op.drop_column("traffic_access_token")
