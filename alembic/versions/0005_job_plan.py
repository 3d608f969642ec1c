"""Job plan table, run holders, deferral counts, per-character success index.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_UPGRADE = """
-- Where each job and subject's plan stands: its newest planned run. Kept
-- by a trigger, so planning reads one row per subject however long the
-- history, whoever inserted the run.
CREATE TABLE esi_job_plan (
    job text NOT NULL,
    subject bigint NOT NULL,
    run_id bigint NOT NULL REFERENCES esi_job_run (id) ON DELETE CASCADE,
    PRIMARY KEY (job, subject)
);
CREATE INDEX esi_job_plan_run_idx ON esi_job_plan (run_id);
INSERT INTO esi_job_plan (job, subject, run_id)
    SELECT DISTINCT ON (job, subject) job, subject, id FROM esi_job_run
    WHERE due IS NOT NULL ORDER BY job, subject, id DESC;

CREATE FUNCTION esi_job_plan_note() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO esi_job_plan (job, subject, run_id)
        VALUES (NEW.job, NEW.subject, NEW.id)
        ON CONFLICT (job, subject) DO UPDATE SET run_id = EXCLUDED.run_id
        WHERE esi_job_plan.run_id < EXCLUDED.run_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER esi_job_plan_note AFTER INSERT ON esi_job_run
    FOR EACH ROW WHEN (NEW.due IS NOT NULL) EXECUTE FUNCTION esi_job_plan_note();

-- The process running a run holds an advisory lock on this number while
-- it lives: a run is abandoned only when nobody holds it any more.
ALTER TABLE esi_job_run ADD COLUMN holder bigint NULL;
CREATE SEQUENCE esi_job_holder_seq AS integer CYCLE;
-- Deferrals in a row of this job and subject (downtime, route down, limits).
ALTER TABLE esi_job_run ADD COLUMN deferrals int NOT NULL DEFAULT 0;
-- new=True of the token decorators: since the last success for a character.
CREATE INDEX esi_job_run_success_idx ON esi_job_run (job, character_id, started)
    WHERE outcome = 'success';
"""

_DOWNGRADE = """
DROP INDEX IF EXISTS esi_job_run_success_idx;
ALTER TABLE esi_job_run DROP COLUMN IF EXISTS deferrals;
DROP SEQUENCE IF EXISTS esi_job_holder_seq;
ALTER TABLE esi_job_run DROP COLUMN IF EXISTS holder;
DROP TRIGGER IF EXISTS esi_job_plan_note ON esi_job_run;
DROP FUNCTION IF EXISTS esi_job_plan_note();
DROP TABLE IF EXISTS esi_job_plan;
"""


def upgrade() -> None:
    """The plan table and its trigger, run holders, deferral counts."""
    op.execute(_UPGRADE)


def downgrade() -> None:
    """Drop them again; the plan is read from the run history as before."""
    op.execute(_DOWNGRADE)
