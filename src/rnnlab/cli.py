"""The ``rnnlab`` command line: a thin layer that parses arguments and calls importable functions.

Each package registers its own subcommands (``add_commands(subparsers)``), so this file only
assembles them: ``rnnlab.data.commands`` (data), ``rnnlab.train.commands`` (train, evaluate,
predict), ``rnnlab.experiments.commands`` (compare), ``rnnlab.report.commands`` (report) and
``rnnlab.explain.commands`` (explain, study). Imports go one way: this module imports the command
modules, which import ``rnnlab.errors``.

User errors are caught here, in one place: any :class:`rnnlab.errors.RnnlabError` is printed as
``rnnlab: error: <message>`` (one line, prefixed by ``[rank N]`` in a torchrun worker) with exit
status 2 and no traceback; a :class:`~rnnlab.errors.RnnlabDeprecationWarning` as
``rnnlab: warning: <message>``.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings
from typing import Any

from rnnlab import __version__
from rnnlab.data import commands as data_commands
from rnnlab.errors import RnnlabDeprecationWarning, RnnlabError, UsageError
from rnnlab.experiments import commands as experiment_commands
from rnnlab.explain import commands as explain_commands
from rnnlab.report import commands as report_commands
from rnnlab.train import commands as train_commands

#: Modules that provide ``add_commands(subparsers)``; each subcommand sets ``func(args) -> int``.
COMMAND_MODULES = (data_commands, train_commands, experiment_commands, report_commands, explain_commands)

#: Old name of :class:`rnnlab.errors.UsageError`.
CLIError = UsageError


class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser whose commands take their options anywhere on the line.

    A parser without subcommands (each ``rnnlab`` command) parses with argparse's
    ``parse_known_intermixed_args``, so ``rnnlab predict RUN_DIR --json "text"`` equals
    ``rnnlab predict --json RUN_DIR "text"`` (plain argparse stops filling ``TEXT...`` once an
    option follows the first positional). The command parsers inherit the class.
    """

    _has_commands = False
    _intermixing = False

    def add_subparsers(self, **kwargs: Any) -> Any:
        self._has_commands = True
        return super().add_subparsers(**kwargs)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if self._has_commands or self._intermixing:  # the intermixed parse calls this twice itself
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="rnnlab",
        description="Build, verify, train and compare recurrent networks (RNN, LSTM, GRU) on text classification.",
    )
    parser.add_argument("--version", action="version", version=f"rnnlab {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.add_commands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    with warnings.catch_warnings():
        warnings.simplefilter("default", RnnlabDeprecationWarning)
        shown = warnings.showwarning
        warnings.showwarning = _show_warning(shown)
        try:
            return int(args.func(args) or 0)
        except RnnlabError as err:
            print(f"rnnlab: error: {_ranked(_one_line(str(err)))}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("rnnlab: interrupted", file=sys.stderr)
            return 130
        finally:
            warnings.showwarning = shown


def _show_warning(default):  # noqa: ANN001, ANN202 - the signature of warnings.showwarning
    """``rnnlab: warning: <message>`` for rnnlab's deprecations; other warnings as Python shows them."""

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001, ANN202
        if issubclass(category, RnnlabDeprecationWarning):
            print(f"rnnlab: warning: {_one_line(str(message))}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    return show


def _one_line(message: str) -> str:
    return message.replace("\n", " ")


def _ranked(message: str) -> str:
    """Under torchrun, the rank in front of an error message (every rank reports the shared error)."""
    rank = os.environ.get("RANK")
    return f"[rank {rank}] {message}" if rank is not None and os.environ.get("WORLD_SIZE", "1") != "1" else message


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
