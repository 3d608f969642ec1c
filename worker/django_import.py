"""Importing tokens from a django-esi database (an Alliance Auth operator's move).

django-esi keeps tokens in ``esi_token``, scope names in ``esi_scope`` and
the link in ``esi_token_scopes``; it stores no expiry, so an imported access
token counts as expired and the first use refreshes it. The import is one
transaction (all rows or none), and idempotent: a row already imported (its
``source`` is ``django-esi:<id>``) is left alone, and an equivalent valid
token of ours is never overwritten.

django-esi makes a new row for every login, so one character often has
several equivalent rows, each a grant of its own that may or may not still
live. None is dropped: rows are read newest first (the likeliest live
grant gets the lowest new id and revives a dead equivalent first), and a
row whose refresh token no equivalent token holds is stored beside them.
The first refreshes tell which grants are dead, and prune clears those.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

import psycopg

from .access_tokens import issued_to
from .db import describe_database, scrub_error
from .errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    IncompleteResponseError,
    ScopeError,
)
from .scopes import normalize_scopes
from .tokens import GrantFields

if TYPE_CHECKING:
    from .tokens import TokenStore

log = logging.getLogger(__name__)

SOURCE_PREFIX = "django-esi:"
TABLES = ("esi_token", "esi_scope", "esi_token_scopes")
# django-esi's own idea of how long an access token lives after ``created``.
DJANGO_ESI_VALIDITY_S = 1170.0

_ROWS = """
SELECT t.id, t.created, t.access_token, t.refresh_token, t.user_id,
       t.character_id, t.character_name, t.token_type,
       t.character_owner_hash, {sso_version},
       ARRAY(SELECT s.name FROM esi_token_scopes ts
             JOIN esi_scope s ON s.id = ts.scope_id
             WHERE ts.token_id = t.id) AS scopes
FROM esi_token t ORDER BY t.created DESC, t.id DESC
"""


@dataclasses.dataclass(frozen=True)
class ImportSummary:
    """What an import did, by row: stored (new, or beside an equivalent token
    with another refresh token), merged into a dead one, kept (an equivalent
    valid token holds its refresh token already), already imported."""

    inserted: int = 0
    merged: int = 0
    kept: int = 0
    unchanged: int = 0

    def __str__(self) -> str:
        return ", ".join(
            f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
        )


def import_django_esi(url: str, store: TokenStore) -> ImportSummary:
    """Copy every token of the django-esi database at ``url`` into ``store``.

    :raises DatabaseUnavailableError: the source cannot be reached (the
        reason is given, the password never).
    :raises ConfigurationError: ``url`` is no PostgreSQL connection string,
        or the source lacks django-esi's tables.
    :raises IncompleteResponseError: a row is unusable (named by its id);
        nothing was imported.
    """
    rows = _read_source(url)
    grants = [_grant_of(row) for row in rows]
    log.info("read %d django-esi tokens; importing", len(grants))

    counts: Counter[str] = Counter()
    with store.pool.connection() as conn, conn.transaction():
        for source, fields, user in grants:
            known = conn.execute(
                "SELECT 1 FROM esi_token WHERE source = %s", (source,)
            ).fetchone()
            if known is not None:
                counts["unchanged"] += 1
                continue
            _token_id, action = store.merge(
                conn, fields, user=user, source=source, keep_valid=True
            )
            counts[action] += 1
    summary = ImportSummary(**counts)
    log.info("django-esi import finished: %s", summary)
    _warn_of_other_applications(grants, store.settings.sso_client_id)
    return summary


def _warn_of_other_applications(
    grants: list[tuple[str, GrantFields, str | None]], ours: str | None
) -> None:
    """Say which imported tokens another SSO application was issued: they
    are not refreshed until ESI_WORKER_SSO_CLIENT_ID names that application."""
    others = Counter(
        client
        for _source, fields, _user in grants
        if (client := issued_to(fields.access_token)) is not None and client != ours
    )
    for client, count in sorted(others.items()):
        log.warning(
            "%d imported tokens were issued to SSO application %r, not to the "
            "configured ESI_WORKER_SSO_CLIENT_ID %r: they are kept but not "
            "refreshed until the worker runs with that application",
            count,
            client,
            ours,
        )


def _read_source(url: str) -> list[dict[str, Any]]:
    """Every django-esi token row with its scope names.

    :raises ConfigurationError: ``url`` is no PostgreSQL connection string,
        or the database there is not a django-esi one (or not readable).
    :raises DatabaseUnavailableError: the database cannot be reached.
    """
    target = describe_source(url)
    try:
        conn = psycopg.connect(url, connect_timeout=10)
    except psycopg.Error as exc:
        raise DatabaseUnavailableError(
            f"cannot reach the django-esi database at {target}: "
            f"{scrub_error(exc, url)}"
        ) from None
    try:
        with conn:
            conn.read_only = True
            return _read_rows(conn)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailableError(
            f"lost the django-esi database at {target}: {scrub_error(exc, url)}"
        ) from None
    except psycopg.Error as exc:
        raise ConfigurationError(
            f"cannot read the django-esi database at {target}: "
            f"{scrub_error(exc, url)}"
        ) from None


def describe_source(url: str) -> str:
    """``host:port/dbname`` of a django-esi source, without user or password.

    :raises ConfigurationError: ``url`` is no PostgreSQL connection string;
        the message never repeats it, since it may hold a password.
    """
    try:
        if not url.strip():
            raise ConfigurationError("empty")
        return describe_database(url)
    except ConfigurationError:
        raise ConfigurationError(
            "the django-esi source (--from) is not a PostgreSQL connection "
            "string: expected postgresql://user:password@host:port/dbname or "
            "key=value pairs such as 'host=db dbname=alliance_auth'"
        ) from None


def _read_rows(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    present = {
        r[0]
        for r in conn.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_name = ANY(%s)",
            (list(TABLES),),
        )
    }
    missing = [t for t in TABLES if t not in present]
    if missing:
        raise ConfigurationError(
            f"the source database has no {', '.join(missing)} table: "
            "is it a django-esi database?"
        )
    has_version = conn.execute(
        "SELECT 1 FROM information_schema.columns WHERE table_name ="
        " 'esi_token' AND column_name = 'sso_version'"
    ).fetchone()
    sql = _ROWS.format(sso_version="t.sso_version" if has_version else "2")
    cursor = conn.execute(sql)  # type: ignore[arg-type]
    names = [c.name for c in cursor.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _grant_of(row: dict[str, Any]) -> tuple[str, GrantFields, str | None]:
    """A checked grant from one row; the error names the row, never a secret."""
    where = f"django-esi token {row['id']}"
    created = row["created"]
    if isinstance(created, dt.datetime) and created.tzinfo is None:
        created = created.replace(tzinfo=dt.UTC)
    try:
        fields = GrantFields(
            access_token=row["access_token"],
            refresh_token=row["refresh_token"] or None,
            character_id=row["character_id"],
            character_name=row["character_name"],
            character_owner_hash=row["character_owner_hash"],
            scopes=normalize_scopes(row["scopes"] or ()),
            access_expires=created + dt.timedelta(seconds=DJANGO_ESI_VALIDITY_S),
            token_type=(row["token_type"] or "character").lower(),
            sso_version=int(row["sso_version"] or 2),
        ).checked()
    except (IncompleteResponseError, ScopeError, TypeError, ValueError) as exc:
        raise IncompleteResponseError(f"{where}: {exc}") from None
    user = str(row["user_id"]) if row["user_id"] is not None else None
    return f"{SOURCE_PREFIX}{row['id']}", fields, user
