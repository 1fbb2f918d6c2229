"""Metrics history, team samples and daily usage

Revision ID: 0015
Revises: 0014
Create Date: 2027-02-15 10:00:00.000000

- `capsule_samples`: a capsule's CPU, memory and disk samples, copied from its host before each pause and
  destroy and periodically (served running, paused or destroyed).
- `team_samples`: each team's running capsules, vCPUs and memory, every sampling interval (`/stats`).
- `team_usage_days`: CPU-minutes and RAM-MB-minutes of each finished day, rolled up from the samples.
- No foreign keys: SQLite alters `sandboxes` or `teams` by copying and dropping them, which would cascade.
- `sandboxes.last_metrics` (the window kept at a pause, 0010) goes: its samples move to `capsule_samples`.
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "capsule_samples",
        sa.Column("capsule_id", sa.String(length=40), nullable=False),
        sa.Column("t", sa.BigInteger(), nullable=False),
        sa.Column("cpu_pct", sa.Float(), nullable=False),
        sa.Column("mem_bytes", sa.BigInteger(), nullable=False),
        sa.Column("disk_bytes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("capsule_id", "t"),
    )
    _move_last_metrics()
    op.create_table(
        "team_samples",
        sa.Column("team_id", sa.String(length=40), nullable=False),
        sa.Column("t", sa.BigInteger(), nullable=False),
        sa.Column("running", sa.Integer(), nullable=False),
        sa.Column("vcpus", sa.Integer(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("interval_s", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("team_id", "t"),
    )
    op.create_index(op.f("ix_team_samples_t"), "team_samples", ["t"], unique=False)
    op.create_table(
        "team_usage_days",
        sa.Column("team_id", sa.String(length=40), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("cpu_minutes", sa.Float(), nullable=False),
        sa.Column("ram_mb_minutes", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("team_id", "day"),
    )


def _move_last_metrics() -> None:
    """Read the kept windows, drop the column, then write the samples: on SQLite the column goes by copying
    `sandboxes`, whose drop would cascade to samples already written."""
    bind = op.get_bind()
    kept = bind.execute(
        sa.text("SELECT id, last_metrics FROM sandboxes WHERE last_metrics IS NOT NULL")
    ).all()
    with op.batch_alter_table("sandboxes") as batch_op:
        batch_op.drop_column("last_metrics")
    samples = sa.table(
        "capsule_samples", sa.column("capsule_id"), sa.column("t"), sa.column("cpu_pct"),
        sa.column("mem_bytes"), sa.column("disk_bytes"),
    )  # fmt: skip
    for capsule_id, window in kept:
        points = json.loads(window) if isinstance(window, str) else window
        by_t = {int(p["t"]): p for p in points or []}
        if by_t:
            bind.execute(samples.insert(), [
                {"capsule_id": capsule_id, "t": t, "cpu_pct": float(p["cpu_pct"]),
                 "mem_bytes": int(p["mem_bytes"]), "disk_bytes": int(p["disk_bytes"])}
                for t, p in by_t.items()
            ])  # fmt: skip


def downgrade() -> None:
    with op.batch_alter_table("sandboxes") as batch_op:
        batch_op.add_column(sa.Column("last_metrics", sa.JSON(), nullable=True))
    op.drop_table("team_usage_days")
    op.drop_index(op.f("ix_team_samples_t"), table_name="team_samples")
    op.drop_table("team_samples")
    op.drop_table("capsule_samples")
