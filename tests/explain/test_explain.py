"""rnnlab explain on tiny trained runs of every cell and encoder: numbers, files, CLI, bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from rnnlab.cli import main
from rnnlab.data import Tokenizer, encode_texts
from rnnlab.explain import ExplainError, explain_texts, kept_positions, open_run, write_explanation
from rnnlab.nn import trace

TEXT = "a great film and a lovely story"
GATES = {"lstm": ["i", "f", "g", "o"], "gru": ["r", "z", "n"], "rnn": []}


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("encoder", ["rnnlab", "torch", "reference"])
def test_explain_every_cell_and_encoder(make_run, cell, encoder):
    run = open_run(make_run(cell=cell, encoder=encoder))
    result = explain_texts(run, [TEXT, "dull"])
    text = result["texts"][0]
    assert [t["token"] for t in text["tokens"]] == TEXT.split()
    assert text["tokens_read"] == 7 and text["tokens_not_read"] == 0
    # completeness within the reported delta, and the same prediction as the trained model
    assert text["attribution_sum"] - (text["output"] - text["baseline_output"]) == pytest.approx(
        text["delta"], abs=1e-5
    )
    with torch.no_grad():
        ids, lengths = encode_texts([TEXT], run.run.tokenizer, run.run.vocab, max_len=20, truncate="tail")
        probs = run.run.model(ids, lengths).softmax(-1)[0]
    assert text["label_id"] == int(probs.argmax()) and text["probability"] == pytest.approx(
        float(probs.max()), abs=1e-5
    )
    assert text["probabilities"]["pos"] + text["probabilities"]["neg"] == pytest.approx(1.0, abs=1e-5)
    # gates and norms per read token, from the traced cells
    (layer,) = text["layers"]
    assert list(layer["gates"]) == GATES[cell]
    for g in layer["gates"].values():
        assert len(g) == 7 and all(len(row) == 10 for row in g)
    assert len(layer["h_norm"]) == 7 and (layer["c_norm"] is None) == (cell != "lstm")
    if encoder == "rnnlab":
        assert result["parity_max_abs_diff"] is None  # explained with the run's own model
    else:
        assert run.model is not run.run.model and result["parity_max_abs_diff"] <= 1e-5


def test_traced_values_are_the_models_own(make_run):
    run = open_run(make_run(cell="lstm", bidirectional=True, num_layers=2, encoder="torch"))
    result = explain_texts(run, [TEXT])
    layers = result["texts"][0]["layers"]
    assert [(x["layer"], x["direction"]) for x in layers] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    ids, lengths = encode_texts([TEXT], run.run.tokenizer, run.run.vocab, max_len=20, truncate="tail")
    ids = ids[:, : int(lengths[0])]  # no padding: torch.nn's LSTM would run its reverse direction over it
    torch_lstm = run.run.model.lstm  # the torch.nn module the run was trained with
    with torch.no_grad():
        out, (h_n, c_n) = torch_lstm(run.run.model.embedding(ids.t()))
    # the last forward step's ||h|| and ||c|| of layer 1 are torch.nn's final states
    assert layers[2]["h_norm"][-1] == pytest.approx(float(h_n[2, 0].norm()), rel=1e-5)
    assert layers[2]["c_norm"][-1] == pytest.approx(float(c_n[2, 0].norm()), rel=1e-5)
    assert layers[3]["h_norm"][0] == pytest.approx(float(h_n[3, 0].norm()), rel=1e-5)


@pytest.mark.parametrize("truncate", ["head", "tail", "head_tail"])
def test_tokens_beyond_max_len_are_marked_not_read(make_run, truncate):
    run = open_run(make_run(cell="gru", truncate=truncate))
    words = [f"w{i}" for i in range(30)]
    words[3], words[27] = "great", "bad"
    text = explain_texts(run, [" ".join(words)])["texts"][0]
    read = [t["token"] for t in sorted((t for t in text["tokens"] if t["read"]), key=lambda t: t["position"])]
    kept = kept_positions(30, 20, truncate)
    assert read == [words[i] for i in kept] and text["tokens_not_read"] == 10
    assert all(t["attribution"] is None and t["position"] is None for t in text["tokens"] if not t["read"])
    unknown = [t["token"] for t in text["tokens"] if not t["known"]]
    assert unknown == [w for w in words if w.startswith("w")]
    assert kept_positions(30, 20, "head_tail") == list(range(5)) + list(range(15, 30))


def test_write_explanation_and_cli_json_agree(make_run, tmp_path, capsys):
    run_dir = make_run(cell="lstm")
    capsys.readouterr()  # the training's printout, when this test trained the run
    assert main(["explain", str(run_dir), TEXT, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert not (tmp_path / "explain").exists()
    out = tmp_path / "out"
    assert main(["explain", str(run_dir), TEXT, "--out", str(out)]) == 0
    assert "text 1: " in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "explain.html",
        "explain.json",
        "text1_attribution.png",
        "text1_layer0.png",
    ]
    assert json.loads((out / "explain.json").read_text()) == printed
    page = (out / "explain.html").read_text()
    assert page.count("data-pos=") == 7 and "http://" not in page and "https://" not in page
    files = write_explanation(explain_texts(open_run(run_dir), [TEXT]), tmp_path / "again")
    assert [f.name for f in files][:2] == ["explain.html", "explain.json"]


def _bad(args, tmp_path, capsys, match):
    out = tmp_path / "never"
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rnnlab: error: ") and match in err, err
    assert not out.exists()  # nothing written


def test_bad_input_is_a_clear_error_and_writes_nothing(make_run, tmp_path, capsys):
    good = make_run(cell="lstm")
    capsys.readouterr()
    _bad(["explain", str(tmp_path / "nope"), TEXT], tmp_path, capsys, "is not a run directory: no such folder")
    (tmp_path / "empty").mkdir()
    _bad(["explain", str(tmp_path / "empty"), TEXT], tmp_path, capsys, "is not a run directory: no run.json")
    _bad(["explain", str(good), TEXT, "  ... "], tmp_path, capsys, "text 2 ('  ... ') is empty: it has no words")
    _bad(["explain", str(good), "zebra quokka"], tmp_path, capsys, "text 1 ('zebra quokka') has no known word")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(good, unfinished)
    info = json.loads((unfinished / "run.json").read_text())
    (unfinished / "run.json").write_text(json.dumps({**info, "status": "running", "epochs": 5}))
    _bad(["explain", str(unfinished), TEXT], tmp_path, capsys, "is not a finished run: status 'running' with 2 of 5")
    baseline = tmp_path / "baseline"
    baseline.mkdir()
    (baseline / "run.json").write_text(
        json.dumps({"format": 1, "kind": "baseline", "status": "complete", "name": "nb"})
    )
    _bad(["explain", str(baseline), TEXT], tmp_path, capsys, "is a bag-of-words baseline (nb), not a recurrent run")
    file_out = tmp_path / "afile"
    file_out.write_text("x")
    assert main(["explain", str(good), TEXT, "--out", str(file_out)]) == 2
    assert "is a file; expected a folder" in capsys.readouterr().err and file_out.read_text() == "x"


def test_tokenizer_of_the_run_is_used(make_run):
    run = open_run(make_run(cell="rnn"))
    assert isinstance(run.run.tokenizer, Tokenizer)
    tokens = explain_texts(run, ["A GREAT Film!"])["texts"][0]["tokens"]
    assert [t["token"] for t in tokens] == run.run.tokenizer.tokenize("A GREAT Film!")
    with pytest.raises(ExplainError, match="no text given"):
        explain_texts(run, [])
    with trace(run.model.encoder):  # a trace left open elsewhere is refused, not silently mixed
        with pytest.raises(RuntimeError, match="already being traced"):
            explain_texts(run, [TEXT])
