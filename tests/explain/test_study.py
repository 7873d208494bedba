"""rnnlab study gradients: connectivity and saturation against direct computations, over training, errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from rnnlab.cli import main
from rnnlab.explain import ExplainError, open_run, run_gradient_study
from rnnlab.explain.study import connectivity, gate_saturation, memory_paths, sample_reviews
from rnnlab.models import RNNClassifier
from rnnlab.nn import trace
from rnnlab.rundir import RunDir


def _batch(n: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(3)
    lengths = torch.tensor([9, 2, 5, 9, 1, 7, 4][:n])
    ids = torch.randint(2, 30, (n, 9))
    for k, m in enumerate(lengths):
        ids[k, m:] = 0
    return ids, lengths


@pytest.mark.parametrize(
    ("cell", "kwargs"), [("rnn", {}), ("lstm", {"pooling": "mean"}), ("gru", {"bidirectional": True})]
)
def test_connectivity_equals_one_review_at_a_time(cell, kwargs):
    torch.manual_seed(0)
    model = RNNClassifier(30, 2, cell=cell, embedding_dim=4, hidden_size=5, **kwargs).eval()
    ids, lengths = _batch()
    got = connectivity(model, ids, lengths)
    assert got["count"] == [sum(int(n) > d for n in lengths) for d in range(9)]
    sums = torch.zeros(9, dtype=torch.float64)
    rows = torch.full((len(lengths), 9), float("nan"), dtype=torch.float64)
    for k, n in enumerate(lengths.tolist()):
        x = model.embedding(ids[k : k + 1, :n]).detach().requires_grad_(True)  # (1, n, E)
        handle = model.embedding.register_forward_hook(lambda _m, _i, _o: x.transpose(0, 1))
        try:
            z = model(ids[k : k + 1, :n], lengths[k : k + 1])[0]
        finally:
            handle.remove()
        (g,) = torch.autograd.grad(z[z.argmax()], x)
        sums[:n] += g[0].norm(dim=-1).flip(0).double()  # distance d = n - 1 - t
        rows[k, :n] = g[0].norm(dim=-1).flip(0).double()
    expected = sums / torch.tensor(got["count"], dtype=torch.float64)
    torch.testing.assert_close(torch.tensor(got["mean_norm"], dtype=torch.float64), expected, rtol=1e-5, atol=1e-9)
    median = [float(r[~r.isnan()].median()) for r in rows.t()]  # torch's median: the lower middle value
    assert got["median_norm"] == pytest.approx(median, rel=1e-5)


def test_gate_saturation_counts_real_steps_only():
    torch.manual_seed(0)
    model = RNNClassifier(30, 2, cell="lstm", embedding_dim=4, hidden_size=5).eval()
    model.lstm.bias_ih_l0.data[5:10] = 6.0  # forget gate always > 0.9
    model.lstm.bias_ih_l0.data[0:5] = -6.0  # input gate always < 0.1
    ids, lengths = _batch()
    got = gate_saturation(model, ids, lengths)
    assert list(got) == ["layer 0"] and list(got["layer 0"]) == ["i", "f", "o"]
    assert got["layer 0"]["f"]["high"] == [1.0] * 5 and got["layer 0"]["i"]["low"] == [1.0] * 5
    low = torch.zeros(5, dtype=torch.float64)
    vals = torch.zeros(5, dtype=torch.float64)
    for k, n in enumerate(lengths.tolist()):
        with torch.no_grad(), trace(model.lstm) as t:
            model(ids[k : k + 1, :n], lengths[k : k + 1])
        o = t.get(0).gates["o"][:, 0].double()  # (n, H)
        low += (o < 0.1).sum(0)
        vals += o.sum(0)
    total = int(lengths.sum())
    assert got["layer 0"]["o"]["low"] == pytest.approx((low / total).tolist())
    assert got["layer 0"]["o"]["mean"] == pytest.approx((vals / total).tolist(), rel=1e-6)
    rnn = RNNClassifier(30, 2, cell="rnn", embedding_dim=4, hidden_size=5).eval()
    assert gate_saturation(rnn, ids, lengths) == {"layer 0": {}}


def test_memory_paths_are_the_products_of_the_gates():
    torch.manual_seed(0)
    model = RNNClassifier(30, 2, cell="gru", embedding_dim=4, hidden_size=5).eval()
    ids, lengths = _batch()
    got = memory_paths(model, ids, lengths)
    assert got["gate"] == "z" and got["median_max_gain"][0] == 1.0
    gains = {d: [] for d in range(1, 9)}
    for k, n in enumerate(lengths.tolist()):
        with torch.no_grad(), trace(model.gru) as t:
            model(ids[k : k + 1, :n], lengths[k : k + 1])
        z = t.get(0).gates["z"][:, 0].double()  # (n, H)
        for d in range(1, n):
            gains[d].append(float(z[n - d :].prod(0).max()))
    for d, values in gains.items():
        assert got["median_max_gain"][d] == pytest.approx(float(torch.tensor(values).median()), rel=1e-6)
    assert memory_paths(RNNClassifier(30, 2, cell="rnn").eval(), ids, lengths) is None
    lstm = RNNClassifier(30, 2, cell="lstm", embedding_dim=4, hidden_size=5).eval()
    assert memory_paths(lstm, ids, lengths)["gate"] == "f"


def test_sample_reviews_is_seeded_and_ordered():
    texts = [f"t{i}" for i in range(50)]
    a = sample_reviews(texts, 10)
    assert a == sample_reviews(texts, 10) and len(set(a)) == 10
    assert a == sorted(a, key=texts.index)
    assert sample_reviews(texts, 80) == texts


def test_study_of_runs_and_over_training(make_run, tmp_path, capsys):
    runs = [make_run(cell="rnn"), make_run(cell="lstm", pooling="mean"), make_run(cell="gru", encoder="torch")]
    with_epochs = tmp_path / "gru_epochs"
    shutil.copytree(make_run(cell="gru", encoder="torch", keep_epoch_checkpoints=True), with_epochs)
    ckpts = with_epochs / "checkpoints"
    shutil.copy(ckpts / "epoch_2.pt", ckpts / "epoch_10.pt")  # sorted by number, not by name
    (ckpts / "epoch_x.pt").write_text("ignored")
    assert RunDir(with_epochs).epoch_checkpoints() == [0, 1, 2, 10]
    capsys.readouterr()
    out = tmp_path / "study"
    assert (
        main(
            [
                "study",
                "gradients",
                *map(str, runs[:2]),
                str(with_epochs),
                "--out",
                str(out),
                "--examples",
                "20",
                "--over-training",
            ]
        )
        == 2
    )
    assert "has no per-epoch checkpoints" in capsys.readouterr().err and not out.exists()
    assert main(["study", "gradients", str(with_epochs), "--out", str(out), "--examples", "20", "--over-training"]) == 0
    study = json.loads((out / "study.json").read_text())
    epochs = study["runs"][0]["epochs"]
    assert [(e["epoch"], e["checkpoint"]) for e in epochs] == [(k, f"epoch_{k}.pt") for k in (0, 1, 2, 10)]
    # epoch 2's weights are last.pt's: the same numbers as the final measurement; training changed them
    assert epochs[2]["connectivity"] == study["runs"][0]["final"]["connectivity"] == epochs[3]["connectivity"]
    assert epochs[0]["connectivity"] != epochs[2]["connectivity"]
    assert sorted(p.name for p in out.iterdir()) == [
        "connectivity.png",
        "connectivity_over_training.png",
        "memory.png",
        "saturation.png",
        "saturation_over_training.png",
        "study.json",
    ]
    result = run_gradient_study(runs, tmp_path / "s2", examples=20)
    assert [r["cell"] for r in result["runs"]] == ["rnn", "lstm", "gru"]
    assert all(r["examples"] == 20 and sum(r["final"]["connectivity"]["count"][:1]) == 20 for r in result["runs"])
    assert list(result["runs"][1]["final"]["saturation"]["layer 0"]) == ["i", "f", "o"]
    assert list(result["runs"][2]["final"]["saturation"]["layer 0"]) == ["r", "z"]


def test_study_refuses_what_it_cannot_study(make_run, tmp_path):
    good = make_run(cell="lstm")
    with pytest.raises(ExplainError, match="no run directory given"):
        run_gradient_study([], tmp_path / "x")
    with pytest.raises(ExplainError, match="is not a run directory"):
        run_gradient_study([good, tmp_path / "missing"], tmp_path / "x")
    assert not (tmp_path / "x").exists()
    assert open_run(good).run.epoch == 2
