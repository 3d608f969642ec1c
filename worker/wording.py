"""Words of messages: a count with its noun, singular or plural."""

from __future__ import annotations


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``"1 scope"``, ``"2 scopes"``; ``plural`` for nouns not taking an s."""
    if count == 1:
        return f"{count} {noun}"
    return f"{count} {plural or noun + 's'}"
