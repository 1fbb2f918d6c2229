"""Accounts: activation and reset e-mails, identity providers, revocable sessions, soft deletion, host
tags, BYOC per team

Revision ID: 0012
Revises: 0011
Create Date: 2027-01-20 10:00:00.000000

- `users.password_hash` may be null (an account that signs in with an identity provider only);
  `users.token_generation` (bumped to revoke every JWT of the user); `users.deleted_at` (soft deletion).
- `oauth_identities`: provider accounts linked to users; `oauth_flows`: sign-ins under way (state, PKCE
  verifier, nonce; single-use); `email_tokens`: activation and reset tokens (SHA-256; single-use);
  `revoked_tokens`: JWTs signed out before they expire.
- `host_tags`; `teams.byoc_enabled` (null: the platform's default).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.alter_column("password_hash", existing_type=sa.String(length=200), nullable=True)
        batch_op.add_column(sa.Column("token_generation", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("deleted_at", _TIME, nullable=True))
        batch_op.create_index(batch_op.f("ix_users_deleted_at"), ["deleted_at"], unique=False)
    with op.batch_alter_table("teams", schema=None) as batch_op:
        batch_op.add_column(sa.Column("byoc_enabled", sa.Boolean(), nullable=True))
    op.create_table(
        "oauth_identities",
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("provider", "subject"),
    )
    op.create_index(op.f("ix_oauth_identities_user_id"), "oauth_identities", ["user_id"], unique=False)
    op.create_table(
        "email_tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("expires_at", _TIME, nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_index(op.f("ix_email_tokens_user_id"), "email_tokens", ["user_id"], unique=False)
    op.create_index(op.f("ix_email_tokens_created_at"), "email_tokens", ["created_at"], unique=False)
    op.create_table(
        "oauth_flows",
        sa.Column("state_hash", sa.String(length=64), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("intent", sa.String(length=8), nullable=False),
        sa.Column("user_id", sa.String(length=40), nullable=True),
        sa.Column("data", sa.String(length=2000), nullable=False),
        sa.Column("next_path", sa.String(length=512), nullable=False),
        sa.Column("expires_at", _TIME, nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("state_hash"),
    )
    op.create_index(op.f("ix_oauth_flows_expires_at"), "oauth_flows", ["expires_at"], unique=False)
    op.create_table(
        "revoked_tokens",
        sa.Column("jti", sa.String(length=64), nullable=False),
        sa.Column("expires_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("jti"),
    )
    op.create_index(op.f("ix_revoked_tokens_expires_at"), "revoked_tokens", ["expires_at"], unique=False)
    op.create_table(
        "host_tags",
        sa.Column("host_id", sa.String(length=40), nullable=False),
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["host_id"], ["hosts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("host_id", "tag"),
    )


def downgrade() -> None:
    op.drop_table("host_tags")
    op.drop_index(op.f("ix_revoked_tokens_expires_at"), table_name="revoked_tokens")
    op.drop_table("revoked_tokens")
    op.drop_index(op.f("ix_oauth_flows_expires_at"), table_name="oauth_flows")
    op.drop_table("oauth_flows")
    op.drop_index(op.f("ix_email_tokens_created_at"), table_name="email_tokens")
    op.drop_index(op.f("ix_email_tokens_user_id"), table_name="email_tokens")
    op.drop_table("email_tokens")
    op.drop_index(op.f("ix_oauth_identities_user_id"), table_name="oauth_identities")
    op.drop_table("oauth_identities")
    with op.batch_alter_table("teams", schema=None) as batch_op:
        batch_op.drop_column("byoc_enabled")
    op.execute("UPDATE users SET password_hash = '-' WHERE password_hash IS NULL")  # signs in nowhere
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_users_deleted_at"))
        batch_op.drop_column("deleted_at")
        batch_op.drop_column("token_generation")
        batch_op.alter_column("password_hash", existing_type=sa.String(length=200), nullable=False)
