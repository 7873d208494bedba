"""Data-parallel training: 2 gloo processes on 127.0.0.1 against the one-process run.

One group of 2 spawned processes runs every distributed scenario (process start-up is the
slow part); the tests compare what it left with one-process runs of the same configs.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from rnnlab.train import ConfigError, RunDirError, read_metrics, train_and_evaluate
from rnnlab.train.distributed import DistributedError, from_env, shard_bounds

from train_helpers import tiny_config

pytestmark = pytest.mark.skipif(not torch_dist.is_available() or not torch_dist.is_gloo_available(),
                                reason="torch.distributed with the gloo backend is not available in this torch build")

TIMING = ("epoch_seconds", "examples_per_second", "eval_seconds")
WORLD = 2
DEADLINE_S = 120


def _configs():
    """name -> (config, uses validation data). dropout 0 everywhere: the ranks' masks would differ."""
    return {
        # 256 = 8 * 31 + 8: unequal slices (16/15) and a short last batch (4/4); grad clip, schedule.
        "main": (tiny_config(epochs=3, batch_size=31, bucket=True, lr=0.01, grad_clip=1.0, lr_schedule="cosine",
                             warmup_steps=2), False),
        # 256 = 51 * 5 + 1: the last batch has one example, so rank 1's slice is empty.
        "short": (tiny_config(epochs=1, batch_size=5, lr=0.01, eval_batch_size=7), False),
        # Validation per epoch, test once on the best checkpoint (runner._final_test).
        "val": (tiny_config(epochs=2, batch_size=32, lr=0.01, val_fraction=0.2, test_every_epoch=False), True),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, root: str, data, val_data) -> None:
    """One rank: every scenario in turn; outcomes into root/outcomes/rank<r>.json, stdout into a file."""
    root_p = Path(root)
    cwd = root_p / f"cwd{rank}"
    cwd.mkdir()
    os.chdir(cwd)  # anything written to a relative path would land here
    out = open(root_p / "outcomes" / f"stdout{rank}.txt", "w")  # noqa: SIM115 - kept open for the process
    os.dup2(out.fileno(), 1)
    sys.stdout = out
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD), RANK=str(rank),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    outcomes: dict[str, object] = {}
    runs = root_p / "runs"

    def attempt(name, config, run_dir, **kwargs):
        try:
            rows = train_and_evaluate(config, run_dir, progress=False, **kwargs)
            outcomes[name] = {"rows": rows, "initialized_after": torch_dist.is_initialized()}
        except Exception as err:  # noqa: BLE001 - recorded for the test
            outcomes[name] = {"error": type(err).__name__, "message": str(err),
                              "initialized_after": torch_dist.is_initialized()}

    try:
        for name, (config, uses_val) in _configs().items():
            attempt(name, config, runs / name, data=val_data if uses_val else data)
        main = _configs()["main"][0]
        attempt("resume_first", main.replace(epochs=2), runs / "resumed", data=data)
        attempt("resume_rest", main, runs / "resumed", data=data, resume=True)
        attempt("exists", main, runs / "main", data=data)
        attempt("batch_too_small", main.replace(batch_size=1), runs / "small", data=data)
    except BaseException:  # noqa: BLE001
        outcomes["crash"] = traceback.format_exc()
    (root_p / "outcomes" / f"rank{rank}.json").write_text(json.dumps(outcomes))
    out.flush()


