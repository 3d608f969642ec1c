"""Token lifecycle: a record of the SSO refusing our client credentials.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04

An ``invalid_client`` answer touches no token (the tokens are fine, the
settings are not), so the fact is kept beside them, per client id: the
operator's ``esi-worker tokens list`` / ``show`` report it, and the next
successful refresh with that client id clears it.
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_UPGRADE = """
CREATE TABLE esi_sso_client_refusal (
    client_id text PRIMARY KEY,
    first_refused timestamptz NOT NULL,
    last_refused timestamptz NOT NULL,
    error text NOT NULL
);
"""

_DOWNGRADE = """
DROP TABLE IF EXISTS esi_sso_client_refusal;
"""


def upgrade() -> None:
    """Add the client refusal record."""
    op.execute(_UPGRADE)


def downgrade() -> None:
    """Remove what :func:`upgrade` added."""
    op.execute(_DOWNGRADE)
