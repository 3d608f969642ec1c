"""Initial schema: tokens and scopes, logins, job runs, built-in job data.

Revision ID: 0001
Revises:
Create Date: 2025-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_TABLES = """
CREATE TABLE esi_scope (
    id serial PRIMARY KEY,
    name text NOT NULL UNIQUE
);

CREATE TABLE esi_token (
    id bigserial PRIMARY KEY,
    created timestamptz NOT NULL DEFAULT now(),
    updated timestamptz NOT NULL DEFAULT now(),
    access_token text NOT NULL,
    refresh_token text NULL,
    access_expires timestamptz NOT NULL,
    character_id bigint NOT NULL,
    character_name text NOT NULL,
    token_type text NOT NULL DEFAULT 'character',
    character_owner_hash text NOT NULL,
    sso_version int NOT NULL DEFAULT 2,
    user_id text NULL,
    state text NOT NULL DEFAULT 'valid',
    state_reason text NULL,
    state_changed timestamptz NULL,
    last_refresh_error text NULL,
    refresh_failures int NOT NULL DEFAULT 0,
    next_refresh_attempt timestamptz NULL
);
CREATE INDEX esi_token_character_idx ON esi_token (character_id);
CREATE INDEX esi_token_state_expires_idx ON esi_token (state, access_expires);

CREATE TABLE esi_token_scope (
    token_id bigint NOT NULL REFERENCES esi_token (id) ON DELETE CASCADE,
    scope_id int NOT NULL REFERENCES esi_scope (id),
    PRIMARY KEY (token_id, scope_id)
);
-- require_scopes walks this index: scope_id = ANY(...) grouped by token.
CREATE INDEX esi_token_scope_scope_token_idx ON esi_token_scope (scope_id, token_id);

CREATE TABLE esi_pending_login (
    state text PRIMARY KEY,
    created timestamptz,
    scopes text[],
    code_verifier text NULL,
    redirect_to text NULL,
    user_id text NULL
);

CREATE TABLE esi_job_run (
    id bigserial PRIMARY KEY,
    job text,
    character_id bigint NULL,
    enqueued timestamptz NULL,
    started timestamptz NOT NULL,
    finished timestamptz NULL,
    outcome text NULL,
    pages int DEFAULT 0,
    items int DEFAULT 0,
    esi_calls int DEFAULT 0,
    cache_hits int DEFAULT 0,
    error text NULL
);
CREATE INDEX esi_job_run_job_started_idx ON esi_job_run (job, started);

CREATE TABLE esi_market_order (
    region_id int,
    order_id bigint,
    type_id int,
    location_id bigint,
    system_id int,
    is_buy_order bool,
    price double precision,
    volume_remain int,
    volume_total int,
    min_volume int,
    duration int,
    issued timestamptz,
    range text,
    fetched timestamptz NOT NULL,
    PRIMARY KEY (region_id, order_id)
);

CREATE TABLE esi_type_name (
    type_id int,
    language text,
    name text NOT NULL,
    description text,
    group_id int,
    published bool,
    fetched timestamptz NOT NULL,
    PRIMARY KEY (type_id, language)
);

CREATE TABLE esi_character_asset (
    character_id bigint,
    item_id bigint,
    type_id int,
    location_id bigint,
    location_flag text,
    location_type text,
    quantity int,
    is_singleton bool,
    is_blueprint_copy bool,
    fetched timestamptz NOT NULL,
    PRIMARY KEY (character_id, item_id)
);
"""

# Children before parents, so the foreign keys never block a drop.
_DROP_ORDER = (
    "esi_character_asset",
    "esi_type_name",
    "esi_market_order",
    "esi_job_run",
    "esi_pending_login",
    "esi_token_scope",
    "esi_token",
    "esi_scope",
)


def upgrade() -> None:
    """Create every table of the first schema."""
    op.execute(_TABLES)


def downgrade() -> None:
    """Drop every table this revision created."""
    for table in _DROP_ORDER:
        op.execute(f"DROP TABLE IF EXISTS {table}")
