"""Chainable, lazily run token queries in django-esi's ``TokenQueryset`` style."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError, SSOError, TokenError, TokenLookupError
from ..scopes import normalize_scopes
from .rows import TOKEN_COLUMNS, token_from_row
from .token import EXPIRY_MARGIN_S, VALID, Token

if TYPE_CHECKING:
    from .store import TokenStore

log = logging.getLogger(__name__)

SELECT_TOKENS = f"SELECT {TOKEN_COLUMNS} FROM esi_token t"

_FIELDS = {
    "id": "id",
    "pk": "id",
    "character_id": "character_id",
    "user": "user_id",
    "user_id": "user_id",
    "token_type": "token_type",
    "character_name": "character_name",
    "state": "state",
    "character_owner_hash": "character_owner_hash",
}
_ORDERABLE = {
    "id": "id",
    "pk": "id",
    "created": "created",
    "updated": "updated",
    "access_expires": "access_expires",
    "expires": "access_expires",
    "character_id": "character_id",
    "character_name": "character_name",
}
_Condition = tuple[str, tuple[Any, ...]]

_HOLDS_SCOPES = (
    "t.id IN (SELECT ts.token_id FROM esi_token_scope ts"
    " WHERE ts.scope_id = ANY(ARRAY(SELECT id FROM esi_scope"
    " WHERE name = ANY(%s::text[])))"
    " GROUP BY ts.token_id HAVING count(*) = %s)"
)
_SCOPE_COUNT_IS = (
    "(SELECT count(*) FROM esi_token_scope x WHERE x.token_id = t.id) = %s"
)


class TokenQuery:
    """An immutable description of a set of tokens; runs one SQL query when read.

    Every chaining method returns a new query. By default only tokens in
    state ``valid`` are seen; :meth:`including_dead` or a ``state`` filter
    lifts that.
    """

    def __init__(self, store: TokenStore) -> None:
        self._store = store
        self._conditions: tuple[_Condition, ...] = ()
        self._scopes: tuple[str, ...] = ()
        self._exact = False
        self._all_states = False
        self._require_valid = False
        self._order: tuple[str, ...] = ("t.id",)
        self._cache: list[Token] | None = None

    def __repr__(self) -> str:
        return (
            f"<TokenQuery conditions={len(self._conditions)} "
            f"scopes={list(self._scopes)} exact={self._exact} "
            f"all_states={self._all_states} require_valid={self._require_valid}>"
        )

    # -- chaining ------------------------------------------------------------

    def all(self) -> TokenQuery:
        """A copy of this query."""
        return self._copy()

    def filter(self, **fields: Any) -> TokenQuery:
        """Tokens whose fields equal the values (a list means any of them).

        Fields: ``id``/``pk``, ``character_id``, ``user``/``user_id``,
        ``token_type``, ``character_name``, ``state``,
        ``character_owner_hash``; each also with an ``__in`` suffix.
        """
        query = self._copy()
        for name, value in fields.items():
            column = _column(name, "filter")
            query._conditions += (_equals(column, value),)
            query._all_states = query._all_states or column == "state"
        return query

    def exclude(self, **fields: Any) -> TokenQuery:
        """Tokens whose fields do not match (same fields as :meth:`filter`)."""
        query = self._copy()
        for name, value in fields.items():
            query._conditions += (_differs(_column(name, "exclude"), value),)
        return query

    def including_dead(self) -> TokenQuery:
        """Also see tokens whose grant is dead (operator view)."""
        query = self._copy()
        query._all_states = True
        return query

    def require_scopes(self, scopes: str | Iterable[str]) -> TokenQuery:
        """Tokens holding at least every one of ``scopes``.

        :raises ScopeError: a malformed scope.
        """
        query = self._copy()
        query._scopes = tuple(sorted({*self._scopes, *normalize_scopes(scopes)}))
        return query

    def require_scopes_exact(self, scopes: str | Iterable[str]) -> TokenQuery:
        """Tokens holding exactly ``scopes``, no more and no fewer.

        :raises ScopeError: a malformed scope.
        """
        query = self._copy()
        query._scopes = normalize_scopes(scopes)
        query._exact = True
        return query

    def equivalent_to(self, token: Token) -> TokenQuery:
        """Other tokens of the same character, scopes and user (or no user)."""
        query = self.filter(character_id=token.character_id).exclude(id=token.id)
        query = query.require_scopes_exact(token.scopes)
        query._conditions += (
            ("(t.user_id IS NULL OR t.user_id = %s)", (token.user_id,)),
        )
        return query

    def get_expired(self) -> TokenQuery:
        """Tokens whose access token has expired."""
        query = self._copy()
        cutoff = self._store.clock.now() + dt.timedelta(seconds=EXPIRY_MARGIN_S)
        query._conditions += (("t.access_expires <= %s", (cutoff,)),)
        return query

    def require_valid(self) -> TokenQuery:
        """Only usable tokens: expired ones are refreshed when read, dead ones left out.

        Reading raises :class:`ConfigurationError` when a refresh is needed
        and no SSO application is configured, instead of leaving every
        expired token out without a word.
        """
        query = self._copy()
        query._require_valid = True
        return query

    def order_by(self, *fields: str) -> TokenQuery:
        """Order by these fields; a leading ``-`` sorts descending."""
        query = self._copy()
        order = []
        for field in fields:
            name = field.lstrip("-")
            if name not in _ORDERABLE:
                raise ValueError(
                    f"cannot order tokens by {name!r}; choose from {sorted(_ORDERABLE)}"
                )
            direction = " DESC" if field.startswith("-") else ""
            order.append(f"t.{_ORDERABLE[name]}{direction}")
        query._order = (*order, "t.id")
        return query

    # -- reading -------------------------------------------------------------

    def __iter__(self) -> Iterator[Token]:
        return iter(self._results())

    def __len__(self) -> int:
        return len(self._results())

    def __bool__(self) -> bool:
        return self.exists()

    def __getitem__(self, index: int | slice) -> Any:
        return self._results()[index]

    def first(self) -> Token | None:
        """The first token in order, or ``None``."""
        if self._cache is not None:
            return self._cache[0] if self._cache else None
        tokens = self._fetch(limit=1)
        return tokens[0] if tokens else None

    def get(self, **fields: Any) -> Token:
        """The one token matching (and ``fields``, if given).

        :raises TokenLookupError: none or several match.
        """
        tokens = (self.filter(**fields) if fields else self)._fetch(limit=2)
        if len(tokens) != 1:
            found = "no token matches" if not tokens else "more than one token matches"
            raise TokenLookupError(f"{found} {self!r}")
        return tokens[0]

    def count(self) -> int:
        """How many tokens match."""
        if self._require_valid or self._cache is not None:
            return len(self._results())
        sql, params = self._sql("SELECT count(*) FROM esi_token t", ordered=False)
        with self._store.pool.connection() as conn:
            row = conn.execute(sql, params).fetchone()
        return int(row[0]) if row else 0

    def exists(self) -> bool:
        """Whether any token matches."""
        return self.first() is not None

    def delete(self) -> int:
        """Delete the matching tokens; the number deleted."""
        sql, params = self._sql("DELETE FROM esi_token t", ordered=False)
        with self._store.pool.connection() as conn, conn.transaction():
            rows = conn.execute(
                f"{sql} RETURNING t.id, t.character_id", params
            ).fetchall()
            conn.execute(
                "DELETE FROM esi_token_refresh_journal WHERE token_id = ANY(%s)",
                ([r[0] for r in rows],),
            )
        for token_id, character_id in rows:
            log.info(
                "deleted token %r of character %r",
                token_id,
                character_id,
                extra={"token_id": token_id, "character_id": character_id},
            )
        self._cache = None
        return len(rows)

    def bulk_refresh(self) -> TokenQuery:
        """Refresh every matching token now; a query of the ones usable after.

        As in django-esi: the refreshed ones (here or, meanwhile, by another
        holder) and the unexpired ones without a refresh token; not the ones
        whose grant died or whose refresh did not complete.
        """
        tokens = self._fetch()
        refreshable = [t for t in tokens if t.refresh_token is not None]
        usable = {t.id for t in self._store.refresh_many(refreshable)}
        usable |= {t.id for t in tokens if t.refresh_token is None and not t.expired}
        return self.filter(id__in=sorted(usable))

    # -- internals -----------------------------------------------------------

    def _copy(self) -> TokenQuery:
        query = TokenQuery(self._store)
        query._conditions = self._conditions
        query._scopes, query._exact = self._scopes, self._exact
        query._all_states = self._all_states
        query._require_valid = self._require_valid
        query._order = self._order
        return query

    def _results(self) -> list[Token]:
        if self._cache is None:
            self._cache = self._fetch()
        return self._cache

    def _fetch(self, limit: int | None = None) -> list[Token]:
        # With require_valid the limit applies after refreshing, in Python.
        sql, params = self._sql(
            SELECT_TOKENS, ordered=True, limit=None if self._require_valid else limit
        )
        with self._store.pool.connection() as conn:
            rows = conn.execute(sql, params).fetchall()
        tokens = [token_from_row(self._store, row) for row in rows]
        if self._require_valid:
            tokens = self._usable(tokens, limit)
        return tokens

    def _usable(self, tokens: list[Token], limit: int | None) -> list[Token]:
        usable: list[Token] = []
        for token in tokens:
            if limit is not None and len(usable) >= limit:
                break
            try:
                token.valid_access_token()
            except ConfigurationError:
                raise  # the settings' fault, the same for every token
            except (TokenError, SSOError) as exc:
                log.debug("token %r left out: %s", token.id, type(exc).__name__)
                continue
            usable.append(token)
        return usable

    def _sql(
        self, head: str, *, ordered: bool, limit: int | None = None
    ) -> tuple[str, list[Any]]:
        where, params = self._where()
        sql = f"{head} WHERE {where}"
        if ordered:
            sql += " ORDER BY " + ", ".join(self._order)
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return sql, params

    def _where(self) -> tuple[str, list[Any]]:
        parts: list[str] = [] if self._all_states else ["t.state = %s"]
        params: list[Any] = [] if self._all_states else [VALID]
        for sql, values in (*self._conditions, *self._scope_conditions()):
            parts.append(sql)
            params.extend(values)
        return " AND ".join(parts) or "TRUE", params

    def _scope_conditions(self) -> list[_Condition]:
        """One grouped pass over esi_token_scope, however many scopes.

        A scope name nobody holds has no id, so the count cannot reach n and
        the query matches nothing, as it should.
        """
        conditions: list[_Condition] = []
        if self._scopes:
            count = len(self._scopes)
            conditions.append((_HOLDS_SCOPES, (list(self._scopes), count)))
        if self._exact:
            conditions.append((_SCOPE_COUNT_IS, (len(self._scopes),)))
        return conditions


def _column(name: str, method: str) -> str:
    field = name.removesuffix("__in")
    if field not in _FIELDS:
        raise TypeError(
            f"{method}() got an unknown token field {name!r}; "
            f"known fields: {', '.join(sorted(_FIELDS))}"
        )
    return _FIELDS[field]


def _equals(column: str, value: Any) -> _Condition:
    if value is None:
        return (f"t.{column} IS NULL", ())
    if isinstance(value, (list, tuple, set, frozenset)):
        return (f"t.{column} = ANY(%s)", (list(value),))
    return (f"t.{column} = %s", (value,))


def _differs(column: str, value: Any) -> _Condition:
    """The negation of :func:`_equals`, where NULL differs from any value."""
    if value is None:
        return (f"t.{column} IS NOT NULL", ())
    if isinstance(value, (list, tuple, set, frozenset)):
        return (f"NOT COALESCE(t.{column} = ANY(%s), FALSE)", (list(value),))
    return (f"t.{column} IS DISTINCT FROM %s", (value,))
