"""Configs, the training loop, evaluation and prediction (run directories: ``rnnlab.rundir``).

from rnnlab.train import Config, load_config, train_and_evaluate, evaluate_run, predict
"""

from rnnlab.errors import ConfigError, RunDirError, TrainingError
from rnnlab.rundir import FORMAT, RunDir
from rnnlab.train.callbacks import Callback
from rnnlab.train.config import Config, load_config, load_suite, parse_overrides, resolve_preset
from rnnlab.train.evaluate import LoadedRun, evaluate_run, load_run, predict
from rnnlab.train.runner import read_metrics, select_device, train_and_evaluate

__all__ = [
    "FORMAT",
    "Callback",
    "Config",
    "ConfigError",
    "LoadedRun",
    "RunDir",
    "RunDirError",
    "TrainingError",
    "evaluate_run",
    "load_config",
    "load_run",
    "load_suite",
    "parse_overrides",
    "predict",
    "read_metrics",
    "resolve_preset",
    "select_device",
    "train_and_evaluate",
]
