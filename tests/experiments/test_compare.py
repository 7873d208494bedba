"""`rnnlab compare` over a two-experiment suite on tiny generated data: outputs, resume, bad input."""

from __future__ import annotations

import csv
import json
import shutil

import matplotlib.image as mpimg
import pytest
from experiments_helpers import tiny_dataset, tiny_texts, write_suite

from rnnlab.cli import main
from rnnlab.experiments import compare as compare_mod
from rnnlab.experiments.compare import MANIFEST, run_comparison
from rnnlab.experiments.eta import Eta
from rnnlab.report.build import write_report
from rnnlab.report.plots import PLOTS, plot_accuracy, plot_best_accuracy
from rnnlab.report.runs import ReportError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNLAB_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """One finished comparison: 2 experiments x 2 seeds + the baseline."""
    root = tmp_path_factory.mktemp("compare")
    suite = write_suite(root / "presets")
    result = run_comparison(suite, root / "out", seeds=2, data=tiny_dataset(), progress=False, cache_dir=root / "cache")
    return suite, root / "out", result


class CountingTrain:
    def __init__(self, monkeypatch, interrupt_at: int | None = None):
        self.real = compare_mod.train_and_evaluate
        self.calls: list[tuple[str, bool]] = []
        self.interrupt_at = interrupt_at
        monkeypatch.setattr(compare_mod, "train_and_evaluate", self)

    def __call__(self, config, run_dir, **kw):
        self.calls.append((f"{config.name}/{run_dir.name}", kw["resume"]))
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt
        return self.real(config, run_dir, **kw)


