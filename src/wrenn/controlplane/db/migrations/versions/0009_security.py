"""Security: sealed capsule tokens, pinned host certificates, team quotas, API key roles and expiry,
login failures per client address, the first admin's bootstrap token

Revision ID: 0009
Revises: 0008
Create Date: 2027-01-10 10:00:00.000000

- `sandboxes.envd_token` and `traffic_access_token` are encrypted at rest (`enc1:...`, AES-256-GCM with
  the control plane's encryption key, which `migrate` hands over): existing rows are sealed here.
- `hosts.cert_pinned`: the host's certificate names its id (`<id>.hosts.wrenn.internal`), which the
  control plane verifies; a host registered before has a certificate naming its address only, and is
  asked to refresh it at its next heartbeat.
- `teams.quota_*`: a team's own quotas (null: the control plane's defaults).
- `team_api_keys.role` (`member`, `viewer`) and `expires_at`.
- `login_failures.address`: the client address of a failed login.
- `bootstrap_tokens`: the one-time token that creates the platform's first admin.
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TOKENS = (("envd_token", "capsule.envd_token"), ("traffic_access_token", "capsule.traffic_access_token"))


def _convert(seal: bool) -> None:
    """Seal (or, going down, open) every capsule token in place."""
    sandboxes = sa.table("sandboxes", sa.column("id"), *(sa.column(name) for name, _ in _TOKENS))
    bind = op.get_bind()
    rows = bind.execute(sa.select(sandboxes)).all()
    config = op.get_context().config
    box: Any = config.attributes.get("secret_box") if config is not None else None
    for row in rows:
        values: dict[str, str] = {}
        for name, purpose in _TOKENS:
            value = getattr(row, name)
            if not value or value.startswith("enc1:") == seal:
                continue
            if box is None:
                raise RuntimeError("capsule tokens need the encryption key: run migrations through migrate()")
            values[name] = box.seal(value, purpose) if seal else box.open(value, purpose)
        if values:
            bind.execute(sa.update(sandboxes).where(sandboxes.c.id == row.id).values(**values))


def upgrade() -> None:
    with op.batch_alter_table("sandboxes", schema=None) as batch_op:
        batch_op.alter_column("envd_token", existing_type=sa.String(length=128), type_=sa.String(length=255))
        batch_op.alter_column(
            "traffic_access_token", existing_type=sa.String(length=64), type_=sa.String(length=255)
        )
    _convert(seal=True)
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cert_pinned", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("teams", schema=None) as batch_op:
        for name in ("quota_capsules", "quota_vcpus", "quota_memory_mb", "quota_disk_mb"):
            batch_op.add_column(sa.Column(name, sa.Integer(), nullable=True))
    with op.batch_alter_table("team_api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("role", sa.String(length=16), nullable=False, server_default="member"))
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("login_failures", schema=None) as batch_op:
        batch_op.add_column(sa.Column("address", sa.String(length=64), nullable=False, server_default=""))
        batch_op.create_index(batch_op.f("ix_login_failures_address"), ["address"], unique=False)
    op.create_table(
        "bootstrap_tokens",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("bootstrap_tokens")
    with op.batch_alter_table("login_failures", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_login_failures_address"))
        batch_op.drop_column("address")
    with op.batch_alter_table("team_api_keys", schema=None) as batch_op:
        batch_op.drop_column("expires_at")
        batch_op.drop_column("role")
    with op.batch_alter_table("teams", schema=None) as batch_op:
        for name in ("quota_disk_mb", "quota_memory_mb", "quota_vcpus", "quota_capsules"):
            batch_op.drop_column(name)
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("cert_pinned")
    _convert(seal=False)
    with op.batch_alter_table("sandboxes", schema=None) as batch_op:
        batch_op.alter_column(
            "traffic_access_token", existing_type=sa.String(length=255), type_=sa.String(length=64)
        )
        batch_op.alter_column("envd_token", existing_type=sa.String(length=255), type_=sa.String(length=128))
