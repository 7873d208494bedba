"""The run directory's reliability: its lock (real processes, kill -9), failed writes, cut-short metrics, status.

Processes here are real: a child ``rnnlab train`` that pauses after committing its first epoch holds
the lock while the test runs a second command on the same directory, or kills the child with SIGKILL.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_helpers import tiny_config

import rnnlab.rundir as rundir_mod
from rnnlab.cli import main
from rnnlab.errors import DirectoryInUseError, RunDirError
from rnnlab.rundir import DirLock, RunDir
from rnnlab.train import load_run, predict, read_metrics, train_and_evaluate

TIMING = ("epoch_seconds", "examples_per_second", "eval_seconds")
POSITIVE = ["good", "great", "superb", "lovely", "brilliant"]
NEGATIVE = ["bad", "awful", "dull", "boring", "terrible"]
FILLER = ["the", "a", "film", "movie", "plot", "actor", "scene", "it", "was", "and"]

# A child `rnnlab train ARGS` that, after committing its first epoch, writes MARK and waits for GO.
CHILD = r"""
import os, sys, time
from pathlib import Path
import rnnlab.train.runner as runner

mark, go = Path(sys.argv[1]), Path(sys.argv[2])
real = runner.Trainer.commit_epoch

def commit_epoch(self, row, improved):
    real(self, row, improved)
    if not mark.exists():
        mark.write_text(str(os.getpid()))
        while not go.exists():
            time.sleep(0.01)

runner.Trainer.commit_epoch = commit_epoch
from rnnlab.cli import main
raise SystemExit(main(sys.argv[3:]))
"""

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="fcntl locks and SIGKILL")


def _values(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.fixture
def csv_data(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNLAB_CACHE", str(tmp_path / "cache"))
    rng = random.Random(0)
    lines = ["text,label"]
    for i in range(200):
        label = ("neg", "pos")[i % 2]
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 12))]
        words[rng.randrange(len(words))] = rng.choice(POSITIVE if label == "pos" else NEGATIVE)
        lines.append(f"{' '.join(words)},{label}")
    path = tmp_path / "reviews.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _train_args(data: Path, out: Path, *extra: str) -> list[str]:
    sets = ["embedding_dim=8", "hidden_size=8", "lr=0.05", "epochs=3", "batch_size=32", "device=cpu", "num_threads=1"]
    return [
        "train",
        *(a for s in sets for a in ("--set", s)),
        "--data",
        str(data),
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def _start_holder(tmp_path: Path, args: list[str]) -> tuple[subprocess.Popen, Path, Path]:
    """A child ``rnnlab train`` paused after its first committed epoch, holding the run directory's lock."""
    mark, go = tmp_path / "held.mark", tmp_path / "held.go"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(mark), str(go), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 180
    while not mark.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the child ended before holding the lock: {proc.communicate()}")
        assert time.monotonic() < deadline, "the child never reached its first epoch"
        time.sleep(0.05)
    return proc, mark, go


def test_a_second_process_on_a_locked_run_directory_is_refused_at_once(tmp_path, csv_data, capsys):
    run = tmp_path / "run"
    holder, _, go = _start_holder(tmp_path, _train_args(csv_data, run))
    try:
        assert DirLock.holder(run) == holder.pid
        before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
        for extra in (["--resume"], ["--overwrite"], []):
            start = time.monotonic()
            assert main(_train_args(csv_data, run, *extra)) == 2
            err = capsys.readouterr().err
            assert err == (
                f"rnnlab: error: {run} is in use: rnnlab process {holder.pid} is writing this run directory "
                f"(lock file {run / '.lock'}); wait for it to finish or stop it, then run the command again\n"
            )
            assert time.monotonic() - start < 60  # refused, not queued behind the holder
        # evaluate and predict only read: they are not refused
        assert main(["predict", str(run), "a superb film", "--checkpoint", "last"]) == 0
        capsys.readouterr()
        assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"} == before
    finally:
        go.write_text("")
        out, err = holder.communicate(timeout=300)
    assert holder.returncode == 0, err
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2, 3] and not (run / ".lock").exists()


def test_a_lock_left_by_a_process_killed_with_sigkill_does_not_block(tmp_path, csv_data, capsys):
    run = tmp_path / "run"
    holder, _, _ = _start_holder(tmp_path, _train_args(csv_data, run))
    os.kill(holder.pid, signal.SIGKILL)
    holder.communicate(timeout=60)
    assert holder.returncode == -signal.SIGKILL
    assert (run / ".lock").read_text().strip() == str(holder.pid)  # the file stays; its flock died with it
    assert DirLock.holder(run) is None
    assert json.loads((run / "run.json").read_text())["status"] == "running"  # killed: nothing could mark it
    assert main(_train_args(csv_data, run, "--resume")) == 0
    assert "Resuming from epoch 1" in capsys.readouterr().out
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2, 3]
    assert json.loads((run / "run.json").read_text())["status"] == "complete" and not (run / ".lock").exists()
    # the same result as a run that was never killed
    whole = tmp_path / "whole"
    assert main(_train_args(csv_data, whole)) == 0
    assert _values(read_metrics(run)) == _values(read_metrics(whole))


