"""Experiment configuration: one flat dataclass of defaults, TOML presets, ``key=value`` overrides.

Resolution order (later wins): the defaults below, the preset (a packaged
``rnnlab/presets/NAME.toml``, read through importlib.resources, or any TOML file), the
``--config FILE``, then each ``--set key=value``. Every value is type-checked and validated;
the resolved config is written into the run directory as ``config.toml``.

A preset file holds flat Config keys, or is a *suite*: a top-level ``experiments = [...]``
list of preset names plus an optional ``[set]`` table of overrides shared by all of them
(``load_suite``; ``rnnlab compare`` runs suites, ``rnnlab train`` runs one experiment).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from rnnlab.errors import ConfigError, RnnlabDeprecationWarning

#: The recurrent layers' nonlinearity names (``rnnlab.nn.options.ACTIVATIONS``; kept here so
#: that reading a config does not import torch; a test checks that the two agree).
ACTIVATION_NAMES = ("sigmoid", "hard_sigmoid", "tanh", "hard_tanh", "relu")

#: The rnnlab.nn cell options (issue 13) and their defaults (all off).
LAYER_OPTIONS: dict[str, Any] = {
    "layer_norm": False,
    "recurrent_dropout": 0.0,
    "zoneout": 0.0,
    "weight_drop": 0.0,
    "peephole": False,
    "gate_activation": "sigmoid",
    "activation": "tanh",
}

#: Allowed values of the enumerated fields.
CHOICES: dict[str, tuple[str, ...]] = {
    "cell": ("rnn", "lstm", "gru"),
    "encoder": ("rnnlab", "reference", "torch"),
    "nonlinearity": ("tanh", "relu"),
    "gate_activation": ACTIVATION_NAMES,
    "activation": ACTIVATION_NAMES,
    "pooling": ("last", "mean", "max", "meanmax"),
    "loss": ("cross_entropy", "nll"),
    "optimizer": ("adam", "adamw", "sgd"),
    "lr_schedule": ("none", "cosine", "linear", "step"),
    "truncate": ("head", "tail", "head_tail"),
    "val_split": ("group", "random"),
}


#: The share of your own data held out for testing when no separate test file is given.
DEFAULT_TEST_FRACTION = 0.2


@dataclass
class Config:
    """Every setting of one experiment (see the field table in docs/ARCHITECTURE.md).

    The defaults reproduce the original experiment: a one-layer LSTM (embedding 64,
    hidden 64) over the last 200 tokens of each review, the last real step pooled, Linear-ReLU-Linear,
    cross-entropy, Adam lr 1e-3, batch 64, 5 epochs.
    """

    name: str = "experiment"
    cell: str = "lstm"
    encoder: str = "rnnlab"
    embedding_dim: int = 64
    hidden_size: int = 64
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    embedding_dropout: float = 0.0
    bigram_buckets: int = 0
    head_dropout: float = 0.0
    word_dropout: float = 0.0
    nonlinearity: str = "tanh"
    layer_norm: bool = False
    recurrent_dropout: float = 0.0
    zoneout: float = 0.0
    weight_drop: float = 0.0
    peephole: bool = False
    gate_activation: str = "sigmoid"
    activation: str = "tanh"
    pooling: str = "last"
    wide_ngrams: int = 0
    wide_min_count: int = 1
    wide_alpha: float = 1.0
    wide_init: float = 0.0
    wide_dropout: float = 0.0
    wide_lr: float = 0.0
    wide_weight_decay: float = 0.0
    deep_loss_weight: float = 0.0
    loss: str = "cross_entropy"
    optimizer: str = "adam"
    lr: float = 0.001
    weight_decay: float = 0.0
    grad_clip: float = 0.0
    lr_schedule: str = "none"
    warmup_steps: int = 0
    epochs: int = 5
    batch_size: int = 64
    eval_batch_size: int = 256
    seed: int = 0
    device: str = "auto"
    num_threads: int = 0
    max_words: int = 20000
    min_freq: int = 1
    max_len: int = 200
    truncate: str = "tail"
    bucket: bool = True
    val_fraction: float = 0.0
    val_split: str = "group"
    early_stopping: int = 0
    test_every_epoch: bool = True
    keep_epoch_checkpoints: bool = False
    text_column: str = "text"
    label_column: str = "label"
    group_column: str = ""
    test_fraction: float = DEFAULT_TEST_FRACTION
    test_data: str = ""
    data: str = ""

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def impl(self) -> str:
        """Deprecated name of :attr:`encoder`."""
        warnings.warn(_renamed_message("impl", "Config.impl"), RnnlabDeprecationWarning, stacklevel=2)
        return self.encoder

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, source: str = "config") -> Config:
        """Strict construction: unknown keys and wrong types raise ConfigError naming ``source``."""
        return cls(**_checked(values, source))

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **_checked(changes, "replace()"))

    def to_toml(self) -> str:
        """The config as a flat TOML document (all fields, in table order)."""
        return "".join(f"{k} = {_toml_value(v)}\n" for k, v in self.to_dict().items())


def _init_with_old_keys(init: Any) -> Any:
    """``Config(impl=...)`` still works: a renamed key (``RENAMED_KEYS``) is passed on under its new name."""

    def __init__(self: Config, *args: Any, **kwargs: Any) -> None:
        for old in set(kwargs) & set(RENAMED_KEYS):
            if RENAMED_KEYS[old] in kwargs:
                raise ConfigError(f"Config(): {old!r} and {RENAMED_KEYS[old]!r} are the same key; keep only the second")
            warnings.warn(_renamed_message(old, "Config()"), RnnlabDeprecationWarning, stacklevel=2)
            kwargs[RENAMED_KEYS[old]] = kwargs.pop(old)
        init(self, *args, **kwargs)

    __init__.__doc__ = init.__doc__
    return __init__


Config.__init__ = _init_with_old_keys(Config.__init__)  # type: ignore[method-assign]

_BUILTINS = {"str": str, "int": int, "float": float, "bool": bool}
#: Field name -> its Python type (annotations are strings under ``from __future__ import annotations``).
FIELD_TYPES: dict[str, type] = {
    f.name: _BUILTINS[f.type] if isinstance(f.type, str) else f.type for f in fields(Config)
}
_TYPE_WORDS = {bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string"}


def _unknown_key(key: str, source: str) -> ConfigError:
    close = difflib.get_close_matches(key, FIELD_TYPES, n=3, cutoff=0.75)
    if close:
        return ConfigError(f"{source}: unknown config key {key!r} (did you mean {', '.join(map(repr, close))}?)")
    return ConfigError(f"{source}: unknown config key {key!r}; valid keys: {', '.join(FIELD_TYPES)}")


#: Old config keys that are still read (with a RnnlabDeprecationWarning) -> their new names.
RENAMED_KEYS = {"impl": "encoder"}


def _renamed_message(old: str, source: str) -> str:
    new = RENAMED_KEYS[old]
    return (
        f"{source}: config key {old!r} is deprecated, it is now {new!r} (same values: "
        f"{', '.join(CHOICES[new])}); {old!r} still works for now"
    )


def _new_key(key: str, source: str) -> str:
    """``key``, or its new name when it is a renamed key (with a deprecation warning naming ``source``)."""
    if key not in RENAMED_KEYS:
        return key
    warnings.warn(_renamed_message(key, source), RnnlabDeprecationWarning, stacklevel=4)
    return RENAMED_KEYS[key]


def _checked(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Type-check already-typed values (from TOML or Python): an int is accepted for a float."""
    out: dict[str, Any] = {}
    both = [f"{old!r} and {new!r}" for old, new in RENAMED_KEYS.items() if old in values and new in values]
    if both:
        raise ConfigError(f"{source}: {both[0]} are the same key (the first is its old name); keep only the second")
    for key, value in values.items():
        key = _new_key(key, source)
        if key not in FIELD_TYPES:
            raise _unknown_key(key, source)
        want = FIELD_TYPES[key]
        ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise ConfigError(f"{source}: {key!r} expects {_TYPE_WORDS[want]}, got {type(value).__name__} {value!r}")
        out[key] = value
    return out


