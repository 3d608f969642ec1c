"""Test support for esi-worker and its plugin authors (a pytest plugin)."""
