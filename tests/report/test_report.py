"""`rnnlab report` on hand-made run directories: known aggregates, incomplete runs, plots, errors."""

from __future__ import annotations

import csv
import json

import matplotlib.image as mpimg
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.patches import Rectangle
from report_helpers import make_run

from rnnlab.cli import main
from rnnlab.report.aggregate import Stat, summarize
from rnnlab.report.build import write_report
from rnnlab.report.plots import PLOTS, plot_accuracy, plot_best_accuracy, plot_epoch_seconds, plot_loss
from rnnlab.report.runs import ReportError, discover_runs, read_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def runs(tmp_path):
    """lstm: 3 seeds with known numbers; gru: 1 complete + 1 running; mine: 1 seed; a baseline."""
    root = tmp_path / "runs"
    make_run(root, "lstm", 0, [0.80, 0.84, 0.85], test_losses=[0.5, 0.4, 0.30], epoch_seconds=[10, 12, 11])
    make_run(root, "lstm", 1, [0.81, 0.86, 0.83], test_losses=[0.5, 0.4, 0.36], epoch_seconds=[20, 9, 9])
    make_run(root, "lstm", 2, [0.79, 0.82, 0.84], test_losses=[0.5, 0.4, 0.33], epoch_seconds=[30, 13, 14])
    make_run(root, "gru", 0, [0.82, 0.85, 0.86], num_params=2000)
    make_run(root, "gru", 1, [0.82], status="running", epochs=3, num_params=2000)
    make_run(root, "mine", 0, [0.70, 0.75, 0.78], num_params=300)
    base = make_run(root, "nbsvm_bigram", 0, [0.91])
    info = json.loads((base / "run.json").read_text())
    (base / "run.json").write_text(json.dumps({**info, "kind": "baseline", "description": "NB-LR"}))
    return root


def test_stat_uses_sample_std():
    s = Stat.of([0.85, 0.83, 0.84])
    assert s.mean == pytest.approx(0.84)
    assert s.std == pytest.approx(0.01)  # ddof = 1: sqrt((0.01^2 + 0.01^2 + 0) / 2)
    assert Stat.of([0.5]).std is None


def test_aggregates_pin_known_mean_and_std(runs):
    summaries = summarize([read_run(p) for p in discover_runs([runs])])
    assert [s.name for s in summaries] == ["lstm", "gru", "mine", "nbsvm_bigram"]  # original order, others, baseline
    lstm = summaries[0]
    assert lstm.final_acc.mean == pytest.approx(0.84) and lstm.final_acc.std == pytest.approx(0.01)
    assert lstm.best_acc.mean == pytest.approx((0.85 + 0.86 + 0.84) / 3)
    assert lstm.best_acc.std == pytest.approx(0.01)
    assert lstm.best_epochs == [3, 2, 3]
    assert lstm.final_loss.mean == pytest.approx(0.33) and lstm.final_loss.std == pytest.approx(0.03)
    assert lstm.epoch_seconds == 12  # median of 10, 12, 11, 20, 9, 9, 30, 13, 14
    assert lstm.num_params == 1000 and lstm.seeds == [0, 1, 2]
    gru = summaries[1]
    assert len(gru.runs) == 1 and gru.final_acc.mean == pytest.approx(0.86) and gru.final_acc.std is None
    assert [r.seed for r in gru.incomplete] == [1]


def _test_once_run(root, seed, val_accs, test):
    """A ``test_every_epoch = false`` run: validation per epoch, one test result in run.json."""
    run = make_run(root, "best", seed, val_accs, config={"test_every_epoch": False, "val_fraction": 0.1})
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    with open(run / "metrics.jsonl", "w") as f:
        for row in rows:
            acc, loss = row.pop("test_acc"), row.pop("test_loss")
            f.write(json.dumps({**row, "val_acc": acc, "val_loss": loss}) + "\n")
    info = json.loads((run / "run.json").read_text())
    if test is not None:
        info["test"] = test
    (run / "run.json").write_text(json.dumps(info))
    return run