def test_a_second_compare_on_a_comparison_folder_in_use_is_refused(tmp_path, capsys):
    out = tmp_path / "cmp"
    with DirLock(out, what="comparison folder"):
        code = main(["compare", "--preset", "seed", "--out", str(out), "--no-progress"])
    assert code == 2
    assert f"rnnlab: error: {out} is in use: rnnlab process {os.getpid()} is writing this comparison folder" in (
        capsys.readouterr().err
    )
    assert list(out.iterdir()) == []  # nothing written, the lock file removed


def test_the_lock_is_exclusive_between_processes_and_released_on_exit(tmp_path):
    folder = tmp_path / "d"
    code = (
        "import sys, time; from rnnlab.rundir import DirLock; "
        "lock = DirLock(sys.argv[1]).acquire(); print('held', flush=True); sys.stdin.readline(); lock.release()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline().strip() == "held"
    with pytest.raises(DirectoryInUseError, match=f"rnnlab process {child.pid} is writing") as info:
        DirLock(folder).acquire()
    assert info.value.pid == child.pid and info.value.path == folder
    child.communicate("\n", timeout=60)
    assert not (folder / ".lock").exists()
    with DirLock(folder) as lock:  # free again
        assert lock.held and (folder / ".lock").read_text().strip() == str(os.getpid())


# ------------------------------------------------------------------ failed writes (a full disk, a permission)


def _enospc_at_epoch_2_last_pt(monkeypatch):
    real = rundir_mod.torch_save

    def torch_save(path, obj):
        if Path(path).name == "last.pt" and obj.get("epoch") == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, obj)

    monkeypatch.setattr(rundir_mod, "torch_save", torch_save)
    return "checkpoints/last.pt: [Errno 28] No space left on device (the disk is full)"


def _eacces_on_metrics_from_epoch_2(monkeypatch):
    """Every metrics write fails from epoch 2 on (the append, and settle's rewrite of the file)."""
    real_append, real_write = RunDir.append_metrics, RunDir.write_metrics
    failing = {"on": False}

    def append_metrics(self, row):
        if row["epoch"] == 2:
            failing["on"] = True
        if failing["on"]:
            with rundir_mod.writing(self.metrics_path):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        real_append(self, row)

    def write_metrics(self, rows):
        if failing["on"]:
            with rundir_mod.writing(self.metrics_path):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        real_write(self, rows)

    monkeypatch.setattr(RunDir, "append_metrics", append_metrics)
    monkeypatch.setattr(RunDir, "write_metrics", write_metrics)
    return "metrics.jsonl: [Errno 13] Permission denied"


@pytest.mark.parametrize("inject", [_enospc_at_epoch_2_last_pt, _eacces_on_metrics_from_epoch_2])
def test_a_failed_checkpoint_or_metrics_write_keeps_the_last_epoch_and_marks_the_run_failed(
    tmp_path, csv_data, capsys, inject
):
    one = tmp_path / "one"  # the reference: the same run stopped after epoch 1
    assert main(_train_args(csv_data, one, "--set", "epochs=1")) == 0
    run = tmp_path / "run"
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as mp:
        what = inject(mp)
        assert main(_train_args(csv_data, run)) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"rnnlab: error: cannot write {run}/") and what in lines[0]
    metrics_failed = "metrics" in what
    kept = 2 if metrics_failed else 1  # last.pt is the commit point: epoch 2's was written before its metrics
    assert lines[0].endswith(
        f"the run is marked failed; {['', 'epoch 1 is', 'epochs 1-2 are'][kept]} kept: continue it with --resume"
        + (f" (and: cannot write {run / 'metrics.jsonl'}: [Errno 13] Permission denied)" if metrics_failed else "")
    )
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "failed" and what in info["error"] and info["epochs_completed"] == kept
    # metrics.jsonl is whole and holds epoch 1, exactly as the run that stopped there
    assert (run / "metrics.jsonl").read_text().endswith("\n")
    assert _values(read_metrics(run)) == _values(read_metrics(one))
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert last["epoch"] == kept
    if not metrics_failed:
        reference = torch.load(one / "checkpoints" / "last.pt", weights_only=True)["model"]
        assert all(torch.equal(last["model"][k], reference[k]) for k in reference)
    assert [p.name for p in run.rglob("*.tmp")] == []
    # the disk has room again: the same command with --resume finishes it as if nothing had happened
    assert main(_train_args(csv_data, run, "--resume")) == 0
    whole = tmp_path / "whole"
    assert main(_train_args(csv_data, whole)) == 0
    assert _values(read_metrics(run)) == _values(read_metrics(whole))
    assert json.loads((run / "run.json").read_text())["status"] == "complete"


