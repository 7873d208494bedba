"""Config: defaults, presets, suites, --set parsing and every bad input's message."""

from __future__ import annotations

import pytest

from rnnlab.train import Config, ConfigError, load_config, load_suite, parse_overrides, resolve_preset
from rnnlab.train.config import PRESETS_DIR, config_from_toml


def test_defaults_are_the_original_experiment():
    c = Config()
    assert (c.cell, c.encoder, c.embedding_dim, c.hidden_size, c.num_layers, c.pooling, c.loss) == (
        "lstm",
        "rnnlab",
        64,
        64,
        1,
        "last",
        "cross_entropy",
    )
    assert (c.optimizer, c.lr, c.batch_size, c.epochs, c.max_words, c.max_len, c.seed) == (
        "adam",
        0.001,
        64,
        5,
        20000,
        200,
        0,
    )


def test_overrides_are_typed():
    c = load_config(overrides=["lr=5e-3", "batch_size=128", "bidirectional=true", "cell=gru", "dropout=0"])
    assert (c.lr, c.batch_size, c.bidirectional, c.cell, c.dropout) == (0.005, 128, True, "gru", 0.0)
    assert isinstance(c.dropout, float)
    assert parse_overrides({"lr": 1, "bucket": "no"}) == {"lr": 1.0, "bucket": False}


def test_toml_round_trip(tmp_path):
    c = Config(name='odd "name"', lr=3e-4, bidirectional=True, data="/x/y.csv")
    (tmp_path / "c.toml").write_text(c.to_toml())
    assert config_from_toml(tmp_path / "c.toml") == c


def test_preset_and_config_file(tmp_path):
    assert resolve_preset("seed/lstm") == PRESETS_DIR / "seed" / "lstm.toml"
    c = load_config(preset="seed/handwritten_lstm_b128_lr5e-3", overrides=["epochs=1"])
    assert (c.name, c.encoder, c.batch_size, c.lr, c.epochs) == ("handwritten_lstm_b128_lr5e-3", "rnnlab", 128, 5e-3, 1)
    f = tmp_path / "mine.toml"
    f.write_text('cell = "gru"\nhidden_size = 32\n')
    c = load_config(config_file=f, overrides=["hidden_size=48"])
    assert (c.name, c.cell, c.hidden_size) == ("mine", "gru", 48)
    assert load_config(preset=f).hidden_size == 32  # a preset may also be a file path


def test_suite():
    configs = load_suite("seed", overrides=["epochs=1"])
    assert [c.name for c in configs] == [
        "lstm",
        "rnn",
        "gru",
        "handwritten_lstm",
        "handwritten_lstm_128",
        "handwritten_lstm_nll",
        "handwritten_lstm_b128_lr5e-3",
    ]
    assert all(c.epochs == 1 for c in configs) and configs[4].hidden_size == 128 and configs[5].loss == "nll"
    with pytest.raises(
        ConfigError,
        match=r"seed.toml is a suite of experiments \(seed/lstm, seed/rnn, .*\), not one "
        r"experiment: .*`rnnlab compare --preset",
    ):
        load_config(preset="seed")


