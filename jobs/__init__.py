"""The built-in jobs, registered through the ``esi_worker.jobs`` entry points."""
