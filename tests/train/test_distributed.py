"""Data-parallel training: 2 gloo processes on 127.0.0.1 against the one-process run.

One group of 2 spawned processes runs every distributed scenario (process start-up is the
slow part); the tests compare what it left with one-process runs of the same configs.
"""

from __future__ import annotations

import contextlib
import io
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
from train_helpers import tiny_config

from rnnlab.cli import main as cli_main
from rnnlab.train import ConfigError, RunDirError, read_metrics, train_and_evaluate
from rnnlab.train.distributed import DistributedError, from_env, shard_bounds

pytestmark = pytest.mark.skipif(
    not torch_dist.is_available() or not torch_dist.is_gloo_available(),
    reason="torch.distributed with the gloo backend is not available in this torch build",
)

TIMING = ("epoch_seconds", "examples_per_second", "eval_seconds")
WORLD = 2
DEADLINE_S = 300  # a hang guard only: a loaded 2-core CI machine can take minutes


def _configs():
    """name -> (config, uses validation data). dropout 0 everywhere: the ranks' masks would differ."""
    return {
        # 256 = 8 * 31 + 8: unequal slices (16/15) and a short last batch (4/4); grad clip, schedule.
        "main": (
            tiny_config(
                epochs=3, batch_size=31, bucket=True, lr=0.01, grad_clip=1.0, lr_schedule="cosine", warmup_steps=2
            ),
            False,
        ),
        # 256 = 51 * 5 + 1: the last batch has one example, so rank 1's slice is empty. SGD: Adam's
        # 1/sqrt(v) magnifies float-order differences of near-zero gradients over 52 steps (2e-5).
        "short": (tiny_config(epochs=1, batch_size=5, optimizer="sgd", lr=0.05, eval_batch_size=7), False),
        # Validation per epoch, test once on the best checkpoint (runner._final_test).
        "val": (tiny_config(epochs=2, batch_size=32, lr=0.01, val_fraction=0.2, test_every_epoch=False), True),
    }


