"""What `worker` exports is what its __all__ lists, and every name resolves."""

from __future__ import annotations

import worker

REQUIRED = {
    "Token", "esi_client_factory", "EsiClientProvider", "CachingHttpFuture",
    "TokenError", "TokenInvalidError", "TokenExpiredError",
    "NotRefreshableTokenError", "IncompleteResponseError", "job", "JobContext",
}


def test_all_lists_the_django_esi_and_plugin_names() -> None:
    assert REQUIRED <= set(worker.__all__)


def test_every_exported_name_resolves() -> None:
    for name in worker.__all__:
        assert getattr(worker, name) is not None, name


def test_errors_share_one_root() -> None:
    for name in worker.__all__:
        value = getattr(worker, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, worker.WorkerError), name


def test_all_is_a_literal_list_of_every_lazy_export() -> None:
    # A literal list lets linters and IDEs read it; it must name every lazy export.
    assert isinstance(worker.__all__, list)
    assert set(worker.__all__) == set(worker._EXPORTS) | {"__version__"}


def test_every_error_of_the_tree_is_importable_from_worker() -> None:
    # Plugin authors catch these; each must be reachable as worker.<Name>.
    import inspect

    import worker.errors

    errors = {
        name for name, value in inspect.getmembers(worker.errors, inspect.isclass)
        if issubclass(value, Exception) and value.__module__ == "worker.errors"
    }
    assert errors <= set(worker.__all__)


def test_refresh_failures_are_token_expired_errors_and_their_cause() -> None:
    # A django-esi caller catches TokenExpiredError; a careful one the cause.
    pairs = {
        worker.TokenRefreshTransientError: worker.SSOTransientError,
        worker.TokenRefreshClientRefusedError: worker.SSOConfigurationError,
        worker.TokenRefreshJWTError: worker.JWTValidationError,
        worker.TokenRefreshUnconfiguredError: worker.ConfigurationError,
        worker.SSOIncompleteResponseError: worker.SSOTransientError,
    }
    for error, cause in pairs.items():
        assert issubclass(error, cause), error.__name__
        assert issubclass(error, (worker.TokenExpiredError,
                                  worker.IncompleteResponseError)), error.__name__


def test_a_two_branch_error_keeps_the_context_of_both() -> None:
    error = worker.TokenRefreshClientRefusedError(
        "refused", token_id=7, character_id=2112000001, status=401,
        error="invalid_client",
    )
    assert (error.token_id, error.character_id) == (7, 2112000001)
    assert (error.status, error.error, error.retry_after_s) == (
        401, "invalid_client", None)
    assert str(error) == "refused"


def test_every_two_branch_error_is_drawn_in_the_tree() -> None:
    import worker.errors

    for name in ("SSOIncompleteResponseError", "TokenRefreshTransientError",
                 "TokenRefreshClientRefusedError", "TokenRefreshJWTError",
                 "TokenRefreshUnconfiguredError"):
        assert name in (worker.errors.__doc__ or ""), name
