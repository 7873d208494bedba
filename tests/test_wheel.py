"""The installed package, not the checkout: a wheel built from a clean copy of the tracked files,
installed into a fresh virtual environment and run from another folder, lists its presets, trains
``--preset seed/lstm``, runs ``compare --preset seed --only lstm`` and predicts.

The fresh environment gets the wheel (``pip --python VENV install --no-deps --no-index``) and,
through a ``.pth`` file, the directories of this interpreter's site-packages for the dependencies
(torch and the rest: installing them again would take a minute). A ``.pth`` line only adds its
directory to ``sys.path``, it does not run the ``.pth`` files inside, so an editable rnnlab of the
test environment stays invisible; the test checks that ``rnnlab`` is imported from the wheel and
that the wheel's declared dependencies are satisfied by what the environment imports.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.wheel

REPO_ROOT = Path(__file__).resolve().parents[1]
POSITIVE = ["good", "great", "superb", "lovely", "brilliant"]
NEGATIVE = ["bad", "awful", "dull", "boring", "terrible"]
FILLER = ["the", "a", "film", "movie", "plot", "actor", "scene", "it", "was", "and"]
#: Checks run inside the new environment: where rnnlab comes from, its metadata and dependencies.
PROBE = r"""
import importlib.metadata as md, json, sys
from packaging.requirements import Requirement
import rnnlab
meta = md.metadata("rnnlab")
unmet = []
for text in md.requires("rnnlab") or []:
    req = Requirement(text)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    try:
        version = md.version(req.name)
    except md.PackageNotFoundError:
        version = None
    if version is None or not req.specifier.contains(version, prereleases=True):
        unmet.append(f"{text} (found {version})")
print(json.dumps({
    "file": rnnlab.__file__,
    "sys_path": sys.path,
    "license": meta["License-Expression"],
    "license_files": meta.get_all("License-File"),
    "requires_python": meta["Requires-Python"],
    "classifiers": meta.get_all("Classifier"),
    "unmet": unmet,
}))
"""


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def _clean_copy(dest: Path) -> None:
    """The tracked files of the checkout (what a fresh clone holds), without build outputs or .venv."""
    try:
        listing = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.fail(f"the wheel test builds from the tracked files of a git checkout: git ls-files failed ({err})")
    for name in listing.decode().split("\0"):
        src = REPO_ROOT / name
        if name and src.is_file():  # a file deleted but not yet committed is skipped
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed; returns its bin/ folder."""
    root = tmp_path_factory.mktemp("wheel")
    _clean_copy(root / "src")
    assert not (root / "src" / "configs").exists() and (root / "src" / "LICENSE").is_file()
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            "dist",
            "./src",
        ],
        cwd=root,
    )
    (wheel,) = (root / "dist").glob("rnnlab-*.whl")
    _run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], cwd=root)
    python = root / "venv" / "bin" / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root)
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    Path(purelib.stdout.strip(), "_rnnlab_test_dependencies.pth").write_text("".join(p + "\n" for p in deps))
    _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        cwd=root,
    )
    return root / "venv" / "bin"


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Another folder with a tiny CSV of reviews, and an environment that points nowhere near the checkout."""
    work = tmp_path_factory.mktemp("elsewhere")
    rng = random.Random(0)
    with open(work / "reviews.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(160):
            label = ("neg", "pos")[i % 2]
            words = [rng.choice(FILLER) for _ in range(rng.randint(3, 12))]
            words[rng.randrange(len(words))] = rng.choice(POSITIVE if label == "pos" else NEGATIVE)
            w.writerow([" ".join(words), label])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RNNLAB_DATA", "VIRTUAL_ENV")}
    env["RNNLAB_CACHE"] = str(work / "cache")
    return work, env


def test_the_wheel_holds_the_presets_metadata_and_is_what_runs(venv, elsewhere):
    work, env = elsewhere
    probe = json.loads(_run([str(venv / "python"), "-c", PROBE], cwd=work, env=env).stdout)
    site_dir = venv.parent / "lib"
    assert Path(probe["file"]).is_relative_to(site_dir), probe["file"]  # the wheel's rnnlab, not the checkout's
    assert not any(Path(p).resolve() == (REPO_ROOT / "src").resolve() for p in probe["sys_path"] if p)
    assert (probe["license"], probe["license_files"], probe["requires_python"]) == ("MIT", ["LICENSE"], ">=3.10")
    assert "Programming Language :: Python :: 3 :: Only" in probe["classifiers"]
    assert probe["unmet"] == []
    out = _run([str(venv / "rnnlab"), "presets"], cwd=work, env=env).stdout
    names = [line.split()[0] for line in out.splitlines()]
    assert names[:3] == ["best", "default", "insights"] and {"insights/lstm_mean", "seed", "variants"} <= set(names)
    assert "seed/lstm " in out and "torch.nn.LSTM (original result: 0.8546" in out


def test_train_a_packaged_preset_from_another_folder(venv, elsewhere):
    work, env = elsewhere
    cmd = [str(venv / "rnnlab"), "train", "--preset", "seed/lstm", "--data", "reviews.csv", "--out", "run"]
    _run([*cmd, "--set", "epochs=1", "--set", "num_threads=1", "--no-progress"], cwd=work, env=env)
    rows = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1] and 0.0 <= rows[0]["test_acc"] <= 1.0
    info = json.loads((work / "run" / "run.json").read_text())
    assert (info["status"], info["epochs_completed"], info["epochs"]) == ("complete", 1, 1)
    config = (work / "run" / "config.toml").read_text()
    # the preset's own keys (seed/lstm: mean pooling, random-order batches), read from the wheel
    assert 'name = "lstm"' in config and 'pooling = "mean"' in config and "bucket = false" in config
    preds = _run([str(venv / "rnnlab"), "predict", "run", "--json", "a superb film"], cwd=work, env=env).stdout
    assert json.loads(preds)[0]["label"] in ("neg", "pos")


def test_compare_a_packaged_suite_from_another_folder(venv, elsewhere):
    work, env = elsewhere
    cmd = [str(venv / "rnnlab"), "compare", "--preset", "seed", "--only", "lstm", "--data", "reviews.csv"]
    _run([*cmd, "--out", "cmp", "--set", "epochs=1", "--set", "num_threads=1", "--no-progress"], cwd=work, env=env)
    table = (work / "cmp" / "results.md").read_text()
    assert "| `lstm` | 1 | " in table and "| `nbsvm_bigram` | 1 | " in table
    with open(work / "cmp" / "results.csv") as f:
        assert sorted(row["experiment"] for row in csv.DictReader(f)) == ["lstm", "nbsvm_bigram"]
    assert json.loads((work / "cmp" / "lstm" / "seed0" / "run.json").read_text())["status"] == "complete"