def parse_value(key: str, text: str, source: str = "--set") -> Any:
    """Parse the string of a ``key=value`` override into the field's type."""
    key = RENAMED_KEYS.get(key, key)
    if key not in FIELD_TYPES:
        raise _unknown_key(key, source)
    want = FIELD_TYPES[key]
    raw = text.strip()
    try:
        if want is bool:
            lowered = raw.lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if want is int:
            return int(raw, 10)
        if want is float:
            value = float(raw)
            return value
    except ValueError:
        raise ConfigError(f"{source} {key}={text}: {key!r} expects {_TYPE_WORDS[want]}, got {text!r}") from None
    return text


def parse_overrides(overrides: Iterable[str] | Mapping[str, Any]) -> dict[str, Any]:
    """``["lr=5e-3", "cell=gru"]`` (or a mapping of typed or string values) -> typed dict."""
    if isinstance(overrides, Mapping):
        items = list(overrides.items())
    else:
        items = []
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"--set expects key=value, got {item!r}")
            items.append((key.strip(), value))
    out: dict[str, Any] = {}
    for key, value in items:
        typed = RENAMED_KEYS.get(key, key)
        if isinstance(value, str) and (typed not in FIELD_TYPES or FIELD_TYPES[typed] is not str):
            value = parse_value(key, value)
        out.update(_checked({key: value}, "--set"))
    return out