def _free_ports(n: int) -> list[int]:
    """n distinct free ports (a process group is set up once per run, each on its own port)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _worker(rank: int, ports: list[int], root: str, data, val_data) -> None:
    """One rank: every scenario in turn; outcomes into root/outcomes/rank<r>.json, stdout into a file."""
    root_p = Path(root)
    cwd = root_p / f"cwd{rank}"
    cwd.mkdir()
    os.chdir(cwd)  # anything written to a relative path would land here
    out = open(root_p / "outcomes" / f"stdout{rank}.txt", "w", buffering=1)  # noqa: SIM115 - kept open
    os.dup2(out.fileno(), 1)
    sys.stdout = out
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        WORLD_SIZE=str(WORLD),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(WORLD),
    )
    torch.set_num_threads(1)
    outcomes: dict[str, object] = {}
    runs = root_p / "runs"

    def attempt(name, config, run_dir, **kwargs):
        os.environ["MASTER_PORT"] = str(ports[len(outcomes)])
        try:
            rows = train_and_evaluate(config, run_dir, progress=False, **kwargs)
            outcomes[name] = {"rows": rows, "initialized_after": torch_dist.is_initialized()}
        except Exception as err:  # noqa: BLE001 - recorded for the test
            outcomes[name] = {
                "error": type(err).__name__,
                "message": str(err),
                "initialized_after": torch_dist.is_initialized(),
            }

    try:
        for name, (config, uses_val) in _configs().items():
            attempt(name, config, runs / name, data=val_data if uses_val else data)
        main = _configs()["main"][0]
        plain = main.replace(lr_schedule="none", warmup_steps=0)  # a schedule over 2 epochs differs from one over 3
        attempt("plain", plain, runs / "plain", data=data)
        attempt("resume_first", plain.replace(epochs=2), runs / "resumed", data=data)
        attempt("resume_rest", plain, runs / "resumed", data=data, resume=True)
        attempt("exists", main, runs / "main", data=data)
        attempt("batch_too_small", main.replace(batch_size=1), runs / "small", data=data)
        # The CLI: the same refusal, reported by every rank with its rank, exit status 2.
        os.environ["MASTER_PORT"] = str(ports[len(outcomes)])
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            status = cli_main(["train", "--set", "device=cpu", "--out", str(runs / "main"), "--no-progress"])
        outcomes["cli_exists"] = {"status": status, "stderr": err.getvalue()}
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
    ctx = mp.start_processes(
        _worker,
        args=(_free_ports(10), str(root), tiny_data, tiny_val_data),
        nprocs=WORLD,
        join=False,
        start_method="spawn",
    )
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
    assert sorted(p.name for p in (root / "runs").iterdir()) == ["main", "plain", "resumed", "short", "val"]
    rank0 = (root / "outcomes" / "stdout0.txt").read_text()
    assert rank0.count("Train Epoch: 1 Loss:") == 5 and "processes: 2 (gloo)" in rank0
    assert (root / "outcomes" / "stdout1.txt").read_text() == ""
    log = (root / "runs" / "main" / "train.log").read_text()
    assert log.count("Train Epoch: ") == 3  # one rank's lines, not two


def test_resumed_distributed_run_equals_uninterrupted(ddp):
    root, outcomes = ddp
    for o in outcomes:
        assert [r["epoch"] for r in o["resume_first"]["rows"]] == [1, 2]
        assert _values(o["resume_rest"]["rows"]) == _values(o["plain"]["rows"])
    assert _values(read_metrics(root / "runs" / "resumed")) == _values(read_metrics(root / "runs" / "plain"))
    a, b = _weights(root / "runs" / "resumed"), _weights(root / "runs" / "plain")
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
    for rank, o in enumerate(outcomes):
        assert o["cli_exists"]["status"] == 2
        assert o["cli_exists"]["stderr"].startswith(
            f"rnnlab: error: [rank {rank}] {root / 'runs' / 'main'} already exists and holds a run (complete, 3/3"
        )


def test_batch_smaller_than_world_size_is_refused(ddp):
    root, outcomes = ddp
    for o in outcomes:
        assert o["batch_too_small"]["error"] == ConfigError.__name__
        assert o["batch_too_small"]["message"].startswith(
            "batch_size=1 is smaller than the number of processes (2): every rank needs at least one example"
        )
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


def _torchrun(args, env, port):
    import subprocess

    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        "-m",
        "rnnlab",
        *args,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=DEADLINE_S)


def test_torchrun_cli_trains(tmp_path):
    """`torchrun -m rnnlab train` end to end: rank 0 loads and encodes first (the others read its cache), one report."""
    import random

    rng = random.Random(0)
    lines = ["text,label"]
    for i in range(160):
        words = [rng.choice(["the", "film", "plot", "was", "a"]) for _ in range(rng.randint(3, 10))]
        words[rng.randrange(len(words))] = rng.choice(["good", "great"] if i % 2 else ["bad", "dull"])
        lines.append(f"{' '.join(words)},{('neg', 'pos')[i % 2]}")
    (tmp_path / "reviews.csv").write_text("\n".join(lines) + "\n")
    # PYTHONFAULTHANDLER: a worker that dies on a signal prints where (its Python stack, if any).
    env = {**os.environ, "RNNLAB_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    args = [
        "train",
        "--set",
        "embedding_dim=8",
        "--set",
        "hidden_size=8",
        "--set",
        "epochs=1",
        "--set",
        "batch_size=16",
        "--set",
        "device=cpu",
        "--data",
        str(tmp_path / "reviews.csv"),
        "--out",
        str(tmp_path / "run"),
        "--no-progress",
    ]
    done = _torchrun(args, env, _free_ports(1)[0])
    assert done.returncode == 0, f"stdout:\n{done.stdout[-2000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert done.stdout.count("Done: 1 epochs, final test accuracy") == 1, done.stdout
    assert done.stdout.count("Train Epoch: 1 Loss: ") == 1
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert (info["status"], info["world_size"], info["backend"]) == ("complete", 2, "gloo")


def _entry(argv, world_size):
    """``rnnlab.cli.entry`` in a fresh interpreter with stdout/stderr piped (block-buffered)."""
    import subprocess

    code = f"import sys; sys.argv = ['rnnlab', *{argv!r}]; from rnnlab.cli import entry; raise SystemExit(entry())"
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    if world_size is not None:
        env["WORLD_SIZE"] = str(world_size)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("world_size", [None, 2])
def test_entry_exit_status_and_output(world_size):
    """A torchrun worker ends with os._exit: its buffered output still arrives, its status is main()'s."""
    from rnnlab import __version__

    done = _entry(["--version"], world_size)
    assert (done.returncode, done.stdout.strip()) == (0, f"rnnlab {__version__}")
    done = _entry(["train"], world_size)  # an argparse error (no --out): usage on stderr, status 2
    assert done.returncode == 2 and "the following arguments are required: --out" in done.stderr, done.stderr
    done = _entry(["report", "/nonexistent/rnnlab-run", "--out", "/nonexistent/out"], world_size)  # a user error
    assert done.returncode == 2 and done.stderr.startswith("rnnlab: error:"), done.stderr
