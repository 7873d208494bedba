"""`rnnlab compare --jobs N`: parallel worker processes give the --jobs 1 results; resume, failures, Ctrl-C."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
from experiments_helpers import tiny_dataset, write_suite

from rnnlab.cli import main
from rnnlab.experiments import compare as compare_mod
from rnnlab.experiments.compare import run_comparison
from rnnlab.experiments.eta import Eta, greedy_finish, work_estimate
from rnnlab.experiments.plan import plan_comparison
from rnnlab.experiments.pool import worker_threads
from rnnlab.report.runs import ReportError
from rnnlab.rundir import ComparisonDir, RunDir
from rnnlab.train import load_suite

# the only columns of results.csv that measure time (the rest must match exactly)
TIMED = {"median_epoch_seconds"}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNLAB_CACHE", str(tmp_path / "cache"))


def _csv(path: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k not in TIMED} for row in csv.DictReader(open(path))]


def _metrics(run_dir: Path) -> list[dict[str, float]]:
    keys = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr")
    return [{k: row[k] for k in keys} for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]


def test_jobs_2_gives_the_jobs_1_results_and_one_line_per_event(tmp_path):
    """The same 2 experiments x 2 seeds with --jobs 1 and --jobs 2, num_threads=1 in both."""
    suite = write_suite(tmp_path / "presets")
    run_comparison(
        suite,
        tmp_path / "one",
        seeds=2,
        overrides=["num_threads=1"],
        data=tiny_dataset(),
        progress=False,
        cache_dir=tmp_path / "cache",
    )
    stream = io.StringIO()
    two = run_comparison(
        suite,
        tmp_path / "two",
        seeds=2,
        overrides=["num_threads=1"],
        data=tiny_dataset(),
        cache_dir=tmp_path / "cache",
        jobs=2,
        stream=stream,
    )
    runs = ["tiny_gru/seed0", "tiny_gru/seed1", "tiny_rnn/seed0", "tiny_rnn/seed1"]
    assert [p.relative_to(tmp_path / "two").as_posix() for p in two.trained] == runs and two.failed == []
    assert _csv(tmp_path / "two" / "results.csv") == _csv(tmp_path / "one" / "results.csv")
    assert len(_csv(tmp_path / "two" / "results.csv")) == 3  # two experiments and the baseline
    for run in runs:
        assert _metrics(tmp_path / "two" / run) == _metrics(tmp_path / "one" / run)
        info = json.loads((tmp_path / "two" / run / "run.json").read_text())
        assert info["status"] == "complete" and info["epochs_completed"] == 2
        # the worker read the data the parent had encoded, and its output went to its log
        log = ComparisonDir.worker_log(RunDir(tmp_path / "two" / run)).read_text()
        assert re.search(r"torch threads: 1; data: 192 train / 64 test, from the encoded cache", log), log
        assert "Test set: Average loss:" in log and log.rstrip().endswith("=== worker done: ok")
    manifest = json.loads((tmp_path / "two" / "compare.json").read_text())
    assert manifest["invocations"][-1]["jobs"] == 2
    assert (
        f"`rnnlab compare --preset {suite} --seeds 2 --set num_threads=1 --jobs 2`"
        in (tmp_path / "two" / "results.md").read_text()
    )

    # progress: which runs are on which worker, their epochs, and the time left for 2 slots
    text = stream.getvalue()
    assert "compare: 4 runs on 2 worker processes at a time (" in text
    assert re.search(
        r"\[1/4\] tiny_gru seed 7 \(gru, encoder torch, 2 epochs\) -> .*tiny_gru/seed0  \[worker 1/2, "
        r"1 thread\(s\)\]  elapsed \d+s, time left: unknown \(no epoch measured yet\)",
        text,
    )
    assert re.search(r"\[2/4\] tiny_gru seed 8 .*\[worker 2/2, 1 thread\(s\)\]", text)
    # (an epoch line may cover two epochs: the parent polls metrics.jsonl, and tiny epochs are fast)
    run = r"tiny_(gru|rnn) seed [78] (epoch [12]/2|finishing)"
    epoch_lines = re.findall(
        rf"compare: tiny_\w+ seed [78]: epoch [12]/2 done; running: {run}(; {run})*; "
        r"elapsed \d+s, ~\d+s left \((2 runs at a time, from \d+ measured epochs|nothing left)",
        text,
    )
    assert len(epoch_lines) >= 4, text  # at least one per run
    assert re.search(r"compare: tiny_rnn seed 8 finished in \d+s \(final test_acc 0\.\d{4}\)", text)
    for line in text.splitlines():  # one event per line: the parent alone prints
        assert len(re.findall(r"compare: |\[\d/4\]", line)) <= 1, line


def test_resume_with_jobs_2_trains_only_the_unfinished_run(tmp_path):
    suite = write_suite(tmp_path / "presets")
    out = tmp_path / "out"
    kw = dict(
        seeds=2,
        only=["tiny_rnn"],
        overrides=["num_threads=1"],
        progress=False,
        baseline=False,
        cache_dir=tmp_path / "c",
    )
    run_comparison(suite, out, data=tiny_dataset(), **kw)  # --jobs 1
    finished = _metrics(out / "tiny_rnn/seed1")
    info = json.loads((out / "tiny_rnn/seed1/run.json").read_text())
    (out / "tiny_rnn/seed1/run.json").write_text(json.dumps({**info, "status": "running"}))
    result = run_comparison(suite, out, data=tiny_dataset(), jobs=2, **kw)
    assert [p.relative_to(out).as_posix() for p in result.skipped] == ["tiny_rnn/seed0"]
    assert [p.relative_to(out).as_posix() for p in result.trained] == ["tiny_rnn/seed1"]
    assert [p.relative_to(out).as_posix() for p in out.glob("*/seed*.worker.log")] == ["tiny_rnn/seed1.worker.log"]
    assert "(resuming)" in (out / "tiny_rnn/seed1.worker.log").read_text()
    assert _metrics(out / "tiny_rnn/seed1") == finished
    assert json.loads((out / "tiny_rnn/seed1/run.json").read_text())["status"] == "complete"


def _suite(folder: Path, experiments: dict[str, str]) -> Path:
    """A suite of tiny experiments; each body sets cell, encoder, epochs, lr (a [set] key would override it)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "suite.toml").write_text(
        f"experiments = {json.dumps(list(experiments))}\n[set]\nembedding_dim = 8\nhidden_size = 8\n"
        'batch_size = 32\neval_batch_size = 64\nmax_words = 60\nmax_len = 16\ndevice = "cpu"\nseed = 7\n'
        "num_threads = 1\n"
    )
    for name, body in experiments.items():
        (folder / f"{name}.toml").write_text(body)
    return folder / "suite.toml"