def validate(config: Config) -> None:
    """Raise ConfigError for an out-of-range or unknown value (types are checked on input)."""
    for key, choices in CHOICES.items():
        value = getattr(config, key)
        if value not in choices:
            close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{key!r} must be one of {', '.join(choices)}; got {value!r}{hint}")
    positive = (
        "embedding_dim",
        "hidden_size",
        "num_layers",
        "epochs",
        "batch_size",
        "eval_batch_size",
        "min_freq",
        "max_len",
    )
    for key in positive:
        if getattr(config, key) < 1:
            raise ConfigError(f"{key!r} must be >= 1, got {getattr(config, key)}")
    for key in ("num_threads", "warmup_steps", "early_stopping", "seed", "bigram_buckets"):
        if getattr(config, key) < 0:
            raise ConfigError(f"{key!r} must be >= 0, got {getattr(config, key)}")
    if config.max_words < 2:
        raise ConfigError(f"'max_words' must be >= 2 (<unk> and at least one word), got {config.max_words}")
    for key in ("dropout", "embedding_dropout", "head_dropout", "word_dropout", "val_fraction"):
        value = getattr(config, key)
        if not (0.0 <= value < 1.0):
            raise ConfigError(f"{key!r} must be in [0, 1), got {value}")
    _validate_layer_options(config)
    _validate_wide(config)
    if not (math.isfinite(config.lr) and config.lr > 0):
        raise ConfigError(f"'lr' must be a finite number > 0, got {config.lr}")
    for key in ("weight_decay", "grad_clip"):
        value = getattr(config, key)
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{key!r} must be a finite number >= 0, got {value}")
    if config.early_stopping and config.val_fraction == 0:
        raise ConfigError(
            "'early_stopping' watches validation accuracy: it needs val_fraction > 0 "
            f"(got early_stopping={config.early_stopping}, val_fraction=0)"
        )
    if not config.test_every_epoch and config.val_fraction == 0:
        raise ConfigError(
            "test_every_epoch=false evaluates the test split once, on the checkpoint with the best "
            "validation accuracy: it needs val_fraction > 0 (got val_fraction=0)"
        )
    if config.device != "auto":
        import torch

        try:
            torch.device(config.device)
        except (RuntimeError, ValueError):
            raise ConfigError(
                f"'device' must be 'auto' or a torch device such as cpu, cuda, cuda:1, mps; got {config.device!r}"
            ) from None
    if not config.name.strip():
        raise ConfigError("'name' must not be empty")
    _validate_dataset(config)


