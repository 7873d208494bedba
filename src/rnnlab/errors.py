"""The errors a user can cause, under one base class: ``RnnlabError``.

``rnnlab.cli.main`` catches ``RnnlabError`` in one place and prints ``rnnlab: error: <message>``
(exit status 2) without a traceback; anything else is a bug and keeps its traceback. Each message
says what was expected and what was found, and names the file, key or row concerned.

    RnnlabError
      ConfigError           a bad preset, config file, key or value (also a ValueError)
      DataError             bad input data: missing or malformed file, empty split... (also a ValueError)
      RunDirError           a run directory that cannot be used as asked, or cannot be written
        DirectoryInUseError   another process holds the directory's lock (its pid is in the message)
      TrainingError         training stopped, e.g. on a non-finite loss; the last good checkpoint is kept
      DistributedError      a torchrun launch that cannot work (bad environment, failed rendezvous)
      ReportError           bad input to ``compare`` / ``report`` (no runs, a foreign output folder...)
      UsageError            a command-line mistake that argparse cannot see (``--only`` with no name...)
      ExplainError          a run or text that ``explain`` / ``study`` cannot explain (also a ValueError)

The classes keep the built-in bases they had (``ValueError``, ``RuntimeError``), so existing
``except ValueError`` code still catches them. ``RnnlabDeprecationWarning`` marks a deprecated
spelling (such as the config key ``impl``, now ``encoder``); it is a ``FutureWarning``, shown to
users by default, and the CLI prints it as one line: ``rnnlab: warning: <message>``.
"""

from __future__ import annotations


class RnnlabError(Exception):
    """A user error: the CLI prints its message (one line) and exits with status 2."""


class ConfigError(RnnlabError, ValueError):
    """A bad preset, config file, key or value; the message says what was expected and what was found."""


class DataError(RnnlabError, ValueError):
    """Bad input data (missing or malformed file, empty split, ...): the message names the file or row."""


class RunDirError(RnnlabError, RuntimeError):
    """A run directory that cannot be used as asked (exists, incompatible, mismatched) or written."""


class DirectoryInUseError(RunDirError):
    """Another process holds the lock of a run directory or comparison folder.

    ``path``: the directory; ``pid``: the holder's process id (None when it could not be read).
    """

    def __init__(self, message: str, *, path: object = None, pid: int | None = None) -> None:
        super().__init__(message)
        self.path, self.pid = path, pid


class TrainingError(RnnlabError, RuntimeError):
    """Training stopped (e.g. a non-finite loss); the last good checkpoint is kept."""


class DistributedError(RnnlabError, RuntimeError):
    """A distributed (torchrun) launch that cannot work: bad environment or a failed rendezvous."""


class ReportError(RnnlabError, ValueError):
    """Bad input to ``report``/``compare`` (a missing path, no runs, a foreign output folder...)."""


class UsageError(RnnlabError):
    """A command-line mistake found after parsing (argparse reports the others itself)."""


class ExplainError(RnnlabError, ValueError):
    """Input that ``rnnlab explain`` / ``study`` cannot explain (a baseline, an unfinished run, an empty
    text...): says what was expected and what was found."""


class RnnlabDeprecationWarning(FutureWarning):
    """A deprecated spelling that still works (the message names its replacement)."""
