"""The presets ship inside the package (rnnlab/presets, read through importlib.resources)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

import rnnlab
from rnnlab.cli import main
from rnnlab.train import Config, ConfigError, load_config, load_suite
from rnnlab.train import config as config_module
from rnnlab.train.config import PRESETS_DIR, available_presets, list_presets, resolve_preset

SEED = (
    "seed/lstm",
    "seed/rnn",
    "seed/gru",
    "seed/handwritten_lstm",
    "seed/handwritten_lstm_128",
    "seed/handwritten_lstm_nll",
    "seed/handwritten_lstm_b128_lr5e-3",
)
VARIANTS = tuple(
    f"variants/{cell}_{option}"
    for cell in ("lstm", "gru")
    for option in (
        "plain",
        "layer_norm",
        "recurrent_dropout",
        "zoneout",
        "weight_drop",
        "gate_activation",
        "activation",
    )
) + ("variants/lstm_peephole",)
INSIGHTS = tuple(f"insights/{cell}_{pooling}" for cell in ("rnn", "lstm", "gru") for pooling in ("last", "mean"))
ALL = sorted(["best", "default", "insights", "seed", "variants", *SEED, *VARIANTS, *INSIGHTS])


def test_presets_live_inside_the_package():
    assert Path(str(PRESETS_DIR)) == Path(rnnlab.__file__).parent / "presets"
    assert available_presets() == ALL
    assert resolve_preset("seed/lstm") == PRESETS_DIR / "seed" / "lstm.toml"
    assert resolve_preset("seed/lstm.toml") == PRESETS_DIR / "seed" / "lstm.toml"


def test_presets_are_found_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert [c.name for c in load_suite("seed")][:3] == ["lstm", "rnn", "gru"]
    assert load_config(preset="best").val_fraction == 0.1


def test_every_preset_has_a_one_line_description():
    presets = {p.name: p for p in list_presets()}
    assert list(presets) == available_presets()
    for p in presets.values():
        assert p.description and "\n" not in p.description and len(p.description) <= 130, p.name
    assert presets["seed"].experiments == SEED
    assert presets["insights"].experiments == INSIGHTS
    assert all(load_config(preset=name).keep_epoch_checkpoints for name in INSIGHTS)
    assert presets["best"].experiments == () and presets["seed/lstm"].description.startswith("torch.nn.LSTM")
    # the description is metadata, not a config key
    assert load_config(preset="default") == Config()


def test_presets_read_through_a_non_filesystem_resource(tmp_path, monkeypatch):
    """A package imported from a zip gives Traversables that are not paths: presets still load."""
    archive = tmp_path / "presets.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in available_presets():
            zf.writestr(f"presets/{name}.toml", resolve_preset(name).read_text(encoding="utf-8"))
    monkeypatch.setattr(config_module, "PRESETS_DIR", zipfile.Path(archive) / "presets")
    assert available_presets() == ALL
    assert [c.name for c in load_suite("seed")] == [n.split("/")[1] for n in SEED]
    assert load_config(preset="seed/gru").cell == "gru"
    assert next(p for p in list_presets() if p.name == "seed").experiments == SEED


def test_description_must_be_a_string(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('description = 3\ncell = "gru"\n')
    with pytest.raises(ConfigError, match=r"mine.toml: 'description' expects a string, got int 3"):
        load_config(config_file=f)
    f.write_text('description = "my GRU"\ncell = "gru"\n')
    assert load_config(config_file=f).cell == "gru"
    (tmp_path / "suite.toml").write_text('description = "two"\nexperiments = ["seed/gru", "mine"]\nsize = 1\n')
    with pytest.raises(ConfigError, match=r"a suite holds only 'experiments', 'description' and a \[set\] table; "):
        load_suite(tmp_path / "suite.toml")


def test_presets_command(capsys):
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == available_presets()
    seed = next(line for line in lines if line.startswith("seed "))
    assert seed.split(None, 1)[1].startswith("(suite of 7) the seven experiments of the original assignment")
    assert main(["presets", "seed/lstm"]) == 0
    assert capsys.readouterr().out == (PRESETS_DIR / "seed" / "lstm.toml").read_text(encoding="utf-8")
    assert main(["presets", "seed/lstmm"]) == 2
    assert "rnnlab: error: unknown preset 'seed/lstmm': neither a packaged preset nor a TOML file" in (
        capsys.readouterr().err
    )


def test_an_installation_without_presets_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(config_module, "PRESETS_DIR", tmp_path / "presets")
    assert available_presets() == []
    assert main(["presets"]) == 2
    assert f"no presets found in {tmp_path / 'presets'}: this rnnlab installation is incomplete" in (
        capsys.readouterr().err
    )
    assert main(["train", "--preset", "seed/lstm", "--out", str(tmp_path / "x")]) == 2
    assert "Available presets (`rnnlab presets` describes them): (none)" in capsys.readouterr().err