#: The wide part's keys (a linear model over NB-weighted n-grams, added to the logits; off at wide_ngrams = 0).
WIDE_KEYS = (
    "wide_ngrams",
    "wide_min_count",
    "wide_alpha",
    "wide_init",
    "wide_dropout",
    "wide_lr",
    "wide_weight_decay",
    "deep_loss_weight",
)


def _validate_wide(config: Config) -> None:
    if not 0 <= config.wide_ngrams <= 3:
        raise ConfigError(
            f"'wide_ngrams' must be 0 (no wide part) or 1..3 (the largest n-gram), got {config.wide_ngrams}"
        )
    if config.wide_min_count < 1:
        raise ConfigError(f"'wide_min_count' must be >= 1, got {config.wide_min_count}")
    if not (math.isfinite(config.wide_alpha) and config.wide_alpha > 0):
        raise ConfigError(f"'wide_alpha' must be a finite number > 0, got {config.wide_alpha}")
    if not 0.0 <= config.wide_dropout < 1.0:
        raise ConfigError(f"'wide_dropout' must be in [0, 1), got {config.wide_dropout}")
    for key in ("wide_lr", "wide_weight_decay", "deep_loss_weight"):
        value = getattr(config, key)
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{key!r} must be a finite number >= 0, got {value}")
    if not math.isfinite(config.wide_init):
        raise ConfigError(f"'wide_init' must be a finite number, got {config.wide_init}")
    if config.wide_ngrams == 0:
        default = Config.__dataclass_fields__
        changed = [k for k in WIDE_KEYS[1:] if getattr(config, k) != default[k].default]
        if changed:
            raise ConfigError(
                f"{', '.join(changed)} set without a wide part (wide_ngrams = 0): set wide_ngrams = 1..3 or remove them"
            )


def _validate_dataset(config: Config) -> None:
    """The own-data keys: column names, test fraction, separate test file."""
    for key in ("text_column", "label_column"):
        if not getattr(config, key).strip():
            raise ConfigError(f"{key!r} must name a column of your data, got {getattr(config, key)!r}")
    if config.text_column == config.label_column:
        raise ConfigError(
            f"'text_column' and 'label_column' must be different columns, both are {config.text_column!r}"
        )
    if config.group_column in (config.text_column, config.label_column):
        raise ConfigError(
            f"'group_column' must differ from the text and label columns ({config.text_column!r}, "
            f"{config.label_column!r}), got {config.group_column!r}"
        )
    if not (0.0 < config.test_fraction < 1.0):
        raise ConfigError(f"'test_fraction' must be in (0, 1), got {config.test_fraction}")
    if config.test_data and config.test_fraction != DEFAULT_TEST_FRACTION:
        raise ConfigError(
            f"'test_fraction' ({config.test_fraction}) splits a test set off the data, but test_data "
            f"({config.test_data!r}) is the test set: set one of them, not both"
        )


def _validate_layer_options(config: Config) -> None:
    """The rnnlab.nn cell options: probabilities in [0, 1), and only where the cell and the
    implementation have them (torch.nn has none; peepholes are LSTM's; the RNN has no gates)."""
    for key in ("recurrent_dropout", "zoneout", "weight_drop"):
        value = getattr(config, key)
        if not (0.0 <= value < 1.0):
            raise ConfigError(f"{key!r} must be in [0, 1), got {value}")
    on = [key for key, default in LAYER_OPTIONS.items() if getattr(config, key) != default]
    if on and config.encoder == "torch":
        raise ConfigError(
            f'{", ".join(map(repr, on))}: torch.nn\'s layers have no such option; use encoder = "rnnlab" '
            "(or \"reference\") for the rnnlab.nn layers, got encoder = 'torch'"
        )
    if config.peephole and config.cell != "lstm":
        raise ConfigError(
            f"'peephole' is only for cell = \"lstm\" (the gates look at the cell state), got cell = {config.cell!r}"
        )
    gates = [key for key in ("gate_activation", "activation") if key in on]
    if gates and config.cell == "rnn":
        raise ConfigError(
            f'{", ".join(map(repr, gates))}: only for cell = "lstm" or "gru" (the rnn cell has no gates; '
            "its nonlinearity is the 'nonlinearity' key), got cell = 'rnn'"
        )


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    return json.dumps(value, ensure_ascii=False)  # a TOML basic string