def test_failed_and_killed_workers_are_reported_and_the_other_run_completes(tmp_path):
    suite = _suite(
        tmp_path / "presets",
        {
            "diverges": 'cell = "rnn"\nencoder = "torch"\nepochs = 2\noptimizer = "sgd"\nlr = 1e30\n',
            "killed": 'cell = "gru"\nencoder = "torch"\nepochs = 400\nlr = 0.05\n',
            "fine": 'cell = "rnn"\nencoder = "rnnlab"\nepochs = 2\nlr = 0.05\n',
        },
    )
    out = tmp_path / "out"
    killed_log = ComparisonDir.worker_log(RunDir(out / "killed" / "seed0"))

    def kill_when_started() -> None:  # as the OOM killer would: SIGKILL, no chance to clean up
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            m = re.search(r"pid (\d+)", killed_log.read_text()) if killed_log.is_file() else None
            if m:
                os.kill(int(m.group(1)), signal.SIGKILL)
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_when_started, daemon=True)
    killer.start()
    result = run_comparison(
        suite, out, data=tiny_dataset(), progress=False, baseline=False, cache_dir=tmp_path / "c", jobs=3
    )
    killer.join()
    failed = {p.relative_to(out).as_posix(): why for p, why in result.failed}
    assert list(failed) == ["diverges/seed0", "killed/seed0"]
    assert re.fullmatch(
        r"non-finite training loss \((nan|-?inf)\) at epoch 1, step \d of 6; .*", failed["diverges/seed0"]
    )
    assert failed["killed/seed0"] == f"worker killed by SIGKILL; see {killed_log}"
    assert [p.relative_to(out).as_posix() for p in result.trained] == ["fine/seed0"]
    assert (
        "TrainingError: non-finite training loss"
        in ComparisonDir.worker_log(RunDir(out / "diverges" / "seed0")).read_text()
    )
    md = (out / "results.md").read_text()
    assert "| `fine` | 1 |" in md and "| `diverges` | 1 incomplete |" in md


