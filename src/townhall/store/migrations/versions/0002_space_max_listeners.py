"""A space's own listener cap (issue 9): spaces.max_listeners (NULL: the
deployment's setting) and when it was last set (other nodes' index refresh).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("spaces") as batch:
        batch.add_column(sa.Column("max_listeners", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("cap_set_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("spaces") as batch:
        batch.drop_column("cap_set_at")
        batch.drop_column("max_listeners")