@pytest.fixture(scope="module")
def ddp(tmp_path_factory, tiny_data, tiny_val_data):
    """Runs the 2-process scenarios once; returns (root, outcomes per rank)."""
    root = tmp_path_factory.mktemp("ddp")
    (root / "outcomes").mkdir()
    (root / "runs").mkdir()
    ctx = mp.start_processes(_worker, args=(_free_port(), str(root), tiny_data, tiny_val_data), nprocs=WORLD,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + DEADLINE_S
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.terminate()
            pytest.fail(f"the 2-process run did not finish in {DEADLINE_S} s (a rank waits for the other)")
    outcomes = [json.loads((root / "outcomes" / f"rank{r}.json").read_text()) for r in range(WORLD)]
    for r, o in enumerate(outcomes):
        assert "crash" not in o, f"rank {r} crashed:\n{o['crash']}"
    return root, outcomes


def _values(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _assert_rows_close(a, b, tol=1e-6):
    a, b = _values(a), _values(b)
    assert [r.keys() for r in a] == [r.keys() for r in b]
    for ra, rb in zip(a, b):
        for k in ra:
            assert ra[k] == pytest.approx(rb[k], abs=tol, rel=0), (ra["epoch"], k)


def _weights(run_dir, name="last"):
    return torch.load(run_dir / "checkpoints" / f"{name}.pt", weights_only=True)["model"]


def _assert_weights_close(a, b, atol=1e-5):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


def _files(run_dir):
    return sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*"))


@pytest.mark.parametrize("name", ["main", "short", "val"])
def test_two_processes_equal_one_process(ddp, tmp_path, tiny_data, tiny_val_data, name):
    root, outcomes = ddp
    config, uses_val = _configs()[name]
    data = tiny_val_data if uses_val else tiny_data
    single = train_and_evaluate(config, tmp_path / "single", data=data, progress=False)
    for r, o in enumerate(outcomes):
        assert "rows" in o[name], (r, o[name])
        _assert_rows_close(o[name]["rows"], single)
        assert not o[name]["initialized_after"]  # the process group is destroyed at the end
    run = root / "runs" / name
    _assert_rows_close(read_metrics(run), single)
    _assert_weights_close(_weights(run), _weights(tmp_path / "single"))
    # The same files as a one-process run: no stray temporary files, nothing else.
    assert _files(run) == _files(tmp_path / "single")
    info = json.loads((run / "run.json").read_text())
    single_info = json.loads((tmp_path / "single" / "run.json").read_text())
    assert (info["world_size"], info["backend"], info["status"]) == (2, "gloo", "complete")
    assert (single_info["world_size"], single_info["backend"]) == (1, None)
    if name == "val":
        test, single_test = info["test"], single_info["test"]
        assert (test["epoch"], test["n"]) == (single_test["epoch"], single_test["n"])
        assert test["acc"] == pytest.approx(single_test["acc"], abs=1e-6)
        assert test["loss"] == pytest.approx(single_test["loss"], abs=1e-6)
        assert json.loads((run / "test.json").read_text()) == test


def test_only_rank_0_writes_and_prints(ddp):
    root, _ = ddp
    assert list((root / "cwd1").iterdir()) == [] and list((root / "cwd0").iterdir()) == []
    assert sorted(p.name for p in (root / "runs").iterdir()) == ["main", "resumed", "short", "val"]
    rank0 = (root / "outcomes" / "stdout0.txt").read_text()
    assert rank0.count("Train Epoch: 1 Loss:") == 4 and "processes: 2 (gloo)" in rank0
    assert (root / "outcomes" / "stdout1.txt").read_text() == ""
    log = (root / "runs" / "main" / "train.log").read_text()
    assert log.count("Train Epoch: ") == 3  # one rank's lines, not two


def test_resumed_distributed_run_equals_uninterrupted(ddp):
    root, outcomes = ddp
    for o in outcomes:
        assert [r["epoch"] for r in o["resume_first"]["rows"]] == [1, 2]
        assert _values(o["resume_rest"]["rows"]) == _values(o["main"]["rows"])
    assert _values(read_metrics(root / "runs" / "resumed")) == _values(read_metrics(root / "runs" / "main"))
    a, b = _weights(root / "runs" / "resumed"), _weights(root / "runs" / "main")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "Resuming from epoch 2" in (root / "runs" / "resumed" / "train.log").read_text()


def test_distributed_checkpoint_resumes_in_one_process(ddp, tmp_path, tiny_data):
    """A checkpoint of a 2-process run holds the plain module's keys: one process continues it."""
    import shutil

    root, _ = ddp
    shutil.copytree(root / "runs" / "main", tmp_path / "run")
    config = _configs()["main"][0].replace(epochs=4)
    rows = train_and_evaluate(config, tmp_path / "run", data=tiny_data, resume=True, progress=False)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["world_size"] == 1


def test_run_dir_error_stops_every_rank(ddp):
    root, outcomes = ddp
    for o in outcomes:
        assert o["exists"]["error"] == RunDirError.__name__
        assert "already exists and holds a run (complete, 3/3 epochs); pass --resume" in o["exists"]["message"]
        assert not o["exists"]["initialized_after"]
    assert _values(read_metrics(root / "runs" / "main")) == _values(outcomes[0]["main"]["rows"])  # untouched


def test_batch_smaller_than_world_size_is_refused(ddp):
    root, outcomes = ddp
    for o in outcomes:
        assert o["batch_too_small"]["error"] == ConfigError.__name__
        assert o["batch_too_small"]["message"].startswith(
            "batch_size=1 is smaller than the number of processes (2): every rank needs at least one example")
    assert not (root / "runs" / "small").exists()


def test_shard_bounds():
    assert [shard_bounds(5, 2, r) for r in range(2)] == [(0, 3), (3, 5)]
    assert [shard_bounds(1, 2, r) for r in range(2)] == [(0, 1), (1, 1)]
    assert [shard_bounds(10, 4, r) for r in range(4)] == [(0, 3), (3, 6), (6, 8), (8, 10)]


def test_from_env():
    assert from_env({}) is None and from_env({"WORLD_SIZE": "1"}) is None
    env = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    assert from_env(env) == (2, 1, 1, 2)
    with pytest.raises(DistributedError, match="WORLD_SIZE=2 asks for a distributed run, but MASTER_PORT is not set"):
        from_env({k: v for k, v in env.items() if k != "MASTER_PORT"})
    with pytest.raises(DistributedError, match="got RANK=2, WORLD_SIZE=2"):
        from_env({**env, "RANK": "2"})
