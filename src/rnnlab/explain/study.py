r"""``rnnlab study gradients``: how far back a trained run can see, and how its gates behave.

Connectivity: for a review of T tokens with embeddings ``x_0 .. x_{T-1}`` and the logit ``z``
of the class the model predicts, the gradient norm at distance ``d = T - 1 - t`` from the end is
``||dz / dx_t||_2``; the study averages it over the reviews long enough to have that distance
(``count[d]`` of them). A vanilla RNN that pools its last state sees a token d steps back only
through d Jacobians ``dh_{t+1}/dh_t``, so its curve falls with d (vanishing gradients); mean
pooling adds a direct path from every step's output to the logit.

Gate saturation (Karpathy, Johnson & Fei-Fei 2015, "Visualizing and understanding recurrent
networks"): for each unit of each sigmoid gate (LSTM i, f, o; GRU r, z), the fraction of real
time steps at which it is below 0.1 (left-saturated) and above 0.9 (right-saturated), from the
cells' own gates in trace mode (``rnnlab.nn.trace``). A forget gate right-saturated most of the
time keeps its cell's content over many steps. The tanh ``g`` / ``n`` are not gates in that
sense and are left out.

Memory paths (:func:`memory_paths`): how much of a unit's state survives d steps on the cell's
direct path alone, the product of the LSTM's forget gates (GRU: update gates) over those steps,
for the best unit; the median over reviews. Connectivity far above it means the gradient
travels another way (through the recurrent weights and the gates).

Both are computed on the same ``examples`` test reviews for every run (a seeded sample of the
run's test split), encoded with each run's own tokenizer, vocabulary and truncation.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import torch

from rnnlab.explain.runs import ExplainedRun, ExplainError, epochs_of, load_test_texts, open_run
from rnnlab.models import RNNClassifier
from rnnlab.nn import trace
from rnnlab.nn.tracing import SIGMOID_GATES
from rnnlab.train.dataset import load_key

__all__ = ["LOW", "HIGH", "connectivity", "gate_saturation", "memory_paths", "run_gradient_study", "sample_reviews"]

#: Saturation thresholds of a sigmoid gate.
LOW, HIGH = 0.1, 0.9
_BATCH = 50
_SAMPLE_SEED = 0


def sample_reviews(texts: list[str], n: int, seed: int = _SAMPLE_SEED) -> list[str]:
    """``n`` texts drawn without replacement (all of them when there are fewer), in their order."""
    if n >= len(texts):
        return list(texts)
    return [texts[i] for i in sorted(random.Random(seed).sample(range(len(texts)), n))]


def _batches(ids: torch.Tensor, lengths: torch.Tensor):
    """Batches of about ``_BATCH`` reviews of similar length, cut to their longest."""
    order = torch.argsort(lengths, stable=True)
    for start in range(0, len(order), _BATCH):
        idx = order[start : start + _BATCH]
        b_len = lengths[idx]
        yield ids[idx, : int(b_len.max())], b_len


def connectivity(model: RNNClassifier, ids: torch.Tensor, lengths: torch.Tensor) -> dict[str, list]:
    """``||d z_pred / d x_t||`` by distance from the end: ``distance``, ``mean_norm``,
    ``median_norm`` (over the reviews that long: the mean is sensitive to a few reviews with
    large gradients) and ``count``.

    ids (N, L) right-padded, lengths (N,); ``z_pred`` is each review's logit of its predicted class.
    """
    model.eval()
    width = int(lengths.max())
    sums = torch.zeros(width, dtype=torch.float64)
    counts = torch.zeros(width, dtype=torch.float64)
    by_review: list[torch.Tensor] = []  # (width,) per review, by distance, NaN beyond its length
    for b_ids, b_len in _batches(ids, lengths):
        captured: list[torch.Tensor] = []

        def hook(_m, _i, out):
            leaf = out.detach().requires_grad_(True)  # (L, B, E)
            captured.append(leaf)
            return leaf

        handle = model.embedding.register_forward_hook(hook)
        try:
            with torch.enable_grad():
                logits = model(b_ids, b_len)  # (B, C)
                picked = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
                (grad,) = torch.autograd.grad(picked, captured[0])
        finally:
            handle.remove()
        norms = grad.norm(dim=-1).double()  # (L, B)
        steps = torch.arange(norms.shape[0])[:, None]
        distance = b_len[None, :] - 1 - steps  # (L, B); < 0 at padding
        real = distance >= 0
        sums.index_add_(0, distance[real], norms[real])
        counts.index_add_(0, distance[real], torch.ones_like(norms[real]))
        for b, n in enumerate(b_len.tolist()):
            row = torch.full((width,), float("nan"), dtype=torch.float64)
            row[:n] = norms[:n, b].flip(0)
            by_review.append(row)
    mean = torch.where(counts > 0, sums / counts.clamp(min=1), torch.zeros_like(sums))
    median = torch.stack(by_review).nanmedian(0).values.nan_to_num(0.0)
    return {
        "distance": list(range(width)),
        "mean_norm": mean.tolist(),
        "median_norm": median.tolist(),
        "count": [int(c) for c in counts],
    }


def gate_saturation(model: RNNClassifier, ids: torch.Tensor, lengths: torch.Tensor) -> dict[str, dict[str, Any]]:
    """Per (layer, direction) name and sigmoid gate: ``low`` (H,) and ``high`` (H,), the fraction
    of real steps at which each unit is < LOW and > HIGH, and ``mean`` (H,), its mean value.
    Empty for the RNN (no gates)."""
    model.eval()
    totals: dict[str, dict[str, torch.Tensor]] = {}
    steps = 0
    for b_ids, b_len in _batches(ids, lengths):
        with torch.no_grad(), trace(model.encoder) as t:
            model(b_ids, b_len)
        valid = (torch.arange(b_ids.shape[1])[:, None] < b_len[None, :])[..., None]  # (L, B, 1)
        steps += int(b_len.sum())
        for lt in t.layers:
            layer = totals.setdefault(lt.name, {})
            for g, v in lt.gates.items():
                if g not in SIGMOID_GATES:
                    continue
                for key, hit in (("low", v < LOW), ("high", v > HIGH), ("mean", v)):
                    add = (hit.double() * valid).sum((0, 1))  # (H,)
                    name = f"{g}.{key}"
                    layer[name] = layer[name] + add if name in layer else add
    result: dict[str, dict[str, Any]] = {}
    for layer_name, sums in totals.items():
        gates = sorted({k.split(".")[0] for k in sums}, key=["i", "f", "o", "r", "z"].index)
        result[layer_name] = {
            g: {key: (sums[f"{g}.{key}"] / steps).tolist() for key in ("low", "high", "mean")} for g in gates
        }
    return result


#: The gate whose product over steps is a cell's direct memory path: c_t = f_t * c_{t-1} + ...
#: (LSTM), h_t = z_t * h_{t-1} + ... (GRU).
MEMORY_GATES = {"lstm": "f", "gru": "z"}


def memory_paths(model: RNNClassifier, ids: torch.Tensor, lengths: torch.Tensor) -> dict[str, Any]:
    """The direct memory path of the first layer's forward direction, by distance from the end.

    For a review of T tokens and the token at distance d (position T - 1 - d), the state the cell
    keeps from it reaches the last step multiplied by the gates of the d steps after it; the
    largest such gain over the units is ``max_u prod_{s = T-d}^{T-1} gate_s[u]`` (``f`` for the
    LSTM, ``z`` for the GRU). Returns ``gate``, ``distance`` (0 .. L-1; the gain at d = 0 is 1)
    and ``median_max_gain``: its median over the reviews long enough. None for the RNN.
    """
    gate = MEMORY_GATES.get(getattr(model, "cell", ""))
    if gate is None:
        return None  # type: ignore[return-value]
    model.eval()
    width = int(lengths.max())
    rows: list[torch.Tensor] = []
    for b_ids, b_len in _batches(ids, lengths):
        with torch.no_grad(), trace(model.encoder) as t:
            model(b_ids, b_len)
        values = t.get(0, 0).gates[gate].double()  # (L, B, H)
        for b, n in enumerate(b_len.tolist()):
            logs = values[:n, b].log().flip(0).cumsum(0)  # row j: sum of the log gates of the last j + 1 steps
            row = torch.full((width,), float("nan"), dtype=torch.float64)
            row[0] = 1.0
            row[1:n] = logs[: n - 1].max(dim=1).values.exp()
            rows.append(row)
    median = torch.stack(rows).nanmedian(0).values.nan_to_num(0.0)
    return {"gate": gate, "distance": list(range(width)), "median_max_gain": median.tolist()}


def _measure(model: RNNClassifier, ids: torch.Tensor, lengths: torch.Tensor) -> dict[str, Any]:
    return {
        "connectivity": connectivity(model, ids, lengths),
        "saturation": gate_saturation(model, ids, lengths),
        "memory": memory_paths(model, ids, lengths),
    }


def _reviews(run: ExplainedRun, examples: int, data: str | None, cache: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The sampled test reviews of the run's data, encoded with its tokenizer and vocabulary."""
    from rnnlab.data import encode_texts

    config = run.config
    key = (data, load_key(config))
    if key not in cache:
        texts, _ = load_test_texts(run, data)
        if not texts:
            raise ExplainError(f"{run.run.run_dir}: its data has no test reviews to study")
        cache[key] = sample_reviews(texts, examples)
    r = run.run
    return encode_texts(cache[key], r.tokenizer, r.vocab, max_len=config.max_len, truncate=config.truncate)