# ----------------------------------------------------------------------------- presets

#: The presets shipped inside the package (``rnnlab/presets/*.toml``), read through
#: importlib.resources so that an installed wheel finds them wherever it is run from.
PRESETS_DIR: Traversable = resources.files("rnnlab") / "presets"

#: Top-level keys of a preset file that are not Config fields.
_PRESET_META = ("description",)


@dataclass(frozen=True)
class PresetInfo:
    """One packaged preset: ``name`` (``seed/lstm``), a one-line ``description``, and the
    ``experiments`` of a suite (empty for a single experiment)."""

    name: str
    description: str
    experiments: tuple[str, ...] = ()


def _preset_files(folder: Traversable, prefix: str = "") -> Iterator[tuple[str, Traversable]]:
    for entry in folder.iterdir():
        if entry.is_dir():
            yield from _preset_files(entry, f"{prefix}{entry.name}/")
        elif entry.name.endswith(".toml"):
            yield prefix + entry.name.removesuffix(".toml"), entry


def available_presets() -> list[str]:
    """The names of the packaged presets, sorted (``best``, ``default``, ``seed``, ``seed/gru``, ...)."""
    if not PRESETS_DIR.is_dir():
        return []
    return sorted(name for name, _ in _preset_files(PRESETS_DIR))


def list_presets() -> list[PresetInfo]:
    """Every packaged preset with its ``description`` key (empty when it has none), sorted by name."""
    out = []
    for name in available_presets():
        values = read_toml(resolve_preset(name))
        experiments = values.get("experiments") if _is_suite(values) else ()
        out.append(PresetInfo(name, _description(values, name), tuple(experiments or ())))
    return out


