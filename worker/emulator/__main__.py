"""``python -m worker.emulator``: run the emulator in the foreground."""

from __future__ import annotations

import argparse
import logging

from .server import serve


def main(argv: list[str] | None = None) -> None:
    """Parse ``--host``/``--port`` and serve until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m worker.emulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    serve(args.host, args.port)


if __name__ == "__main__":
    main()
