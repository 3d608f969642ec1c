"""The example jobs, run by a worker against the ESI emulator.

Only the fixtures esi-worker ships (``make_token``, ``started_worker``,
``job_registry``) are used: the way a plugin author tests a plugin.
"""

from __future__ import annotations

from esi_worker_example.jobs import SKILLS

PILOT = 2112000001  # a character the emulator has recorded skills for


def test_the_jobs_are_registered_through_their_entry_points(job_registry):
    assert {"example_skills", "example_server_status"} <= set(job_registry.names())
    assert job_registry.source("example_skills") == "esi-worker-example 0.1.0"


def test_skills_are_counted_for_a_character_that_granted_the_scope(
    make_token, started_worker
):
    # given
    make_token(PILOT, "Test Pilot One", SKILLS)

    # when
    run = started_worker.run("example_skills", PILOT)

    # then
    assert run["outcome"] == "success", run["error"]
    assert run["items"] == 241 and run["esi_calls"] == 1


def test_a_character_without_the_scope_is_skipped(make_token, started_worker):
    make_token(PILOT, "Test Pilot One", "esi-assets.read_assets.v1")

    run = started_worker.run("example_skills", PILOT)

    assert run["outcome"] == "skipped"


def test_the_status_job_sees_every_token_with_the_scope(make_token, started_worker):
    # given: two characters with the scope
    make_token(PILOT, "Test Pilot One", SKILLS)
    make_token(96224792, "Mitani", [SKILLS])

    # when: the plan runs every job once (the status job is a once-job)
    started_worker.plan("example_server_status")

    # then
    run = started_worker.runs("example_server_status")[0]
    assert run["outcome"] == "success", run["error"]
    assert run["items"] == 2
