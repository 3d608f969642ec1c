"""Token rows: the columns read with every token, loading one, linking scopes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .token import COLUMNS, Token

if TYPE_CHECKING:
    import psycopg

    from .store import TokenStore

# Scope names sort the same way in Python and in PostgreSQL only under "C".
SCOPES_OF_T = (
    "ARRAY(SELECT s.name FROM esi_token_scope ts JOIN esi_scope s "
    "ON s.id = ts.scope_id WHERE ts.token_id = t.id "
    'ORDER BY s.name COLLATE "C") AS scopes'
)
# Every column of ``esi_token t`` plus its scope names, in Token's order.
TOKEN_COLUMNS = ", ".join(f"t.{c}" for c in COLUMNS) + f", {SCOPES_OF_T}"


def token_from_row(store: TokenStore, row: Sequence[Any]) -> Token:
    """A Token from a row selected with :data:`TOKEN_COLUMNS`, secrets decrypted."""
    values = dict(zip((*COLUMNS, "scopes"), row, strict=True))
    for name in ("access_token", "refresh_token"):
        values[name] = store.cipher.decrypt(values[name])
    return Token(store, values)


def load_token(
    store: TokenStore,
    conn: psycopg.Connection[Any],
    token_id: int,
    *,
    lock: bool = False,
) -> Token | None:
    """The token with this id, or ``None``; ``lock`` takes its row lock."""
    suffix = " FOR UPDATE OF t" if lock else ""
    row = conn.execute(
        f"SELECT {TOKEN_COLUMNS} FROM esi_token t WHERE t.id = %s{suffix}",
        (token_id,),
    ).fetchone()
    return token_from_row(store, row) if row is not None else None


def link_scopes(
    conn: psycopg.Connection[Any], token_id: int, scopes: Iterable[str]
) -> None:
    """Link a token to scopes by name, creating scope rows as needed."""
    names = list(scopes)
    if not names:
        return
    conn.execute(
        "INSERT INTO esi_scope (name) SELECT unnest(%s::text[]) "
        "ON CONFLICT (name) DO NOTHING",
        (names,),
    )
    conn.execute(
        "INSERT INTO esi_token_scope (token_id, scope_id) SELECT %s, id "
        "FROM esi_scope WHERE name = ANY(%s::text[]) ON CONFLICT DO NOTHING",
        (token_id, names),
    )
