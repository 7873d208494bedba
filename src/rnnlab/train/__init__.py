"""Configs, the training loop, run directories, evaluation and prediction.

from rnnlab.train import Config, load_config, train_and_evaluate, evaluate_run, predict
"""

from rnnlab.train.config import Config, ConfigError, load_config, load_suite, parse_overrides, resolve_preset
from rnnlab.train.evaluate import evaluate_run, load_run, predict
from rnnlab.train.runner import FORMAT, RunDirError, TrainingError, read_metrics, select_device, train_and_evaluate

__all__ = [
    "Config",
    "ConfigError",
    "FORMAT",
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