def test_ctrl_c_stops_the_workers_and_leaves_resumable_runs(tmp_path):
    suite = _suite(
        tmp_path / "presets",
        {
            "a": 'cell = "gru"\nencoder = "torch"\nepochs = 400\nlr = 0.05\n',
            "b": 'cell = "rnn"\nencoder = "rnnlab"\nepochs = 400\nlr = 0.05\n',
        },
    )
    out = tmp_path / "out"

    class CtrlC(io.StringIO):
        """Ctrl-C in the parent once both runs have finished an epoch (raised where the parent prints)."""

        started: set[str] = set()
        fired = False

        def write(self, text: str) -> int:
            m = re.search(r"compare: (\w) seed 7: epoch \d+/400 done", text)
            if m:
                self.started.add(m.group(1))
            if self.started == {"a", "b"} and not self.fired:
                self.fired = True
                raise KeyboardInterrupt
            return super().write(text)

    stream = CtrlC()
    with pytest.raises(KeyboardInterrupt):
        run_comparison(suite, out, data=tiny_dataset(), baseline=False, cache_dir=tmp_path / "c", jobs=2, stream=stream)
    assert "compare: interrupted; the workers were stopped (completed epochs kept)" in stream.getvalue()
    assert not (out / "results.md").exists()
    plan = {r.run_dir.parent.name: r for r in plan_comparison(load_suite(suite), out, 1)}
    for name in ("a", "b"):
        run_dir = out / name / "seed0"
        pid = int(re.search(r"pid (\d+)", ComparisonDir.worker_log(RunDir(run_dir)).read_text()).group(1))
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # the worker is gone
        info = json.loads((run_dir / "run.json").read_text())
        done = len(_metrics(run_dir))
        assert info["status"] == "interrupted" and "error" not in info
        assert 1 <= info["epochs_completed"] == done < 400
        assert (run_dir / "checkpoints" / "last.pt").is_file()
        assert [p.name for p in run_dir.rglob("*.tmp")] == []  # no half-written file left
        assert (plan[name].state, plan[name].done_epochs) == ("resume", done)
        assert ComparisonDir.worker_log(RunDir(run_dir)).read_text().rstrip().endswith("=== worker done: interrupted")


def test_jobs_must_be_at_least_1(tmp_path, capsys, monkeypatch):
    suite = write_suite(tmp_path / "presets")
    for bad in (0, -2, 1.5, True):
        with pytest.raises(
            ReportError, match=re.escape(f"--jobs must be an integer >= 1 (runs trained at once), got {bad!r}")
        ):
            run_comparison(suite, tmp_path / "x", data=tiny_dataset(), progress=False, jobs=bad)
    assert not (tmp_path / "x").exists()
    for bad in ("0", "two"):
        with pytest.raises(SystemExit) as exc:
            main(["compare", "--preset", str(suite), "--out", str(tmp_path / "y"), "--jobs", bad])
        assert exc.value.code == 2
        shown = repr(int(bad)) if bad.isdigit() else repr(bad)
        assert (
            f"rnnlab compare: error: argument --jobs: expected an integer >= 1 (runs trained at once), got {shown}"
        ) in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
    # and a valid N reaches run_comparison
    seen = {}

    def fake(preset, out, **kw):
        seen.update(kw)
        raise ReportError("stop here")

    monkeypatch.setattr(compare_mod, "run_comparison", fake)
    assert main(["compare", "--preset", str(suite), "--out", str(tmp_path / "z"), "--jobs", "3"]) == 2
    assert seen["jobs"] == 3 and "stop here" in capsys.readouterr().err


def test_threads_per_worker():
    assert worker_threads(0, 2, cores=2) == 1
    assert worker_threads(0, 3, cores=8) == 2
    assert worker_threads(0, 4, cores=2) == 1  # never 0
    assert worker_threads(3, 2, cores=2) == 3  # an explicit num_threads is kept, as with --jobs 1


def test_eta_for_parallel_slots():
    # two slots: running runs with 10 s and 4 s left; queued 6 s, 6 s, 1 s go to the first free slot
    assert greedy_finish([10.0, 4.0], [6.0, 6.0, 1.0], 2) == pytest.approx(16.0)
    assert greedy_finish([], [3.0, 3.0, 3.0], 2) == pytest.approx(6.0)
    eta = Eta()
    assert eta.schedule([("a", 1)], [], 2) == (None, "no epoch measured yet")
    eta.add("a", [{"epoch_seconds": 10.0}])
    eta.add("b", [{"epoch_seconds": 4.0}])
    secs, how = eta.schedule([("a", 2), ("b", 1)], [("b", 3), ("a", 1)], 2)
    # slots free at 20 and 4; b (12 s) starts at 4 -> 16; a (10 s) starts at 16 -> 26
    assert secs == pytest.approx(26.0)
    assert how == "2 runs at a time, from 2 measured epochs, training passes only"
    assert eta.schedule([("a", 0)], [], 2) == (0.0, "nothing left")


def test_longest_runs_start_first():
    from rnnlab.experiments.plan import PlannedRun
    from rnnlab.train import Config

    def _work_estimate(run):
        return work_estimate(run.config, run.done_epochs)

    def planned(**kw):
        return PlannedRun(Config(**kw), Path("x"), 0, "new")

    small, wide, gru = planned(cell="rnn"), planned(hidden_size=128, embedding_dim=128), planned(cell="gru")
    # multiply-adds per token: rnn 64*128, lstm-128 4*128*256, gru 3*64*128; x max_len 200 x 5 epochs
    assert [_work_estimate(p) for p in (small, wide, gru)] == [8192 * 1000, 131072 * 1000, 24576 * 1000]
    done = PlannedRun(Config(hidden_size=128, embedding_dim=128), Path("y"), 0, "resume", done_epochs=4)
    assert _work_estimate(done) == 131072 * 200
    assert sorted([small, wide, gru], key=lambda r: -_work_estimate(r)) == [wide, gru, small]