def run_gradient_study(
    run_dirs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    examples: int = 500,
    data: str | None = None,
    over_training: bool = False,
    checkpoint: str = "auto",
) -> dict[str, Any]:
    """Measure every run (and, with ``over_training``, every per-epoch checkpoint), then write
    ``study.json`` and the figures into ``out_dir``. Every run is opened and checked before any
    measurement; nothing is written when one cannot be studied. Returns the study.json dict."""
    from rnnlab._io import write_json
    from rnnlab.explain.figures import (
        connectivity_figure,
        connectivity_over_training_figure,
        memory_figure,
        saturation_figure,
        saturation_over_training_figure,
        save_png,
    )

    if not run_dirs:
        raise ExplainError("no run directory given")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ExplainError(f"--out {out} is a file; expected a folder for the figures and study.json")
    runs = [open_run(d, checkpoint=checkpoint) for d in run_dirs]
    epochs = {}
    if over_training:
        for run in runs:
            epochs[run.run.run_dir] = epochs_of(run)
            if not epochs[run.run.run_dir]:
                raise ExplainError(
                    f"{run.run.run_dir} has no per-epoch checkpoints (checkpoints/epoch_<k>.pt): train it with "
                    "keep_epoch_checkpoints = true to study it over training"
                )
    cache: dict = {}
    results = []
    for run in runs:
        ids, lengths = _reviews(run, examples, data, cache)
        cfg = run.config
        entry = {
            "run_dir": str(run.run.run_dir),
            "name": cfg.name,
            "cell": cfg.cell,
            "encoder": cfg.encoder,
            "pooling": cfg.pooling,
            "examples": len(lengths),
            "final": {
                "epoch": run.run.epoch,
                "checkpoint": run.run.checkpoint.name,
                **_measure(run.model, ids, lengths),
            },
        }
        if over_training:
            entry["epochs"] = []
            for epoch in epochs[run.run.run_dir]:
                at = open_run(run.run.run_dir, checkpoint=epoch)
                entry["epochs"].append(
                    {"epoch": epoch, "checkpoint": at.run.checkpoint.name, **_measure(at.model, ids, lengths)}
                )
        results.append(entry)
    figures = [
        ("connectivity.png", connectivity_figure(results)),
        ("saturation.png", saturation_figure(results)),
        ("memory.png", memory_figure(results)),
    ]
    if over_training:
        figures += [
            ("connectivity_over_training.png", connectivity_over_training_figure(results)),
            ("saturation_over_training.png", saturation_over_training_figure(results)),
        ]
    out.mkdir(parents=True, exist_ok=True)
    files = [str(save_png(fig, out / name)) for name, fig in figures]
    study = {
        "examples": examples,
        "low": LOW,
        "high": HIGH,
        "runs": results,
        "files": files + [str(out / "study.json")],
    }
    write_json(out / "study.json", study)
    return study