def resolve_preset(name: str | os.PathLike) -> Path | Traversable:
    """A TOML file path, else a packaged preset name (``seed/lstm`` -> ``rnnlab/presets/seed/lstm.toml``)."""
    text = os.fspath(name)
    as_path = Path(text).expanduser()
    if as_path.is_file():
        return as_path
    stem = text.removesuffix(".toml")
    names = available_presets()
    if stem in names:
        *folders, last = stem.split("/")
        found = PRESETS_DIR
        for part in folders:
            found = found / part
        return found / f"{last}.toml"
    close = difflib.get_close_matches(stem, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    listing = ", ".join(names) if names else "(none)"
    raise ConfigError(
        f"unknown preset {text!r}: neither a packaged preset nor a TOML file ({as_path} not found){hint} "
        f"Available presets (`rnnlab presets` describes them): {listing}"
    )


def read_toml(path: Path | Traversable) -> dict[str, Any]:
    """Parse a TOML file, a path or a packaged resource; ConfigError naming it when missing or invalid."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None


def _description(values: Mapping[str, Any], source: object) -> str:
    text = values.get("description", "")
    if not isinstance(text, str):
        raise ConfigError(f"{source}: 'description' expects a string, got {type(text).__name__} {text!r}")
    return text


def _is_suite(values: Mapping[str, Any]) -> bool:
    return "experiments" in values


def _stem(path: Path | Traversable) -> str:
    return path.name.removesuffix(".toml")


def _experiment_values(path: Path | Traversable, *, default_name: str | None) -> dict[str, Any]:
    values = read_toml(path)
    if _is_suite(values):
        exps = values.get("experiments")
        shown = ", ".join(map(str, exps)) if isinstance(exps, list) else repr(exps)
        raise ConfigError(
            f"{path} is a suite of experiments ({shown}), not one experiment: train one of them "
            f"(--preset NAME with NAME one of those), or run the whole suite with `rnnlab compare --preset ...`"
        )
    _description(values, path)
    values = {k: v for k, v in values.items() if k not in _PRESET_META}
    for key, value in values.items():
        if isinstance(value, dict):
            raise ConfigError(
                f"{path}: tables are not allowed in an experiment preset, found [{key}]; "
                "use flat keys such as hidden_size = 128"
            )
    checked = _checked(values, str(path))
    if default_name and "name" not in checked:
        checked["name"] = default_name
    return checked


def load_config(
    preset: str | os.PathLike | None = None,
    config_file: str | os.PathLike | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
) -> Config:
    """Defaults <- preset <- config file <- overrides; returns one validated Config.

    ``preset`` is a packaged preset name (``available_presets()``) or a TOML file. A preset that
    names no ``name`` is named after its file (``seed/lstm`` -> ``lstm``). A suite preset is an
    error here (see ``load_suite``).
    """
    values: dict[str, Any] = {}
    if preset is not None:
        path = resolve_preset(preset)
        values.update(_experiment_values(path, default_name=_stem(path)))
    if config_file is not None:
        path = Path(config_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        values.update(_experiment_values(path, default_name=path.stem if preset is None else None))
    values.update(parse_overrides(overrides))
    return Config(**values)


def load_suite(name: str | os.PathLike, overrides: Iterable[str] | Mapping[str, Any] = ()) -> list[Config]:
    """The experiments of a suite preset, each: its preset <- the suite's ``[set]`` <- overrides.

    A preset that is a single experiment gives a one-element list. Experiment names resolve
    against the packaged presets first, then (for a suite file of your own) against the
    suite file's folder.
    """
    path = resolve_preset(name)
    values = read_toml(path)
    if not _is_suite(values):
        return [Config(**{**_experiment_values(path, default_name=_stem(path)), **parse_overrides(overrides)})]
    _description(values, path)
    unknown = set(values) - {"experiments", "set", *_PRESET_META}
    if unknown:
        raise ConfigError(
            f"{path}: a suite holds only 'experiments', 'description' and a [set] table; found {sorted(unknown)}"
        )
    experiments = values["experiments"]
    if not isinstance(experiments, list) or not experiments or not all(isinstance(e, str) for e in experiments):
        raise ConfigError(f"{path}: 'experiments' must be a non-empty list of preset names, got {experiments!r}")
    shared = values.get("set", {})
    if not isinstance(shared, dict):
        raise ConfigError(f"{path}: 'set' must be a table of config keys, got {shared!r}")
    shared = _checked(shared, f"{path} [set]")
    extra = parse_overrides(overrides)
    configs = []
    for exp in experiments:
        exp_path = _suite_member(path, exp)
        exp_values = _experiment_values(exp_path, default_name=_stem(exp_path))
        configs.append(Config(**{**exp_values, **shared, **extra}))
    names = [c.name for c in configs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{path}: experiment names must be unique, repeated: {', '.join(dupes)}")
    return configs


def _suite_member(suite: Path | Traversable, exp: str) -> Path | Traversable:
    """A suite's experiment: a packaged preset or TOML path, else ``<suite folder>/<exp>.toml``."""
    try:
        return resolve_preset(exp)
    except ConfigError:
        local = suite.parent / f"{exp}.toml" if isinstance(suite, Path) else None
        if local is None or not local.is_file():
            raise ConfigError(
                f"{suite}: experiment {exp!r} not found (neither a packaged preset nor "
                f"{local if local is not None else exp + '.toml'} beside the suite)"
            ) from None
        return local


def config_from_toml(path: Path) -> Config:
    """Read a run directory's resolved ``config.toml`` (strict)."""
    return Config.from_dict(read_toml(path), source=str(path))