def test_suite_with_shared_set_table(tmp_path):
    (tmp_path / "a.toml").write_text('cell = "gru"\n')
    (tmp_path / "b.toml").write_text('cell = "rnn"\nlr = 0.01\n')
    (tmp_path / "suite.toml").write_text('experiments = ["a", "b"]\n[set]\nlr = 0.002\n')
    configs = load_suite(tmp_path / "suite.toml")
    assert [(c.name, c.cell, c.lr) for c in configs] == [("a", "gru", 0.002), ("b", "rnn", 0.002)]
    (tmp_path / "bad.toml").write_text('experiments = ["a", "zz"]\n')
    with pytest.raises(ConfigError, match="experiment 'zz' not found"):
        load_suite(tmp_path / "bad.toml")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(preset="seed/lstmm"), r"unknown preset 'seed/lstmm'.*did you mean seed/lstm"),
        (dict(overrides=["hiden_size=3"]), r"unknown config key 'hiden_size' \(did you mean 'hidden_size'\?\)"),
        (dict(overrides=["colour=red"]), r"unknown config key 'colour'; valid keys: name, cell, encoder, .*, data$"),
        (dict(overrides=["epochs=five"]), r"--set epochs=five: 'epochs' expects an integer, got 'five'"),
        (dict(overrides=["epochs=2.5"]), r"'epochs' expects an integer, got '2.5'"),
        (dict(overrides=["lr=fast"]), r"'lr' expects a number, got 'fast'"),
        (dict(overrides=["bidirectional=maybe"]), r"'bidirectional' expects a boolean \(true/false\), got 'maybe'"),
        (dict(overrides=["lr"]), r"--set expects key=value, got 'lr'"),
        (dict(overrides=["cell=lstn"]), r"'cell' must be one of rnn, lstm, gru; got 'lstn' \(did you mean 'lstm'\?\)"),
        (dict(overrides=["pooling=sum"]), r"'pooling' must be one of last, mean, max, meanmax; got 'sum'"),
        (dict(overrides=["lr=-1"]), r"'lr' must be a finite number > 0, got -1.0"),
        (dict(overrides=["dropout=1.5"]), r"'dropout' must be in \[0, 1\), got 1.5"),
        (dict(overrides=["hidden_size=0"]), r"'hidden_size' must be >= 1, got 0"),
        (
            dict(overrides=["early_stopping=2"]),
            r"'early_stopping' watches validation accuracy: it needs val_fraction > 0",
        ),
        (dict(overrides=["device=tpu9"]), r"'device' must be 'auto' or a torch device"),
    ],
)
def test_bad_input_messages(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        load_config(**kwargs)


def test_bad_files(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('hidden_size = "big"\n')
    with pytest.raises(ConfigError, match=r"c.toml: 'hidden_size' expects an integer, got str 'big'"):
        load_config(config_file=f)
    f.write_text("epochs = true\n")
    with pytest.raises(ConfigError, match=r"'epochs' expects an integer, got bool True"):
        load_config(config_file=f)
    f.write_text("lerning_rate = 0.1\n")
    with pytest.raises(ConfigError, match=r"c.toml: unknown config key 'lerning_rate'"):
        load_config(config_file=f)
    f.write_text("epochs = \n")
    with pytest.raises(ConfigError, match=r"c.toml: not valid TOML"):
        load_config(config_file=f)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(config_file=tmp_path / "missing.toml")


def test_default_preset_lists_every_field_at_its_default():
    assert load_config(preset="default") == Config()
    text = (PRESETS_DIR / "default.toml").read_text()
    assert all(f"\n{key} = " in text for key in Config().to_dict())


# ------------------------------------------------------------------ impl -> encoder


def test_the_old_key_impl_still_works_with_one_deprecation_message(tmp_path):
    from rnnlab.errors import RnnlabDeprecationWarning

    preset = tmp_path / "old.toml"
    preset.write_text('cell = "gru"\nimpl = "torch"\n')
    with pytest.warns(
        RnnlabDeprecationWarning, match=r"old.toml: config key 'impl' is deprecated, it is now 'encoder'"
    ):
        assert load_config(config_file=preset).encoder == "torch"
    with pytest.warns(RnnlabDeprecationWarning, match=r"--set: config key 'impl' is deprecated"):
        assert load_config(overrides=["impl=reference"]).encoder == "reference"
    with pytest.warns(RnnlabDeprecationWarning, match=r"Config\(\): config key 'impl'"):
        config = Config(impl="torch")
    assert config.encoder == "torch" and "impl" not in config.to_dict() and '\nencoder = "torch"\n' in config.to_toml()
    with pytest.warns(RnnlabDeprecationWarning, match=r"Config.impl: config key 'impl' is deprecated"):
        assert config.impl == "torch"
    with pytest.warns(RnnlabDeprecationWarning):
        assert config.replace(impl="rnnlab").encoder == "rnnlab"
    preset.write_text('impl = "torch"\nencoder = "rnnlab"\n')
    with pytest.raises(ConfigError, match=r"old.toml: 'impl' and 'encoder' are the same key"):
        load_config(config_file=preset)
    with pytest.raises(ConfigError, match=r"'encoder' must be one of rnnlab, reference, torch; got 'fast'"):
        with pytest.warns(RnnlabDeprecationWarning):
            load_config(overrides=["impl=fast"])  # the layers' impl values are not the config's


def test_the_cli_prints_the_deprecation_as_one_line(tmp_path, capsys):
    from rnnlab.cli import main

    code = main(["train", "--set", "impl=torch", "--set", "hiden_size=3", "--out", str(tmp_path / "x")])
    assert code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        "rnnlab: warning: --set: config key 'impl' is deprecated, it is now 'encoder' (same values: rnnlab, "
        "reference, torch); 'impl' still works for now"
    )
    assert err[1].startswith("rnnlab: error: --set: unknown config key 'hiden_size'") and len(err) == 2


def test_layer_options_are_config_keys():
    """The rnnlab.nn cell options as config keys of the same names (issue 13): typed --set,
    defaults off, the same defaults and names as rnnlab.nn (the config keeps its own copy)."""
    from rnnlab.nn.options import ACTIVATIONS, OPTION_DEFAULTS
    from rnnlab.train.config import ACTIVATION_NAMES, LAYER_OPTIONS

    assert LAYER_OPTIONS == OPTION_DEFAULTS and ACTIVATION_NAMES == tuple(ACTIVATIONS)
    assert {k: getattr(Config(), k) for k in LAYER_OPTIONS} == LAYER_OPTIONS
    c = load_config(
        overrides=["layer_norm=true", "weight_drop=0.3", "zoneout=0.1", "recurrent_dropout=0.25", "peephole=yes"]
    )
    assert (c.layer_norm, c.weight_drop, c.zoneout, c.recurrent_dropout, c.peephole) == (True, 0.3, 0.1, 0.25, True)
    c = load_config(overrides=["cell=gru", "gate_activation=hard_sigmoid", "activation=hard_tanh"])
    assert (c.gate_activation, c.activation) == ("hard_sigmoid", "hard_tanh")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["weight_drop=1.0"], r"'weight_drop' must be in \[0, 1\), got 1.0"),
        (["zoneout=-0.1"], r"'zoneout' must be in \[0, 1\), got -0.1"),
        (["recurrent_dropout=2"], r"'recurrent_dropout' must be in \[0, 1\), got 2.0"),
        (["layer_norm=maybe"], r"'layer_norm' expects a boolean \(true/false\), got 'maybe'"),
        (
            ["gate_activation=gelu"],
            r"'gate_activation' must be one of sigmoid, hard_sigmoid, tanh, hard_tanh, relu; got 'gelu'",
        ),
        (["activation=hardtanh"], r"'activation' must be one of .*; got 'hardtanh' \(did you mean 'hard_tanh'\?\)"),
        (
            ["cell=gru", "peephole=true"],
            r"'peephole' is only for cell = \"lstm\" \(the gates look at the cell state\), got cell = 'gru'",
        ),
        (
            ["cell=rnn", "activation=relu"],
            r"'activation': only for cell = \"lstm\" or \"gru\" \(the rnn cell has no gates; its nonlinearity is the 'nonlinearity' key\), got cell = 'rnn'",
        ),
        (
            ["encoder=torch", "layer_norm=true", "weight_drop=0.3"],
            r"'layer_norm', 'weight_drop': torch.nn's layers have no such option; use encoder = \"rnnlab\"",
        ),
    ],
)
def test_layer_option_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=overrides)


