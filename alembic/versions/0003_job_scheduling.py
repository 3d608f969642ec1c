"""Job scheduling: leadership, queued runs, run history.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_UPGRADE = """
ALTER TABLE esi_job_run ALTER COLUMN started DROP NOT NULL;
ALTER TABLE esi_job_run ADD COLUMN state text NOT NULL DEFAULT 'finished';
ALTER TABLE esi_job_run ADD COLUMN subject bigint NOT NULL DEFAULT 0;
ALTER TABLE esi_job_run ADD COLUMN corporation_id bigint NULL;
ALTER TABLE esi_job_run ADD COLUMN due timestamptz NULL;
ALTER TABLE esi_job_run ADD COLUMN attempt int NOT NULL DEFAULT 0;
ALTER TABLE esi_job_run ADD COLUMN deferred_reason text NULL;
ALTER TABLE esi_job_run ADD COLUMN next_due timestamptz NULL;

-- At most one queued or running run per job and subject: the database
-- refuses a pile-up even if two schedulers ever raced.
CREATE UNIQUE INDEX esi_job_run_active_idx ON esi_job_run (job, subject)
    WHERE state IN ('queued', 'running');
CREATE INDEX esi_job_run_state_idx ON esi_job_run (state)
    WHERE state <> 'finished';
CREATE INDEX esi_job_run_finished_idx ON esi_job_run (finished);
-- The plan is derived from the newest planned run of each job and subject.
CREATE INDEX esi_job_run_plan_idx ON esi_job_run (job, subject, id)
    WHERE due IS NOT NULL;
"""

_DOWNGRADE = """
DROP INDEX IF EXISTS esi_job_run_plan_idx;
DROP INDEX IF EXISTS esi_job_run_finished_idx;
DROP INDEX IF EXISTS esi_job_run_state_idx;
DROP INDEX IF EXISTS esi_job_run_active_idx;
DELETE FROM esi_job_run WHERE started IS NULL;
ALTER TABLE esi_job_run DROP COLUMN IF EXISTS next_due;
ALTER TABLE esi_job_run DROP COLUMN IF EXISTS deferred_reason;
ALTER TABLE esi_job_run DROP COLUMN IF EXISTS attempt;
ALTER TABLE esi_job_run DROP COLUMN IF EXISTS due;
ALTER TABLE esi_job_run DROP COLUMN IF EXISTS corporation_id;
ALTER TABLE esi_job_run DROP COLUMN IF EXISTS subject;
ALTER TABLE esi_job_run DROP COLUMN IF EXISTS state;
ALTER TABLE esi_job_run ALTER COLUMN started SET NOT NULL;
"""


def upgrade() -> None:
    """Run states, the one-active-run index and the columns the plan is read from."""
    op.execute(_UPGRADE)


def downgrade() -> None:
    """Drop the run-state columns (queued rows, never started, are discarded)."""
    op.execute(_DOWNGRADE)

