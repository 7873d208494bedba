"""One error base class, caught in one place: every user error is an RnnlabError, and the CLI prints it as one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

import rnnlab.errors as errors
from rnnlab.cli import main


def test_every_user_error_is_an_rnnlab_error_and_keeps_its_builtin_base():
    from rnnlab.data import DataError
    from rnnlab.report import ReportError
    from rnnlab.train import ConfigError, RunDirError, TrainingError
    from rnnlab.train.distributed import DistributedError

    assert (DataError, ReportError, ConfigError, RunDirError, TrainingError, DistributedError) == (
        errors.DataError,
        errors.ReportError,
        errors.ConfigError,
        errors.RunDirError,
        errors.TrainingError,
        errors.DistributedError,
    )  # the old import paths name the same classes
    for cls in (DataError, ReportError, ConfigError):
        assert issubclass(cls, errors.RnnlabError) and issubclass(cls, ValueError)
    for cls in (RunDirError, TrainingError, DistributedError):
        assert issubclass(cls, errors.RnnlabError) and issubclass(cls, RuntimeError)
    assert issubclass(errors.DirectoryInUseError, RunDirError) and issubclass(errors.UsageError, errors.RnnlabError)


@pytest.mark.parametrize(
    "error",
    [errors.ConfigError, errors.DataError, errors.RunDirError, errors.TrainingError, errors.ReportError],
)
def test_the_cli_catches_them_in_one_place(monkeypatch, capsys, error):
    import rnnlab.train.commands as train_commands

    def fail(args):
        raise error("what was expected\nand what was found")

    monkeypatch.setattr(train_commands, "_evaluate", fail)
    assert main(["evaluate", "RUN"]) == 2
    assert capsys.readouterr().err == "rnnlab: error: what was expected and what was found\n"


def test_a_bug_is_not_a_user_error_and_keeps_its_traceback(monkeypatch):
    import rnnlab.train.commands as train_commands

    def bug(args):
        raise KeyError("oops")

    monkeypatch.setattr(train_commands, "_evaluate", bug)
    with pytest.raises(KeyError):
        main(["evaluate", "RUN"])


def test_reading_reports_imports_neither_torch_nor_the_training_code():
    code = (
        "import sys, rnnlab.report, rnnlab.rundir; "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('rnnlab.train', 'rnnlab.experiments'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
