"""``python -m worker``: the same as the ``esi-worker`` command."""

from .cli import main

main()
