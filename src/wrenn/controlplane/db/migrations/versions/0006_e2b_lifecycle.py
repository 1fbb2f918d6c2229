"""E2B lifecycle: labels, lifetime deadline, idempotent creates

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 12:50:00.000000

What the E2B-compatible API needs of a capsule: the caller's metadata (`labels`), a lifetime deadline
(`end_at`, and whether it kills or pauses: `on_timeout`), and the `Idempotency-Key` of its create.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sandboxes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("labels", sa.JSON(), nullable=False, server_default="{}"))
        batch_op.add_column(sa.Column("end_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("on_timeout", sa.String(length=8), nullable=False, server_default="kill")
        )
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=255), nullable=True))
        batch_op.add_column(
            sa.Column("request_hash", sa.String(length=64), nullable=False, server_default="")
        )
        batch_op.create_unique_constraint(
            "uq_sandboxes_team_id_idempotency_key", ["team_id", "idempotency_key"]
        )


def downgrade() -> None:
    with op.batch_alter_table("sandboxes", schema=None) as batch_op:
        batch_op.drop_constraint("uq_sandboxes_team_id_idempotency_key", type_="unique")
        batch_op.drop_column("request_hash")
        batch_op.drop_column("idempotency_key")
        batch_op.drop_column("on_timeout")
        batch_op.drop_column("end_at")
        batch_op.drop_column("labels")
