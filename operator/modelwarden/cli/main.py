"""Entry point of the ``modelwarden`` command."""

from __future__ import annotations

import argparse
import sys

from modelwarden import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelwarden", description="Governed ML model rollouts on Kubernetes.")
    parser.add_argument("--version", action="version", version=f"modelwarden {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