def test_a_cut_short_last_metrics_line_is_dropped_and_repaired_on_resume(tmp_path, tiny_data):
    config = tiny_config(epochs=3)
    full = train_and_evaluate(config, tmp_path / "full", data=tiny_data, progress=False)
    run = tmp_path / "run"
    train_and_evaluate(config.replace(epochs=2), run, data=tiny_data, progress=False)
    whole = (run / "metrics.jsonl").read_text()
    cut = json.dumps(full[2])[:40]  # killed while appending epoch 3's row
    (run / "metrics.jsonl").write_text(whole + cut)
    scan = RunDir(run).scan_metrics()
    assert [r["epoch"] for r in scan.rows] == [1, 2] and scan.partial_line == 3
    assert scan.problem == "metrics.jsonl line 3 is cut short (a write was interrupted)"
    resumed = train_and_evaluate(config, run, data=tiny_data, resume=True, progress=False)
    assert _values(resumed) == _values(full)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    assert (
        f"Repaired {run / 'metrics.jsonl'}: line 3 is cut short (a write was interrupted); rewritten from last.pt"
        in ((run / "train.log").read_text())
    )


def test_killed_after_the_last_checkpoint_but_before_its_metrics_row(tmp_path, tiny_data):
    """last.pt holds all the epochs, metrics.jsonl and run.json one fewer: a resume completes the files."""
    config = tiny_config(epochs=2)
    rows = train_and_evaluate(config, tmp_path / "run", data=tiny_data, progress=False)
    metrics = tmp_path / "run" / "metrics.jsonl"
    metrics.write_text(metrics.read_text().splitlines(keepends=True)[0])
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    (tmp_path / "run" / "run.json").write_text(json.dumps({**info, "status": "running", "epochs_completed": 1}))
    again = train_and_evaluate(config, tmp_path / "run", data=tiny_data, resume=True, progress=False)
    assert again == rows == read_metrics(tmp_path / "run")
    from rnnlab.report import read_run

    assert read_run(tmp_path / "run").complete
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert (info["status"], info["epochs_completed"]) == ("complete", 2)


def test_one_metrics_reader_later_rows_replace_earlier_ones_and_damage_is_named(tmp_path):
    rd = RunDir(tmp_path)
    rd.metrics_path.write_text(
        '{"epoch": 1, "a": 1}\n{"epoch": 2, "a": 2}\n\n{"epoch": 1, "a": 3}\n{"epoch": 3, "a": 4}'
    )
    assert [(r["epoch"], r["a"]) for r in rd.read_metrics()] == [(1, 3), (2, 2), (3, 4)]  # whole last row kept
    assert rd.repair_metrics() == f"{rd.metrics_path}: ended the last line"
    assert rd.metrics_path.read_text().endswith('"a": 4}\n')
    rd.metrics_path.write_text('{"epoch": 1}\n{"epoch": 2\n{"epoch": 3}\n')
    with pytest.raises(RunDirError, match=r"metrics.jsonl:2: not valid JSON .*; the file is damaged"):
        rd.read_metrics()
    rd.metrics_path.write_text('{"epoch": 1}\n["no"]\n')
    with pytest.raises(RunDirError, match=r"metrics.jsonl:2: expected a JSON object with a numeric 'epoch'"):
        rd.read_metrics()
    assert RunDir(tmp_path / "none").read_metrics() == []


