"""Every ``$ref`` of a spec resolved once at load, so none fails mid-call.

bravado-core resolves references lazily: a ``$ref`` to nowhere in a
response schema builds fine and fails when the first answer is decoded,
with an error naming neither the spec nor the pointer. Walking the
document once at load turns that into a :class:`~worker.errors.SpecError`
naming both.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from ..errors import SpecError

MAX_CHAIN = 64


def check_refs(document: Any, source: str) -> None:
    """Raise unless every ``$ref`` in ``document`` points inside it.

    :param source: names the spec in the error.
    :raises SpecError: a reference to nowhere, one outside the document
        (we never fetch other documents), or a ``$ref`` chain that loops.
    """
    for ref in sorted(_refs(document)):
        problem = _problem(document, ref)
        if problem is not None:
            raise SpecError(
                f"ESI spec from {source} is broken: $ref {ref!r} at "
                f"{_where(document, ref)} {problem}",
                source=source,
            )


def resolve(document: Any, ref: str) -> Any:
    """The target of a local ``$ref`` (``#/a/b``).

    :raises LookupError: it points nowhere or outside the document.
    """
    if not ref.startswith("#"):
        raise LookupError("it points outside the document")
    target = document
    for part in ref[1:].lstrip("/").split("/") if ref not in ("#", "#/") else ():
        key = unquote(part).replace("~1", "/").replace("~0", "~")
        if isinstance(target, dict) and key in target:
            target = target[key]
        elif isinstance(target, list) and key.isdigit() and int(key) < len(target):
            target = target[int(key)]
        else:
            raise LookupError(f"it has no {key!r}")
    return target


def _refs(document: Any) -> set[str]:
    """Every distinct ``$ref`` value (one pass, no paths: the spec is big)."""
    found: set[str] = set()
    stack = [document]
    while stack:
        node = stack.pop()
        if type(node) is dict:
            ref = node.get("$ref")
            if type(ref) is str:
                found.add(ref)
            stack.extend(node.values())
        elif type(node) is list:
            stack.extend(node)
    return found


def _problem(document: Any, ref: str) -> str | None:
    """What is wrong with following ``ref`` to its end, or None."""
    seen = {ref}
    for _ in range(MAX_CHAIN):
        try:
            target = resolve(document, ref)
        except LookupError as exc:
            return f"points nowhere ({exc})"
        following = target.get("$ref") if isinstance(target, dict) else None
        if not isinstance(following, str):
            return None
        if following in seen:
            break
        ref = following
        seen.add(ref)
    return f"is a loop of references ({' -> '.join(sorted(seen))})"


def _where(document: Any, ref: str) -> str:
    """The JSON pointer of the first place ``ref`` is used (for the error)."""
    stack: list[tuple[Any, str]] = [(document, "")]
    while stack:
        node, where = stack.pop()
        if isinstance(node, dict):
            if node.get("$ref") == ref:
                return where or "/"
            stack.extend((v, f"{where}/{_escape(str(k))}") for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, f"{where}/{i}") for i, v in enumerate(node))
    return "?"


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")