def test_test_once_runs_report_their_single_test_result(tmp_path):
    root = tmp_path / "runs"
    _test_once_run(root, 0, [0.88, 0.90, 0.89], {"epoch": 2, "acc": 0.905, "loss": 0.25, "n": 100})
    _test_once_run(root, 1, [0.87, 0.91, 0.90], {"epoch": 2, "acc": 0.895, "loss": 0.27, "n": 100})
    broken = _test_once_run(root, 2, [0.87, 0.91, 0.90], None)
    records = [read_run(p) for p in discover_runs([root])]
    assert [r.complete for r in records] == [True, True, False]
    assert "no final test result" in records[2].problem and records[2].path == broken
    (s,) = summarize(records)
    assert s.final_acc.mean == pytest.approx(0.90) and s.final_acc.std == pytest.approx(0.00707107, abs=1e-7)
    assert s.best_acc.mean == pytest.approx(0.90) and s.best_epochs == [2, 2]
    assert s.final_loss.mean == pytest.approx(0.26)
    report = write_report([root], tmp_path / "out")
    assert (tmp_path / "out" / "val_accuracy.png").is_file() and "0.9000" in report.markdown
    assert "`best`: tested once per seed, on the checkpoint with the best validation accuracy" in report.markdown
    loss = plot_loss([s])  # no per-epoch test loss: the right panel shows the validation loss
    assert loss.axes[1].get_title() == "Validation loss per epoch" and len(loss.axes[1].get_lines()) == 1
    fig = plot_accuracy([s], "val")
    assert len([ln for ln in fig.axes[0].get_lines() if not ln.get_label().startswith("_")]) == 1


