"""The ``rnnlab`` command line: a thin layer that parses arguments and calls importable functions.

Each package registers its own subcommands (``add_commands(subparsers)``), so this file only
assembles them: ``rnnlab.data.commands`` (data), ``rnnlab.train.commands`` (train, evaluate,
predict), ``rnnlab.report.commands`` (compare, report) and ``rnnlab.explain.commands`` (explain,
study).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from rnnlab import __version__

#: Modules that provide ``add_commands(subparsers)``; each subcommand sets ``func(args) -> int``.
COMMAND_MODULES = (
    "rnnlab.data.commands",
    "rnnlab.train.commands",
    "rnnlab.report.commands",
    "rnnlab.explain.commands",
)


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


def _exit_status(code: object) -> int:
    """``SystemExit.code`` as a process exit status (None -> 0, a message -> 1, printed)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def entry() -> int:
    """The process entry point (the ``rnnlab`` script, ``python -m rnnlab``): ``main()``.

    In a ``torchrun`` worker (``WORLD_SIZE`` > 1) the process then ends with ``os._exit`` after
    flushing its output, as ``multiprocessing`` workers do: once the run directory is written
    and the process group destroyed, the normal interpreter shutdown of a torch 2.13 gloo worker
    aborted now and then in C++ static destruction ("terminate called without an active
    exception", SIGABRT: 1 in 22 runs on a loaded machine; 0 in 58 with os._exit), failing a
    finished job.
    """
    if os.environ.get("WORLD_SIZE", "1").strip() in ("", "1"):
        return main()
    try:
        code = main()
    except SystemExit as err:
        code = _exit_status(err.code)
    except BaseException:  # noqa: BLE001 - report it as the interpreter would, then exit hard
        traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    raise SystemExit(entry())