def test_variants_suite():
    """`rnnlab compare --preset variants`: LSTM and GRU, each option alone on the seed setup
    (rnnlab layers, embedding and hidden 64, 5 epochs, mean pooling, unbucketed batches)."""
    configs = load_suite("variants")
    default = Config()
    base = dict(encoder="rnnlab", pooling="mean", bucket=False)
    changed = {}
    for c in configs:
        assert c == default.replace(
            name=c.name, cell=c.cell, **base, **{k: getattr(c, k) for k in LAYER_OPTIONS_KEYS}
        ), c.name
        changed[c.name] = {k: getattr(c, k) for k in LAYER_OPTIONS_KEYS if getattr(c, k) != getattr(default, k)}
    assert [c.cell for c in configs].count("lstm") == 8 and [c.cell for c in configs].count("gru") == 7
    assert changed["lstm_plain"] == changed["gru_plain"] == {}
    for name, options in changed.items():
        assert len(options) == (0 if name.endswith("_plain") else 1), name  # each option alone
        assert name.endswith("_plain") or name.split("_", 1)[1] == next(iter(options)), name
    assert {k for o in changed.values() for k in o} == set(LAYER_OPTIONS_KEYS)


LAYER_OPTIONS_KEYS = (
    "layer_norm",
    "recurrent_dropout",
    "zoneout",
    "weight_drop",
    "peephole",
    "gate_activation",
    "activation",
)
