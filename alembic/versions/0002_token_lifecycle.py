"""Token lifecycle: encryption at rest, login intake, prune records.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03

Secrets already stored in plaintext stay readable (the cipher passes
values without its ``fernet:`` prefix through); each refresh run encrypts a
batch of them, and ``esi-worker tokens reencrypt`` does all at once. The
migration itself cannot: the keys are settings, not schema.
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_UPGRADE = """
-- Where a token came from (e.g. 'django-esi:<token id>'): an import run twice
-- finds the rows it already brought in.
ALTER TABLE esi_token ADD COLUMN source text NULL;
CREATE UNIQUE INDEX esi_token_source_idx ON esi_token (source)
    WHERE source IS NOT NULL;

-- Write-ahead record of a refresh in flight, written outside the refresh
-- transaction, so a worker killed after the SSO answered leaves the rotated
-- refresh token (or at least the fact that one was spent) behind. No foreign
-- key: inserting a child row would wait for the parent's row lock, which the
-- refresh transaction holds.
CREATE TABLE esi_token_refresh_journal (
    token_id bigint PRIMARY KEY,
    started timestamptz NOT NULL,
    refresh_token text NULL,
    received timestamptz NULL
);

-- What prune removed and why, for the operator.
CREATE TABLE esi_token_pruned (
    id bigserial PRIMARY KEY,
    token_id bigint NOT NULL,
    character_id bigint NOT NULL,
    character_name text NOT NULL,
    user_id text NULL,
    state text NOT NULL,
    state_reason text NULL,
    state_changed timestamptz NULL,
    pruned timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX esi_token_pruned_character_idx ON esi_token_pruned (character_id);

CREATE INDEX esi_pending_login_created_idx ON esi_pending_login (created);
"""

_DOWNGRADE = """
DROP INDEX IF EXISTS esi_pending_login_created_idx;
DROP TABLE IF EXISTS esi_token_pruned;
DROP TABLE IF EXISTS esi_token_refresh_journal;
DROP INDEX IF EXISTS esi_token_source_idx;
ALTER TABLE esi_token DROP COLUMN IF EXISTS source;
"""


def upgrade() -> None:
    """Add token sources, the refresh journal and the prune record."""
    op.execute(_UPGRADE)


def downgrade() -> None:
    """Remove what :func:`upgrade` added."""
    op.execute(_DOWNGRADE)