def test_compare_writes_runs_table_csv_and_plots(done, tmp_path):
    suite, out, result = done
    assert [p.relative_to(out).as_posix() for p in result.trained] == [
        "tiny_gru/seed0",
        "tiny_gru/seed1",
        "tiny_rnn/seed0",
        "tiny_rnn/seed1",
    ]
    seeds = [json.loads((p / "run.json").read_text())["seed"] for p in result.trained]
    assert seeds == [7, 8, 7, 8]  # config.seed + k
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["kind"] == "rnnlab-compare" and manifest["experiments"] == ["tiny_gru", "tiny_rnn"]

    rows = {r["experiment"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert list(rows) == ["tiny_gru", "tiny_rnn", "nbsvm_bigram"]
    for name in ("tiny_gru", "tiny_rnn"):
        finals = [
            json.loads((out / name / s / "metrics.jsonl").read_text().splitlines()[-1])["test_acc"]
            for s in ("seed0", "seed1")
        ]
        assert rows[name]["n_seeds"] == "2"
        assert float(rows[name]["final_test_acc_mean"]) == pytest.approx(sum(finals) / 2)
    # the sentiment words decide every label: the bag of words separates the classes
    assert float(rows["nbsvm_bigram"]["final_test_acc_mean"]) > 0.95
    md = (out / "results.md").read_text()
    assert "| `tiny_gru` | 2 |" in md and "| `nbsvm_bigram` | 1 |" in md
    assert f"- `rnnlab compare --preset {suite} --seeds 2`: started " in md and "logical cores" in md

    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert mpimg.imread(out / name).ndim == 3
    summaries = result.report.summaries
    assert [ln.get_label() for ln in plot_accuracy(summaries).axes[0].get_lines()] == [
        "tiny_gru (2 seeds)",
        "tiny_rnn (2 seeds)",
        "nbsvm_bigram (bag of words)",
    ]
    assert len(plot_best_accuracy(summaries).axes[0].patches) == 3
    # `rnnlab report` on the folder keeps the suite's order (tiny_rnn would sort after tiny_gru anyway:
    # reverse it in the manifest to see the order come from there)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    manifest["experiments"] = ["tiny_rnn", "tiny_gru"]
    (copy / MANIFEST).write_text(json.dumps(manifest))
    report = write_report([copy], tmp_path / "again")
    assert [s.name for s in report.summaries] == ["tiny_rnn", "tiny_gru", "nbsvm_bigram"]


def test_resume_skips_complete_runs(done, tmp_path, monkeypatch):
    suite, finished, _ = done
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/metrics.jsonl")}
    train = CountingTrain(monkeypatch)
    result = run_comparison(suite, out, seeds=2, data=tiny_dataset(), progress=False, cache_dir=tmp_path / "c")
    assert train.calls == [] and len(result.skipped) == 4
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/metrics.jsonl")} == mtimes
    # an interrupted run (status still "running") is resumed, and only it
    info = json.loads((out / "tiny_rnn/seed1/run.json").read_text())
    (out / "tiny_rnn/seed1/run.json").write_text(json.dumps({**info, "status": "running"}))
    run_comparison(suite, out, seeds=2, data=tiny_dataset(), progress=False, cache_dir=tmp_path / "c")
    assert train.calls == [("tiny_rnn/seed1", True)]
    assert json.loads((out / "tiny_rnn/seed1/run.json").read_text())["status"] == "complete"
    # a third seed only trains the new runs
    run_comparison(suite, out, seeds=3, data=tiny_dataset(), progress=False, cache_dir=tmp_path / "c", baseline=False)
    assert train.calls[1:] == [("tiny_gru/seed2", False), ("tiny_rnn/seed2", False)]
    assert "| `tiny_gru` | 3 |" in (out / "results.md").read_text()


def test_interrupted_comparison_continues(tmp_path, monkeypatch):
    suite = write_suite(tmp_path / "presets")
    out = tmp_path / "out"
    train = CountingTrain(monkeypatch, interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        run_comparison(suite, out, data=tiny_dataset(), progress=False, baseline=False, cache_dir=tmp_path / "c")
    assert not (out / "results.md").exists()
    train.interrupt_at = None
    result = run_comparison(suite, out, data=tiny_dataset(), progress=False, baseline=False, cache_dir=tmp_path / "c")
    assert train.calls == [("tiny_gru/seed0", False), ("tiny_rnn/seed0", False), ("tiny_rnn/seed0", False)]
    assert [p.name for p in result.skipped] == ["seed0"] and (out / "results.md").exists()


def test_bad_input(done, tmp_path):
    suite, finished, _ = done
    with pytest.raises(
        ReportError,
        match=r"unknown experiment\(s\) in --only: nope; the suite .* has: "
        "tiny_gru, tiny_rnn",
    ):
        run_comparison(suite, tmp_path / "a", only=["tiny_rnn", "nope"], data=tiny_dataset(), progress=False)
    assert not (tmp_path / "a").exists()

    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.txt").write_text("precious")
    with pytest.raises(ReportError, match="is not empty and is not an rnnlab comparison"):
        run_comparison(suite, foreign, data=tiny_dataset(), progress=False)
    assert [p.name for p in foreign.iterdir()] == ["chapter1.txt"]

    out = tmp_path / "out"
    shutil.copytree(finished, out)
    before = (out / MANIFEST).read_text()
    with pytest.raises(
        ReportError,
        match=r"tiny_gru/seed0 was run with another config \(lr: run has 0.05, "
        r"now 0.01\)",
    ):
        run_comparison(suite, out, seeds=2, overrides=["lr=0.01"], data=tiny_dataset(), progress=False)
    assert (out / MANIFEST).read_text() == before

    with pytest.raises(ReportError, match="--seeds must be an integer >= 1, got 0"):
        run_comparison(suite, tmp_path / "b", seeds=0, data=tiny_dataset(), progress=False)


def test_eta_uses_measured_epochs():
    eta = Eta()
    assert eta.estimate([("a", 2)]) == (None, "no epoch measured yet")
    eta.add("a", [{"epoch_seconds": 10.0}, {"epoch_seconds": 14.0}, {"epoch_seconds": 11.0}])
    eta.add("b", [{"epoch_seconds": 3.0}])
    secs, how = eta.estimate([("a", 2), ("c", 4)])
    assert secs == pytest.approx(2 * 11.0 + 4 * (11.0 + 3.0) / 2)  # c: the mean of the measured medians
    assert how == (
        "from 4 measured epochs, training passes only; 1 experiment(s) not measured yet, assumed at the average speed"
    )
    eta.add_call(45.0, [{"epoch_seconds": 10.0}, {"epoch_seconds": 14.0}, {"epoch_seconds": 11.0}])
    secs2, how = eta.estimate([("a", 2), ("c", 4)])
    assert secs2 == pytest.approx(secs * 45 / 35)
    assert how.startswith("from 4 measured epochs, x1.29 for evaluation and set-up;")
    # with model sizes: c is 4x the cost of a and 16x b -> 2x and 4x their seconds per epoch
    sized = Eta({"a": 1.0, "b": 0.25, "c": 4.0})
    sized.seconds = eta.seconds
    secs3, how = sized.estimate([("c", 1)])
    assert secs3 == pytest.approx((11.0 * 2 + 3.0 * 4) / 2)
    assert how.endswith("1 experiment(s) not measured yet, scaled from the measured ones by model size")


def test_recurrent_cost():
    from rnnlab.experiments.eta import recurrent_cost
    from rnnlab.train import Config

    assert recurrent_cost(Config(cell="lstm", embedding_dim=64, hidden_size=64)) == 4 * 64 * 128
    assert recurrent_cost(
        Config(cell="gru", embedding_dim=32, hidden_size=16, num_layers=2, bidirectional=True)
    ) == 2 * 3 * 16 * (32 + 16) + 2 * 3 * 16 * (32 + 16)


def test_compare_cli_on_a_csv_file(tmp_path, capsys):
    suite = write_suite(tmp_path / "presets")
    texts, labels = tiny_texts(200, 5)
    data = tmp_path / "reviews.csv"
    data.write_text("text,label\n" + "".join(f"{t},{['neg', 'pos'][y]}\n" for t, y in zip(texts, labels)))
    out = tmp_path / "out"
    code = main(
        [
            "compare",
            "--preset",
            str(suite),
            "--data",
            str(data),
            "--out",
            str(out),
            "--only",
            "tiny_rnn",
            "--no-baseline",
            "--no-progress",
        ]
    )
    assert code == 0
    md = (out / "results.md").read_text()
    assert "| `tiny_rnn` | 1 |" in md and "tiny_gru" not in md.split("## Settings")[0]
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out / "results.md")
    code = main(["compare", "--preset", str(suite), "--data", str(data), "--out", str(out), "--only", "lstm"])
    assert code == 2
    assert "unknown experiment(s) in --only: lstm" in capsys.readouterr().err


def test_progress_names_experiment_seed_and_time_left(tmp_path):
    import io

    suite = write_suite(tmp_path / "presets")
    stream = io.StringIO()
    run_comparison(
        suite, tmp_path / "out", data=tiny_dataset(), baseline=False, cache_dir=tmp_path / "c", stream=stream
    )
    text = stream.getvalue()
    assert "compare: 2 runs (2 experiments x 1 seed(s))" in text
    assert "[1/2] tiny_gru seed 7 (gru, encoder torch, 2 epochs)" in text
    assert "time left: unknown (no epoch measured yet)" in text
    assert "[2/2] tiny_rnn seed 7 (rnn, encoder rnnlab, 2 epochs)" in text
    assert "left (from 2 measured epochs, x" in text
    assert (
        "for evaluation and set-up; 1 experiment(s) not measured yet, scaled from the measured ones by model "
        "size)" in text
    )


def test_each_epoch_of_an_in_process_run_is_one_line_with_the_time_left(tmp_path):
    import io

    suite = write_suite(tmp_path / "presets")
    stream = io.StringIO()
    run_comparison(
        suite,
        tmp_path / "out",
        only=["tiny_gru"],
        data=tiny_dataset(),
        baseline=False,
        cache_dir=tmp_path / "c",
        stream=stream,
    )
    lines = [line for line in stream.getvalue().splitlines() if ": epoch " in line]
    assert [line.split(": epoch ")[1].split(" done")[0] for line in lines] == ["1/2", "2/2"]
    assert lines[0].startswith("compare: tiny_gru seed 7: epoch 1/2 done, elapsed ")
    assert lines[0].endswith("left (from 1 measured epochs, training passes only)")
    assert " ~0s left (nothing left)" in lines[1]


def test_a_failed_run_is_reported_and_the_rest_continue(tmp_path, monkeypatch):
    from rnnlab.train import TrainingError

    suite = write_suite(tmp_path / "presets")
    real = compare_mod.train_and_evaluate

    def train(config, run_dir, **kw):
        if config.name == "tiny_gru":
            run_dir.mkdir(parents=True)
            (run_dir / "run.json").write_text(
                json.dumps({"status": "failed", "name": "tiny_gru", "seed": 7, "epochs": 2, "epochs_completed": 0})
            )
            raise TrainingError("non-finite loss at step 3")
        return real(config, run_dir, **kw)

    monkeypatch.setattr(compare_mod, "train_and_evaluate", train)
    result = run_comparison(
        suite, tmp_path / "out", data=tiny_dataset(), progress=False, baseline=False, cache_dir=tmp_path / "c"
    )
    assert [(p.relative_to(tmp_path / "out").as_posix(), why) for p, why in result.failed] == [
        ("tiny_gru/seed0", "non-finite loss at step 3")
    ]
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| `tiny_gru` | 1 incomplete |" in md and "| `tiny_rnn` | 1 |" in md
    assert "seed 7: status 'failed', 0 of 2 epochs done" in md
