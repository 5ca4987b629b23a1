"""Initial schema: accounts, spaces, space_roles, speak_requests, blocks.

Revision ID: 0001
Revises:
Create Date: 2026-11-20
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _ts(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.String(16), nullable=False),
        sa.Column("username", sa.String(32), nullable=False),
        sa.Column("display_name", sa.String(64), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_accounts"),
        sa.UniqueConstraint("username", name="uq_accounts_username"),
    )
    op.create_table(
        "spaces",
        sa.Column("id", sa.String(16), nullable=False),
        sa.Column("host_id", sa.String(16), nullable=False),
        sa.Column("title", sa.String(120), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("visibility", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        _ts("scheduled_for", nullable=True),
        _ts("started_at", nullable=True),
        _ts("ended_at", nullable=True),
        _ts("created_at"),
        sa.ForeignKeyConstraint(["host_id"], ["accounts.id"], name="fk_spaces_host_id_accounts"),
        sa.PrimaryKeyConstraint("id", name="pk_spaces"),
    )
    op.create_index("ix_spaces_host_id", "spaces", ["host_id"])
    op.create_index(
        "ix_spaces_state_visibility_created_at", "spaces", ["state", "visibility", "created_at"]
    )
    op.create_index("ix_spaces_started_at", "spaces", ["started_at"])
    op.create_index("ix_spaces_ended_at", "spaces", ["ended_at"])
    op.create_index("ix_spaces_created_at", "spaces", ["created_at"])
    op.create_table(
        "space_roles",
        sa.Column("space_id", sa.String(16), nullable=False),
        sa.Column("account_id", sa.String(16), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        _ts("granted_at"),
        sa.ForeignKeyConstraint(
            ["space_id"], ["spaces.id"], name="fk_space_roles_space_id_spaces", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name="fk_space_roles_account_id_accounts"
        ),
        sa.PrimaryKeyConstraint("space_id", "account_id", name="pk_space_roles"),
    )
    op.create_table(
        "speak_requests",
        sa.Column("space_id", sa.String(16), nullable=False),
        sa.Column("account_id", sa.String(16), nullable=False),
        _ts("requested_at"),
        sa.ForeignKeyConstraint(
            ["space_id"],
            ["spaces.id"],
            name="fk_speak_requests_space_id_spaces",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name="fk_speak_requests_account_id_accounts"
        ),
        sa.PrimaryKeyConstraint("space_id", "account_id", name="pk_speak_requests"),
    )
    op.create_table(
        "blocks",
        sa.Column("space_id", sa.String(16), nullable=False),
        sa.Column("account_id", sa.String(16), nullable=False),
        sa.Column("blocked_by", sa.String(16), nullable=False),
        _ts("blocked_at"),
        sa.ForeignKeyConstraint(
            ["space_id"], ["spaces.id"], name="fk_blocks_space_id_spaces", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name="fk_blocks_account_id_accounts"
        ),
        sa.ForeignKeyConstraint(
            ["blocked_by"], ["accounts.id"], name="fk_blocks_blocked_by_accounts"
        ),
        sa.PrimaryKeyConstraint("space_id", "account_id", name="pk_blocks"),
    )
    op.create_index("ix_blocks_blocked_at", "blocks", ["blocked_at"])


def downgrade() -> None:
    op.drop_table("blocks")
    op.drop_table("speak_requests")
    op.drop_table("space_roles")
    op.drop_index("ix_spaces_created_at", table_name="spaces")
    op.drop_index("ix_spaces_ended_at", table_name="spaces")
    op.drop_index("ix_spaces_started_at", table_name="spaces")
    op.drop_index("ix_spaces_state_visibility_created_at", table_name="spaces")
    op.drop_index("ix_spaces_host_id", table_name="spaces")
    op.drop_table("spaces")
    op.drop_table("accounts")