def test_report_files_table_and_csv(runs, tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    report = write_report([runs], out)
    assert (out / "notes.txt").read_text() == "mine"  # unrelated files are kept
    md = (out / "results.md").read_text()
    # 3-epoch runs are compared with the original after its 3rd epoch (lstm 0.8483, gru 0.8554)
    assert (
        "| `lstm` | 3 | 0.8400 ± 0.0100 | 0.8500 ± 0.0100 (3,2,3) | 0.3300 ± 0.0300 | 1,000 | 12.0 | "
        "0.8483 (0.8483)* | -0.83 |" in md
    )
    assert "| `gru` | 1 | 0.8600 | 0.8600 (3) |" in md and "0.8554 (0.8554)* | +0.46 |" in md
    assert "runs of 3 epoch(s): compared with the original's test accuracy after the same number of epochs" in md
    assert "| `gru` | 1 incomplete |" in md
    assert "seed 1: status 'running', 1 of 3 epochs done" in md
    rows = list(csv.DictReader(open(out / "results.csv")))
    by = {(r["experiment"], r["status"]): r for r in rows}
    assert set(by) == {
        ("lstm", "complete"),
        ("gru", "complete"),
        ("gru", "incomplete"),
        ("mine", "complete"),
        ("nbsvm_bigram", "complete"),
    }
    assert float(by["lstm", "complete"]["final_test_acc_std"]) == pytest.approx(0.01)
    assert by["gru", "incomplete"]["final_test_acc_mean"] == ""  # never a result
    assert by["mine", "complete"]["original_final_test_acc"] == ""
    assert (by["lstm", "complete"]["original_epoch"], by["lstm", "complete"]["original_final_test_acc"]) == (
        "3",
        "0.8483",
    )
    assert by["nbsvm_bigram", "complete"]["kind"] == "baseline"
    assert by["nbsvm_bigram", "complete"]["median_epoch_seconds"] == ""  # a fit, not epochs
    assert "| `nbsvm_bigram` | 1 | 0.9100 | 0.9100 (1) | 0.5000 | 1,000 |  |  |  |" in md
    for name in PLOTS:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC
        h, w, _ = mpimg.imread(out / name).shape
        assert h > 200 and w > 400
    assert {p.name for p in report.files} == {"results.md", "results.csv", *PLOTS}


@pytest.mark.parametrize(
    "damage, problem",
    [
        ("running", "status 'running'"),
        ("short", "2 of 3 epochs in metrics.jsonl"),
        ("truncated", "metrics.jsonl line 3 is cut short (a write was interrupted)"),
        ("garbled", "metrics.jsonl:2: not valid JSON"),
        ("no_metrics", "metrics.jsonl is missing"),
        ("nan", "epoch 2: no finite test_acc"),
    ],
)
def test_incomplete_runs_are_marked_never_results(tmp_path, damage, problem):
    run = make_run(tmp_path / "runs", "lstm", 0, [0.8, 0.82, 0.84])
    metrics = run / "metrics.jsonl"
    if damage == "running":
        info = json.loads((run / "run.json").read_text())
        (run / "run.json").write_text(json.dumps({**info, "status": "running"}))
    elif damage == "short":
        metrics.write_text("".join(metrics.read_text().splitlines(keepends=True)[:2]))
    elif damage == "truncated":
        metrics.write_text(metrics.read_text()[:-20])
    elif damage == "garbled":
        lines = metrics.read_text().splitlines(keepends=True)
        metrics.write_text(lines[0] + "{oops\n" + lines[2])
    elif damage == "no_metrics":
        metrics.unlink()
    elif damage == "nan":
        metrics.write_text(metrics.read_text().replace('"test_acc": 0.82', '"test_acc": NaN'))
    record = read_run(run)
    assert not record.complete and problem in record.problem
    summaries = summarize([record])
    assert not summaries[0].has_results and summaries[0].final_acc is None
    report = write_report([tmp_path / "runs"], tmp_path / "out")
    assert "| `lstm` | 1 incomplete |" in report.markdown and "0.8400" not in report.markdown


def test_five_epoch_runs_compare_with_the_original_final(tmp_path):
    make_run(tmp_path, "handwritten_lstm_b128_lr5e-3", 0, [0.83, 0.87, 0.86, 0.85, 0.8639])
    md = write_report([tmp_path], tmp_path / "out").markdown
    assert "| 0.8539 (0.8715) | +1.00 |" in md and "epoch(s): compared" not in md


def test_plots_have_one_line_per_experiment_and_bars(runs):
    summaries = summarize([read_run(p) for p in discover_runs([runs])])
    fig = plot_accuracy(summaries, "test")
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == [
        "lstm (3 seeds)",
        "gru",
        "mine",
        "_original",
        "_original",
        "original (dotted, one seed)",
        "nbsvm_bigram (bag of words)",
    ]
    assert list(ax.get_lines()[3].get_ydata()) == [0.7848, 0.8277, 0.8483]  # the original lstm, 3 epochs
    assert list(ax.get_lines()[0].get_ydata()) == pytest.approx([0.80, 0.84, 0.84])  # mean over seeds per epoch
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 1  # only lstm has several seeds
    assert len(plot_accuracy(summaries, "train").axes[0].get_lines()) == 3  # no baseline on train
    loss = plot_loss(summaries)
    assert [len(a.get_lines()) for a in loss.axes] == [3, 3]
    best = plot_best_accuracy(summaries).axes[0]
    bars = [p for p in best.patches if isinstance(p, Rectangle)]
    assert [round(b.get_width(), 4) for b in bars] == [0.85, 0.86, 0.78, 0.91]
    (orig,) = [ln for ln in best.get_lines() if ln.get_label() == "original (one seed)"]  # for lstm and gru
    assert list(orig.get_xdata()) == [0.8483, 0.8554] and list(orig.get_ydata()) == [0, 1]
    secs = [p for p in plot_epoch_seconds(summaries).axes[0].patches if isinstance(p, Rectangle)]
    assert [b.get_width() for b in secs] == [12.0, 10.0, 10.0]
    with pytest.raises(ValueError, match="split must be 'test', 'train' or 'val', got 'dev'"):
        plot_accuracy(summaries, "dev")


def test_report_cli(runs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["report", str(runs / "lstm"), str(runs / "gru" / "seed0"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| `lstm` | 3 | 0.8400 ± 0.0100" in printed and "| `gru` | 1 | 0.8600" in printed
    assert "mine" not in (out / "results.md").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing"], "missing: no such file or directory"),
        (["empty"], "no run directories found under"),
    ],
)
def test_report_bad_input(tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    code = main(["report", *[str(tmp_path / a) for a in args], "--out", str(tmp_path / "out")])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_report_out_must_be_a_folder(runs, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ReportError, match="is a file; expected a folder"):
        write_report([runs], tmp_path / "file")
    assert (tmp_path / "file").read_text() == "x"


def test_settings_table_shows_the_regularisation_and_input_settings(tmp_path):
    root = tmp_path / "runs"
    make_run(
        root,
        "wd",
        0,
        [0.80],
        config={
            "word_dropout": 0.2,
            "embedding_dropout": 0.1,
            "truncate": "head_tail",
            "lr_schedule": "linear",
            "max_len": 500,
            "encoder": "reference",
        },
    )
    # made before word_dropout existed, and when encoder was called impl
    make_run(root, "old", 0, [0.80], config={"embedding_dropout": 0.0, "impl": "torch"})
    md = write_report([root], tmp_path / "out").markdown
    settings = md.split("## Settings")[1]
    head = settings.strip().splitlines()[0].strip("| ").split(" | ")
    rows = {
        line.split(" | ")[0].strip("| `"): dict(zip(head, line.strip("| ").split(" | ")))
        for line in settings.strip().splitlines()[2:]
        if line.startswith("| `")
    }
    assert head[-6:] == ["max_len", "truncate", "max_words", "embedding_dropout", "word_dropout", "options"]
    assert (
        rows["wd"]["word_dropout"],
        rows["wd"]["embedding_dropout"],
        rows["wd"]["truncate"],
        rows["wd"]["lr_schedule"],
    ) == ("0.2", "0.1", "head_tail", "linear")
    assert rows["old"]["word_dropout"] == "0.0" and rows["old"]["truncate"] == ""
    assert (head[2], rows["wd"]["encoder"], rows["old"]["encoder"]) == ("encoder", "reference", "torch")


def test_settings_table_shows_the_layer_options(tmp_path):
    """The rnnlab.nn cell options a run changed, in one "options" column ("none" at their
    defaults, also for runs made before the keys existed); defaults as rnnlab.train.config's."""
    from rnnlab.report.build import LAYER_OPTIONS, WIDE_OPTIONS
    from rnnlab.train.config import LAYER_OPTIONS as CONFIG_LAYER_OPTIONS
    from rnnlab.train.config import WIDE_KEYS, Config

    assert LAYER_OPTIONS == CONFIG_LAYER_OPTIONS
    assert WIDE_OPTIONS == {k: getattr(Config(), k) for k in WIDE_KEYS}
    root = tmp_path / "runs"
    make_run(root, "ln", 0, [0.80], config={"layer_norm": True, "weight_drop": 0.3, "zoneout": 0.0})
    make_run(root, "wide", 0, [0.80], config={"wide_ngrams": 3, "wide_min_count": 2, "wide_alpha": 1.0})
    make_run(root, "hs", 0, [0.80], config={"cell": "gru", "gate_activation": "hard_sigmoid"})
    make_run(root, "old", 0, [0.80])
    md = write_report([root], tmp_path / "out").markdown
    rows = {
        line.split(" | ")[0].strip("| `"): line.strip("| ").split(" | ")[-1]
        for line in md.split("## Settings")[1].strip().splitlines()[2:]
        if line.startswith("| `")
    }
    assert rows == {
        "ln": "layer_norm=True, weight_drop=0.3",
        "hs": "gate_activation=hard_sigmoid",
        "wide": "wide_ngrams=3, wide_min_count=2",
        "old": "none",
    }


@pytest.mark.parametrize(
    "config",
    [{"data": "reviews.csv", "text_column": "review"}, {"data": "", "test_data": "my_test.jsonl"}],
    ids=["own-file", "own-test-file"],
)
def test_original_columns_only_for_runs_on_imdb(tmp_path, config):
    """An experiment named like one of the original's, run on other data, is not compared with
    the original's IMDB result: without any such experiment the two columns are left out."""
    make_run(tmp_path / "own", "lstm", 0, [0.70, 0.71, 0.72, 0.73, 0.74], config=config)
    md = write_report([tmp_path / "own"], tmp_path / "out").markdown
    assert "original final" not in md and "Δ final" not in md and "| `lstm` | 1 | 0.7400 |" in md
    make_run(tmp_path / "imdb", "lstm", 0, [0.80, 0.82, 0.84, 0.85, 0.86], config={"data": "x/aclImdb_v1.tar.gz"})
    md = write_report([tmp_path / "imdb"], tmp_path / "out2").markdown
    assert "| original final (best) | Δ final (pt) |" in md and "| 0.8546 (0.8546) | +0.54 |" in md


def test_fifteen_experiments_get_fifteen_colours_and_an_outside_legend(tmp_path):
    """Up to 20 experiments never share a colour (the variants preset has 15), and a legend of
    more than 8 entries sits right of the axes, off the curves."""
    from matplotlib.colors import to_hex

    for k in range(15):
        make_run(tmp_path, f"exp{k:02d}", 0, [0.80 + 0.001 * k, 0.82])
    fig = plot_accuracy(summarize([read_run(p) for p in discover_runs([tmp_path])]))
    ax = fig.axes[0]
    colours = [to_hex(line.get_color()) for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert len(colours) == 15 and len(set(colours)) == 15
    assert ax.get_legend().get_bbox_to_anchor().x0 >= ax.bbox.x1 - 1
