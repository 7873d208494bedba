"""The ``rnnlab`` command line: a thin layer that parses arguments and calls importable functions.

Each package registers its own subcommands (``add_commands(subparsers)``), so this file only
assembles them: ``rnnlab.data.commands`` (data), ``rnnlab.train.commands`` (train, evaluate,
predict) and ``rnnlab.report.commands`` (compare, report).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from rnnlab import __version__

#: Modules that provide ``add_commands(subparsers)``; each subcommand sets ``func(args) -> int``.
COMMAND_MODULES = ("rnnlab.data.commands", "rnnlab.train.commands", "rnnlab.report.commands")


class CLIError(Exception):
    """A user error: printed as ``rnnlab: error: <message>`` with exit status 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnnlab",
        description="Build, verify, train and compare recurrent networks (RNN, LSTM, GRU) on text classification.",
    )
    parser.add_argument("--version", action="version", version=f"rnnlab {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:  # a package whose commands are not written yet
            if err.name != name:
                raise
            continue
        module.add_commands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CLIError as err:
        print(f"rnnlab: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rnnlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