def test_a_failed_append_is_cut_back_off(tmp_path, monkeypatch):
    rd = RunDir(tmp_path)
    rd.append_metrics({"epoch": 1, "x": 0.5})
    before = rd.metrics_path.read_bytes()
    real_write = os.write

    def half_then_full_disk(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(rundir_mod.os, "write", half_then_full_disk)
    with pytest.raises(RunDirError, match=r"cannot write .*metrics.jsonl: \[Errno 28\] No space left on device"):
        rd.append_metrics({"epoch": 2, "x": 0.25})
    monkeypatch.undo()
    assert rd.metrics_path.read_bytes() == before


def test_status_transitions(tmp_path):
    rd = RunDir(tmp_path)
    with pytest.raises(RunDirError, match=r"status None cannot change to 'failed'"):
        rd.write_info({"status": "failed"})
    rd.write_info({"status": "running", "epochs": 2})
    rd.update_info(status="interrupted")
    rd.update_info(status="running")
    rd.update_info(status="complete")
    with pytest.raises(RunDirError, match=r"status 'complete' cannot change to 'failed'"):
        rd.update_info(status="failed")
    with pytest.raises(RunDirError, match=r"cannot change to 'done'"):
        rd.update_info(status="done")
    info = RunDir(tmp_path).read_info()
    assert (info["status"], info["format"], info["epochs"]) == ("complete", rundir_mod.FORMAT, 2)


# ------------------------------------------------------------------ per-epoch checkpoints


def test_epoch_checkpoints_from_initialisation_to_the_last_epoch(tmp_path, tiny_data):
    from rnnlab.models import build_model
    from rnnlab.train.runner import seed_everything

    config = tiny_config(epochs=3, keep_epoch_checkpoints=True)
    train_and_evaluate(config, tmp_path / "run", data=tiny_data, progress=False)
    rd = RunDir(tmp_path / "run")
    assert rd.epoch_checkpoints() == [0, 1, 2, 3]
    seed_everything(config.seed)
    initial = build_model(config, len(tiny_data.vocab), 2).state_dict()
    epoch0 = rd.load_checkpoint(0)
    assert epoch0["epoch"] == 0 and all(torch.equal(epoch0["model"][k], initial[k]) for k in initial)
    last = rd.load_checkpoint("last")
    assert all(torch.equal(rd.load_checkpoint("epoch_3")["model"][k], v) for k, v in last["model"].items())
    # epoch 2's weights are those of a run that stopped after 2 epochs
    train_and_evaluate(config.replace(epochs=2), tmp_path / "two", data=tiny_data, progress=False)
    two = RunDir(tmp_path / "two").load_checkpoint("last")["model"]
    assert all(torch.equal(rd.load_checkpoint(2)["model"][k], v) for k, v in two.items())
    assert "optimizer" not in epoch0  # weights only: a resume continues from last.pt
    early = load_run(tmp_path / "run", checkpoint="epoch_0")
    assert early.epoch == 0 and early.checkpoint.name == "epoch_0.pt"
    assert len(predict(early, ["good film"])) == 1
    assert load_run(tmp_path / "run", checkpoint=1).epoch == 1
    with pytest.raises(
        RunDirError, match=r"epoch_7.pt not found: .*epoch checkpoints: epoch_0, epoch_1, epoch_2, epoch_3"
    ):
        load_run(tmp_path / "run", checkpoint="epoch_7")
    with pytest.raises(RunDirError, match="unknown checkpoint 'first': expected last, best or epoch_K"):
        load_run(tmp_path / "run", checkpoint="first")


def test_without_the_key_no_epoch_checkpoints(tmp_path, tiny_data):
    train_and_evaluate(tiny_config(epochs=1), tmp_path / "run", data=tiny_data, progress=False)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["best.pt", "last.pt"]


# ------------------------------------------------------------------ runs written before format 2


def _as_format_1(run: Path) -> None:
    """Rewrite a run directory as rnnlab wrote it before format 2: config key impl, format 1 everywhere."""
    config = (run / "config.toml").read_text().replace("\nencoder = ", "\nimpl = ")
    (run / "config.toml").write_text(config)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "format": 1}))
    for ckpt in (run / "checkpoints").glob("*.pt"):
        state = torch.load(ckpt, weights_only=True)
        state["config"]["impl"] = state["config"].pop("encoder")
        torch.save({**state, "format": 1}, ckpt)


def test_a_format_1_run_directory_still_loads_resumes_and_is_upgraded(tmp_path, tiny_data):
    from rnnlab.errors import RnnlabDeprecationWarning
    from rnnlab.report import read_run
    from rnnlab.train import evaluate_run

    config = tiny_config(epochs=3)
    full = train_and_evaluate(config, tmp_path / "full", data=tiny_data, progress=False)
    run = tmp_path / "old"
    train_and_evaluate(config.replace(epochs=2), run, data=tiny_data, progress=False)
    _as_format_1(run)
    with pytest.warns(RnnlabDeprecationWarning, match=r"config.toml: config key 'impl' is deprecated"):
        result = evaluate_run(run, data=tiny_data)
    assert result["epoch"] == 2 and result["accuracy"] == pytest.approx(full[1]["test_acc"], abs=1e-12)
    record = read_run(run)
    assert record.complete and record.config["impl"] == "rnnlab"  # the report reads it as it is
    with pytest.warns(RnnlabDeprecationWarning):
        resumed = train_and_evaluate(config, run, data=tiny_data, resume=True, progress=False)
    assert _values(resumed) == _values(full)
    info = json.loads((run / "run.json").read_text())
    assert (info["format"], info["status"]) == (rundir_mod.FORMAT, "complete")
    assert '\nencoder = "rnnlab"\n' in (run / "config.toml").read_text()  # written in the new spelling
